"""Run by tests/test_probing.py under torchrun: each rank fits on its shard, then all_reduce."""

import json
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from hf_recperc import SubspaceProbe

sys.path.insert(0, str(Path(__file__).parent))
from test_probing import make_problem  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
X, y = make_problem(num_rows=601)
shard = np.arange(len(X))[rank::world]
probe = SubspaceProbe()
for rows in np.array_split(shard, 3):
    probe.partial_fit(X[rows], y[rows])
probe.all_reduce()
result = {"world_size": world, "rows_seen_locally": len(shard), "score": probe.score(X, y)}
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(result))
dist.destroy_process_group()
