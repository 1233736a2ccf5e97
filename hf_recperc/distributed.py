"""``torch.distributed`` helpers shared by every statistic that merges across processes (probes, monitors, the
report): each is a no-op in a single process, so the same code runs alone or under ``accelerate launch``."""

from __future__ import annotations

import torch

__all__ = ["is_distributed", "distributed_sum", "gather_rows", "run_on_main_process"]


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` group of more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


def distributed_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over processes (in place, and returned); unchanged in one process."""
    if is_distributed():
        torch.distributed.all_reduce(values)
    return values


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's `(n_p, ...)` rows, in rank order, on every process: `(sum_p n_p, ...)`.

    Shards may differ in length (the last one is shorter): each is padded to the longest, gathered, and trimmed.
    """
    if not is_distributed():
        return rows
    world = torch.distributed.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    torch.distributed.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def run_on_main_process(accelerator, work) -> None:
    """Run ``work()`` on the main process only; a ``ValueError`` it raises is raised on every process (with the
    same message), so that no process waits forever for a main process that stopped."""
    from accelerate.utils import broadcast_object_list  # noqa: PLC0415

    message = [None]
    if accelerator.is_main_process:
        try:
            work()
        except ValueError as err:
            message[0] = str(err)
    if accelerator.num_processes > 1:
        broadcast_object_list(message)
    if message[0] is not None:
        raise ValueError(message[0])
