"""Run by tests/test_parallel_data.py under torchrun (2 gloo processes), and by hand to measure the bytes each
process reads (docs/data_path.md):

    python -m torch.distributed.run --nproc_per_node 2 tests/parallel_data_worker.py OUT_DIR PARQUET_DIR [BATCH]

Each process builds the training split's uint8 store together with the other (2 loader workers each), then reads
one epoch of the stream with 2 workers (row ids) and once more without workers (bytes read in this process), and
writes ``OUT_DIR/record-<rank>.json``.
"""

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator

from hf_recperc import RecPercAEConfig
from hf_recperc.images import decode_uint8, load_image_dataset, load_stream
from hf_recperc.images.shards import READ_STATS, RaiseWorkerErrors, lane_stream

output, parquet = Path(sys.argv[1]), sys.argv[2]
batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 4
accelerator = Accelerator(cpu=True)
rank = accelerator.process_index

data = load_image_dataset(parquet)
store, where = decode_uint8(data.train, data.image_column, 3, 24, workers=2, accelerator=accelerator)

stream_data = load_stream(SimpleNamespace(
    dataset_name=parquet, dataset_config_name=None, train_file=None, validation_file=None,
    image_column=None, label_column=None, max_train_samples=None,
))  # fmt: skip
config = RecPercAEConfig.preset("cifar-conv-small", image_size=24)
stream = lane_stream(stream_data, config, batch_size, 0, 64, 4, accelerator)
loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
rows = [row for batch in RaiseWorkerErrors(loader) for row in batch["rows"].tolist()]
READ_STATS.update(bytes=0, rows=0, units=0)
for _ in stream:  # the same epoch without workers: what this process reads
    pass
total = sum(unit.num_bytes for unit in stream.plan.units)
record = {
    "rank": rank, "num_processes": accelerator.num_processes, "store": where,
    "store_sha1": hashlib.sha1(np.ascontiguousarray(store).tobytes()).hexdigest(), "rows": rows,
    "batches": len(stream), "bytes_read": READ_STATS["bytes"], "bytes_total": total, "rows_read": READ_STATS["rows"],
}  # fmt: skip
output.mkdir(parents=True, exist_ok=True)
(output / f"record-{rank}.json").write_text(json.dumps(record))
accelerator.wait_for_everyone()
