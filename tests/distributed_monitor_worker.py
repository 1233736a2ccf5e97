"""Run by tests/test_training_monitors.py under torchrun: one evaluation pass of a freshly initialised model with
every monitor, each process on its own shard; rank 0 writes the record to argv[1]/record.json."""

import json
import sys
from pathlib import Path

from hf_recperc.training import PretrainingRun, parse_args

output = Path(sys.argv[1])
argv = ["--output_dir", str(output / "run"), "--report_to", "none", "--max_train_samples", "300"]
argv += ["--max_eval_samples", "90", "--per_device_eval_batch_size", "32", "--probe_layers", "all"]
run = PretrainingRun(*parse_args(argv))
run.setup()
record = run.evaluate()
if run.accelerator.is_main_process:
    output.mkdir(parents=True, exist_ok=True)
    (output / "record.json").write_text(
        json.dumps({"num_processes": run.accelerator.num_processes, **record})
    )
