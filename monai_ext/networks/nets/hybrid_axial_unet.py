"""A 3D (or 2D) U-Net with convolutions at fine resolutions and gated axial attention at the coarse ones."""

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_ext.networks.blocks.axial_bottleneck import AxialBottleneck
from monai_ext.networks.nets.medt import _check_input, _check_spatial_dims

__all__ = ["HybridAxialUNet"]


class _DecoderLevel(nn.Module):
    """Upsample the coarser features, concatenate the skip of this level, fuse with a residual convolution."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, upsample: bool, norm: str, act: str
    ) -> None:
        super().__init__()
        self.up = Convolution(
            spatial_dims, in_channels, out_channels, strides=2 if upsample else 1, is_transposed=upsample, norm=norm,
            act=act,
        )  # fmt: skip
        self.fuse = ResidualUnit(spatial_dims, 2 * out_channels, out_channels, subunits=1, norm=norm, act=act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class HybridAxialUNet(nn.Module):
    """U-Net whose fine levels are convolutional and whose coarse levels add Medical Transformer attention blocks.

    Level ``l`` (``0 <= l < len(channels)``) is a MONAI ``ResidualUnit`` with ``channels[l]`` outputs, followed by
    ``attention_blocks[l]`` residual gated axial attention blocks (:class:`AxialBottleneck`: gated relative-position
    attention along each spatial axis in turn). Every level but the last halves the resolution, so the last two
    levels share the coarsest one, ``img_size / 2 ** (len(channels) - 1)``. The decoder upsamples with transposed
    convolutions, concatenates each level's features and fuses them with a residual convolution; the
    head is a transposed convolution to the input resolution with no normalisation or activation after it.

    Convolutions are local and cheap where there are many voxels; axial attention sees a whole patch along each
    axis where there are few (an 8^3 map for a 64^3 ROI), which is where its cost per token is small. With
    ``attention_blocks`` all zero it is a plain convolutional U-Net with BatchNorm.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (raw logits).
        img_size: largest input per spatial axis (int or sequence), e.g. the sliding-window ROI; sets the positional
            spans of the attention. Inputs may be smaller; every axis must be a multiple of
            ``2 ** (len(channels) - 1)``.
        channels: output channels of each level, fine to coarse (at least two levels).
        attention_blocks: gated axial attention blocks after each level's convolution (one entry per level). Each
            block attends with ``channels[l] // 2`` channels in ``num_groups`` heads.
        num_groups: attention heads.
        norm: MONAI normalisation name for the convolutions.
        act: MONAI activation name for the convolutions.

    Raises:
        ValueError: for unsupported ``spatial_dims``, fewer than two levels, ``attention_blocks`` of another length
            or negative, an ``img_size`` the downsampling cannot divide, or attention channels that do not split
            into ``num_groups`` heads of an even number of channels.
    """

    spatial_dims: torch.jit.Final[int]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        channels: Sequence[int] = (16, 32, 64, 128),
        attention_blocks: Sequence[int] = (0, 0, 0, 1),
        num_groups: int = 8,
        norm: str = "batch",
        act: str = "relu",
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        levels = len(channels)
        if levels < 2 or min(channels) < 1:
            raise ValueError(f"channels must list at least two positive channel counts, got {list(channels)}")
        if len(attention_blocks) != levels or min(attention_blocks) < 0:
            raise ValueError(
                f"attention_blocks must give a non-negative block count for each of the {levels} levels of "
                f"channels {list(channels)}, got {list(attention_blocks)}"
            )
        for level, blocks in enumerate(attention_blocks):
            heads_channels = channels[level] // 2
            if blocks and (heads_channels % num_groups or (heads_channels // num_groups) % 2):
                raise ValueError(
                    f"level {level} attends with channels[{level}] // 2 = {heads_channels} channels, which must split "
                    f"into num_groups ({num_groups}) heads of an even number of channels"
                )
        self.spatial_dims = spatial_dims
        self.img_size = list(ensure_tuple_rep(img_size, spatial_dims))
        self.size_multiple = [2 ** (levels - 1)] * spatial_dims
        if any(size % multiple for size, multiple in zip(self.img_size, self.size_multiple, strict=True)):
            raise ValueError(f"img_size {self.img_size} must be a multiple of {self.size_multiple} on every axis")

        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, level_channels in enumerate(channels):
            stride = 2 if level < levels - 1 else 1
            size = [s // 2 ** min(level + 1, levels - 1) for s in self.img_size]
            blocks: list[nn.Module] = [ResidualUnit(spatial_dims, previous, level_channels, stride, norm=norm, act=act)]
            blocks += [
                AxialBottleneck(spatial_dims, level_channels, level_channels // 2, level_channels, size, num_groups)
                for _ in range(attention_blocks[level])
            ]
            self.encoder.append(nn.Sequential(*blocks))
            previous = level_channels
        self.decoder = nn.ModuleList(
            _DecoderLevel(spatial_dims, channels[level + 1], channels[level], level < levels - 2, norm, act)
            for level in range(levels - 2, -1, -1)
        )
        # linear to the logits: a ReLU on as few channels as classes can silence a class for good
        self.head = Convolution(spatial_dims, channels[0], out_channels, strides=2, is_transposed=True, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x``.

        Args:
            x: ``(N, in_channels, *spatial)``, each spatial axis at most ``img_size`` and a multiple of
                ``2 ** (len(channels) - 1)``.

        Returns:
            ``(N, out_channels, *spatial)`` logits.

        Raises:
            ValueError: for an input of the wrong rank or an unsupported spatial size.
        """
        _check_input(x, self.spatial_dims, self.img_size, self.size_multiple, "HybridAxialUNet")
        features: list[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            features.append(x)
        x = features[-1]
        for index, level in enumerate(self.decoder):
            x = level(x, features[-2 - index])
        return self.head(x)
