"""The contracts of torchmetrics' ``MetricTester``, for metrics whose ``update`` takes a ``split``.

torchmetrics tests its own metrics with ``MetricTester`` (``tests/unittests/_helpers/testers.py`` of its
repository). That file ships in neither the wheel nor the sdist (``pip download torchmetrics==1.9.0 --no-binary
:all:`` holds ``src/`` only), and it assumes ``update(preds, target)``; this module checks the same contracts
for ``update(features, labels, split=...)``:

* class test (:func:`class_test`): the flags cannot be reassigned; the metric clones, pickles, deep-copies
  and hashes; its ``state_dict()`` is empty; ``forward`` returns the metric of the batch alone (the reference
  on that batch, and ``update`` + ``compute`` of a fresh copy), with ``dist_sync_on_step`` the batch of every
  process; ``compute()`` returns tensors equal to the reference on every batch of every process, taken in
  process order (torchmetrics gathers the rows of rank 0 first; order matters to a seeded split);
* DDP (:func:`run_ddp`): the class test in ``world_size`` gloo processes, each taking batches
  ``rank::world_size`` (torchmetrics' layout);
* functional test (:func:`functional_test`): the functional form equals the reference batch by batch;
* dtype support (:func:`dtype_test`): half-precision rows give tensors, through the class and the function.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
from collections.abc import Callable

import numpy as np
import pytest
import torch

# One batch: (features (n, D), labels (n,), split); the reference takes the batches and returns a dict of numbers.
Batch = tuple[torch.Tensor, torch.Tensor, str]


def assert_allclose(result: dict, expected: dict, atol: float) -> None:
    """Same keys; every value a tensor within ``atol`` of the reference number (NaN equals NaN)."""
    assert result.keys() == expected.keys(), (sorted(result), sorted(expected))
    for key, value in result.items():
        assert isinstance(value, torch.Tensor), key
        assert np.allclose(value.cpu().numpy(), float(expected[key]), atol=atol, equal_nan=True), (
            key,
            value,
            expected[key],
        )


def _assert_tensors(result: dict) -> None:
    assert all(isinstance(value, torch.Tensor) for value in result.values()), result


def class_test(
    rank: int,
    world_size: int,
    batches: list[Batch],
    metric_class: type,
    reference: Callable[[list[Batch]], dict],
    metric_args: dict | None = None,
    dist_sync_on_step: bool = False,
    atol: float = 1e-8,
) -> None:
    """torchmetrics' ``_class_test``: see the module docstring. Batch ``i`` goes to process ``i % world_size``;
    with ``dist_sync_on_step`` the batches ``i .. i + world_size - 1`` must share a split."""
    assert len(batches) % world_size == 0, "the number of batches must be a multiple of world_size"
    metric = metric_class(dist_sync_on_step=dist_sync_on_step, **(metric_args or {}))
    for flag in ("is_differentiable", "higher_is_better"):
        with pytest.raises(RuntimeError):
            setattr(metric, flag, not getattr(metric, flag))
    clone = metric.clone()
    assert clone is not metric and type(clone) is type(metric)
    metric = pickle.loads(pickle.dumps(metric))
    fresh = copy.deepcopy(metric)
    for i in range(rank, len(batches), world_size):
        features, labels, split = batches[i]
        value = metric(features, labels, split=split)
        if split == "train":
            assert value == {}, "a training batch has no value of its own"
            continue
        _assert_tensors(value)
        if rank == 0 and world_size == 1 and i == 0:
            fresh.update(features, labels, split=split)
            assert_allclose(value, {k: v.item() for k, v in fresh.compute().items()}, atol)
        if dist_sync_on_step:
            together = batches[i - rank : i - rank + world_size]
            assert {s for _, _, s in together} == {split}
            assert_allclose(value, reference(together), atol)
        else:
            assert_allclose(value, reference([batches[i]]), atol)
    assert hash(metric)
    assert metric.state_dict() == {}
    result = metric.compute()
    _assert_tensors(result)
    # Gathered rows come in process order (rank 0's batches first): the 80/20 split follows that order.
    gathered = [batches[i] for r in range(world_size) for i in range(r, len(batches), world_size)]
    assert_allclose(result, reference(gathered), atol)


def functional_test(
    batches: list[Batch], function: Callable, reference: Callable, atol: float = 1e-8, **args
):
    """torchmetrics' ``_functional_test``: ``function(features, labels, **args)`` per evaluated batch."""
    for batch in batches:
        features, labels, split = batch
        if split == "test":
            assert_allclose(function(features, labels, **args), reference([batch]), atol)


def dtype_test(metric, function, batch: Batch, dtype: torch.dtype = torch.half, **args) -> None:
    """torchmetrics' ``_assert_dtype_support``: rows in ``dtype`` give tensors through forward and the function."""
    features, labels, _ = batch
    features = features.to(dtype)
    _assert_tensors(metric(features, labels))
    _assert_tensors(function(features, labels, **args))


def _ddp_worker(rank: int, world_size: int, port: int, runs: list[dict]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for run in runs:
            class_test(rank, world_size, **run)
    finally:
        torch.distributed.destroy_process_group()


def run_ddp(runs: list[dict], world_size: int = 2) -> None:
    """Each ``runs`` entry (the keyword arguments of :func:`class_test`) in ``world_size`` gloo processes, started
    once for all of them (the interpreter start-ups are most of the cost). Raises if any process fails."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(world_size, port, runs), nprocs=world_size, join=True)
