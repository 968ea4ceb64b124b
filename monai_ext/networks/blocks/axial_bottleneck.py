"""Residual bottleneck whose middle is gated axial attention along every spatial axis in turn."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_ext.networks.blocks.gated_axial_attention import GatedAxialAttention

__all__ = ["AxialBottleneck"]


class AxialBottleneck(nn.Module):
    """1x1 conv down, axial attention along each spatial axis, 1x1 conv up, residual (Medical Transformer block).

    ``relu(norm_up(conv_up(relu(attention(relu(norm_down(conv_down(x))))))) + shortcut(x))``, where ``attention``
    attends along axis 0, then 1 (then 2); only the last attention layer applies ``stride``. ``shortcut`` is a
    strided 1x1 convolution with BatchNorm when the stride or the channel count changes, else the identity.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: channels inside the block (of the attention layers).
        out_channels: output channels.
        spatial_size: positional span of the attention per axis (int or one per spatial axis): the longest input
            this block accepts.
        num_groups: attention heads.
        stride: downsampling factor of the block (1 or more).
        gated: gates in the attention layers.
        positional: relative position terms in the attention layers.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int,
        out_channels: int,
        spatial_size: Sequence[int] | int,
        num_groups: int = 8,
        stride: int = 1,
        gated: bool = True,
        positional: bool = True,
    ) -> None:
        super().__init__()
        sizes = ensure_tuple_rep(spatial_size, spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.BATCH, spatial_dims]
        self.conv_down = conv(in_channels, channels, kernel_size=1, bias=False)
        self.norm_down = norm(channels)
        self.attention = nn.Sequential(
            *[
                GatedAxialAttention(
                    spatial_dims,
                    channels,
                    channels,
                    sizes[axis],
                    axis,
                    num_groups=num_groups,
                    stride=stride if axis == spatial_dims - 1 else 1,
                    gated=gated,
                    positional=positional,
                )
                for axis in range(spatial_dims)
            ]
        )
        self.conv_up = conv(channels, out_channels, kernel_size=1, bias=False)
        self.norm_up = norm(out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm_down(self.conv_down(x)))
        out = torch.relu(self.attention(out))
        out = self.norm_up(self.conv_up(out))
        identity = x
        if self.shortcut is not None:
            identity = self.shortcut(x)
        return torch.relu(out + identity)
