"""Small building blocks shared by the models and the experiments (one definition each).

This file is saved next to the weights of a pushed model (the remote code of ``trust_remote_code=True``, see
:mod:`hf_recperc.remote_code`), so it imports only torch.
"""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn_relu"]


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU.

    Maps `(B, in_channels, S, S)` to `(B, out_channels, ceil(S / stride), ceil(S / stride))`: kernel 3 with
    padding 1 keeps the side at stride 1 and gives ``ceil(S / 2)`` at stride 2, so any image size works.
    The ReLU is in place: BatchNorm's backward does not need its output, so nothing is overwritten that
    autograd still needs.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
