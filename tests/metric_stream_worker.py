"""Run under torchrun (2 gloo processes) by tests/test_metric_streaming.py and tests/test_torchmetrics.py.

Usage: ``torchrun --nproc_per_node 2 metric_stream_worker.py OUT_DIR``. One launch (interpreter start-up is
most of the cost) runs three modes in turn: ``evaluate`` (evaluate's own num_process/process_id files, the
rank as process_id; torch.distributed is not used by it), ``torch`` (the evaluate module merging through
torch.distributed) and ``torchmetrics`` (the twin, synced by torchmetrics). Process p streams the p-th
contiguous half of the rows, so the one-process answer is that of the rows in their original order.
Writes ``OUT_DIR/{mode}-{p}.json``: the result without training rows (80/20 split) and with streamed ones.
"""

import json
import sys
from pathlib import Path

import evaluate
import numpy as np
import torch

import hf_recperc

sys.path.insert(0, str(Path(__file__).parent))
from test_metric_streaming import SUBSPACES, make_problem  # noqa: E402

out_dir = Path(sys.argv[1])
torch.distributed.init_process_group("gloo")
process_id, num_process = torch.distributed.get_rank(), torch.distributed.get_world_size()

(X, y), (X_train, y_train) = make_problem(), make_problem(num_rows=900, seed=1)
mine = np.array_split(np.arange(len(X)), num_process)[process_id]
mine_train = np.array_split(np.arange(len(X_train)), num_process)[process_id]


def stream(mode: str, with_train: bool):
    if mode == "torchmetrics":
        from hf_recperc.torchmetrics import SubspaceProbeAccuracy

        metric = SubspaceProbeAccuracy(X.shape[1], 3, subspaces=SUBSPACES)
        for rows in np.array_split(mine, 3):
            metric.update(torch.from_numpy(X[rows]), torch.from_numpy(y[rows]))
        if with_train:
            for rows in np.array_split(mine_train, 4):
                metric.update(torch.from_numpy(X_train[rows]), torch.from_numpy(y_train[rows]), split="train")
        return {key: value.item() for key, value in metric.compute().items()}  # 0-d tensors -> JSON
    kwargs = {"num_process": num_process, "process_id": process_id} if mode == "evaluate" else {}
    metric = evaluate.load(
        hf_recperc.SUBSPACE_PROBE_ACCURACY,
        experiment_id=f"{mode}-{with_train}",
        cache_dir=str(out_dir / "cache"),
        **kwargs,
    )
    for rows in np.array_split(mine, 3):
        metric.add_batch(predictions=X[rows], references=y[rows])
    if with_train:
        for rows in np.array_split(mine_train, 4):
            metric.add_batch(predictions=X_train[rows], references=y_train[rows], split="train")
    return metric.compute(subspaces=SUBSPACES)


for mode in ("evaluate", "torch", "torchmetrics"):
    result = {"split": stream(mode, False), "streamed_train": stream(mode, True)}
    if mode == "torch" and process_id == 0:
        # Arrays given to compute() alone stay local: rank 0 alone may score features it gathered itself.
        metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY, cache_dir=str(out_dir / "cache"))
        result["rank0_arrays"] = metric.compute(predictions=X, references=y, subspaces=SUBSPACES)
    (out_dir / f"{mode}-{process_id}.json").write_text(json.dumps(result))
torch.distributed.destroy_process_group()
