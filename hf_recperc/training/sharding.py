"""Reading a sharded model's whole parameters for the evaluation and the final figures (FSDP, ``--use_fsdp``).

The monitors call parts of the unwrapped model (its encoder, decoder and probe) outside the training forward. Under
FSDP each process holds a shard of every parameter, so those calls need the whole parameters gathered first:
:func:`full_parameters` does it for FSDP1 (``FullyShardedDataParallel.summon_full_params``) and FSDP2
(``unshard`` / ``reshard`` of every ``fully_shard`` module) and is a no-op otherwise. It is a collective: every
process must enter it. Saving goes through ``accelerator.get_state_dict`` (:meth:`PretrainingRun.publish`), which
gathers FSDP and DeepSpeed ZeRO-3 shards. accelerate forms FSDP groups on GPUs only, so this path is checked on a
multi-GPU machine (``accelerate launch --use_fsdp --num_processes 2 scripts/pretrain.py --max_steps 20``), not in the
CPU tests. DeepSpeed ZeRO-3's evaluation (``deepspeed.zero.GatheredParameters``) is not handled: saving works, the
monitors would not.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

__all__ = ["full_parameters"]


@contextmanager
def _unsharded(modules):
    for module in modules:
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()


def full_parameters(accelerator, prepared_model):
    """A context in which ``accelerator.unwrap_model(prepared_model)`` holds its whole parameters (read only)."""
    from accelerate.utils import DistributedType  # noqa: PLC0415

    if accelerator.distributed_type != DistributedType.FSDP:
        return nullcontext()
    if getattr(accelerator, "is_fsdp2", False):
        from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

        return _unsharded([m for m in prepared_model.modules() if isinstance(m, FSDPModule)])
    from torch.distributed.fsdp import FullyShardedDataParallel  # noqa: PLC0415

    return FullyShardedDataParallel.summon_full_params(prepared_model, writeback=False)
