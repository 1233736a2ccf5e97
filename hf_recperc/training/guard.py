"""Stopping at the first non-finite loss without a host-device synchronisation per step.

Reading a loss on the host (``loss.item()``) every step makes a GPU wait for the host and the host for the GPU.
:class:`NonFiniteGuard` instead keeps one sticky flag on the device, ``1.0`` from the first micro-batch whose loss
is NaN/inf (on any process: one all-reduce of a scalar, no host read), and hands it to the optimiser as
``found_inf``: the fused AdamW kernel then skips the whole update, weight decay and moments included, and undoes its
step count, on the device (the mechanism ``torch.amp.GradScaler`` uses). So the weights and the optimiser state stay
those of the last good step, for that step and every later one. The host reads the flag only where something
would leave the run (a log line, an evaluation, a checkpoint, the published model) and raises there, naming the
first bad step.

Where the optimiser cannot skip on the device (no fused kernel for the device, or fp16 whose gradient scaler owns
``found_inf``), the guard reads the flag every micro-batch before the update, as before.
"""

from __future__ import annotations

import torch

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "fused_available"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


def fused_available(device: torch.device) -> bool:
    """Whether torch has a fused AdamW kernel (the one that honours ``found_inf``) for ``device``."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices  # noqa: PLC0415

    return torch.device(device).type in _get_fused_kernels_supported_devices()


class NonFiniteGuard:
    """A sticky on-device non-finite flag wired into the optimiser.

    Args:
        accelerator: the run's ``Accelerator`` (device, process group).
        optimizer: the torch optimiser (fused AdamW when ``deferred``); gets ``found_inf``.
        deferred: skip updates on the device and check on the host only at :meth:`check`; else check every
            micro-batch in :meth:`observe`.
        first_step: optimiser steps already done (a resumed run), for the step named in the error.
        accumulation: micro-batches per optimiser step.
    """

    def __init__(self, accelerator, optimizer, deferred: bool, first_step: int = 0, accumulation: int = 1):
        device = accelerator.device
        self.accelerator, self.deferred = accelerator, deferred
        self.first_step, self.accumulation = first_step, accumulation
        self.flag = torch.zeros((), dtype=torch.float32, device=device)  # 1.0 once a loss was non-finite
        self.good = torch.zeros(
            (), dtype=torch.int64, device=device
        )  # micro-batches before the first bad one
        self.first_value = torch.zeros((), dtype=torch.float32, device=device)  # the first bad loss
        if deferred:
            optimizer.found_inf = self.flag  # read by the fused kernel at every step (in place updates below)

    def observe(self, loss: torch.Tensor, describe_checkpoint) -> None:
        """Fold one micro-batch's loss into the flag (before ``optimizer.step``)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self.accelerator.num_processes > 1:  # every process must skip the same steps
            bad = self.accelerator.reduce(bad, "sum")
        new = (bad > 0) & (self.flag == 0)
        self.first_value.copy_(torch.where(new, loss.detach().float(), self.first_value))
        self.flag.copy_(torch.maximum(self.flag, (bad > 0).float()))
        self.good.add_((self.flag == 0).long())
        if not self.deferred:
            self.check(describe_checkpoint)

    def check(self, describe_checkpoint) -> None:
        """Raise :class:`NonFiniteLossError` if any loss so far was non-finite (one host read)."""
        if self.flag.item() > 0:
            step = self.first_step + int(self.good.item()) // self.accumulation + 1
            raise NonFiniteLossError(
                f"step {step}: the training loss is {self.first_value.item()} (NaN or inf); stopped. "
                f"Last good checkpoint: {describe_checkpoint()}"
            )
