"""Medical Transformer networks (Valanarasu et al., MICCAI 2021) for 2D and 3D: the gated axial U-Net and MedT."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_ext.networks.blocks.axial_bottleneck import AxialBottleneck

__all__ = ["AxialEncoderDecoder", "GatedAxialUNet", "MedT"]


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _check_input(x: torch.Tensor, spatial_dims: int, max_size: list[int], multiple: list[int], name: str) -> None:
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{name}: expected a {spatial_dims + 2}D input (N, C, *spatial), got shape {list(x.shape)}")
    for axis in range(spatial_dims):
        size = x.shape[2 + axis]
        if size > max_size[axis] or size % multiple[axis] != 0:
            raise ValueError(
                f"{name}: spatial size {list(x.shape[2:])} is not supported: each axis must be at most img_size "
                f"{max_size} and a multiple of {multiple} (the network's downsampling)"
            )


class AxialEncoderDecoder(nn.Module):
    """The U-Net body shared by ``GatedAxialUNet`` and both branches of ``MedT``; returns full-resolution features.

    Stem: 7x7 convolution with stride 2, then two 3x3 convolutions (each with BatchNorm and ReLU). Encoder: one
    stage of ``AxialBottleneck`` blocks per entry of ``layers``, with ``int(128 * width * 2**t)`` channels inside
    and twice that out; every stage after the first halves the resolution. Decoder: 3x3 convolutions, each followed
    by x2 (bi/tri)linear upsampling and ReLU and added to the encoder output of the same resolution; with
    ``deepest_conv`` it starts with a stride-2 convolution on the deepest features. The last convolution outputs
    ``int(128 * width)`` channels at the input resolution.

    Under ``torch.autocast`` it computes in float32 and returns float32 (the surrounding layers keep autocast): a deep
    stack of gated axial blocks with train-mode BatchNorm is so sensitive that a 16-bit training step's gradient has
    no relation to the float32 one (cosine 0.06 in bfloat16 for ``GatedAxialUNet`` at the paper's 64^2 setting).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        img_size: largest input per spatial axis; sets the positional spans of the attention layers.
        stem_out_channels: channels leaving the stem.
        width: channel scale (the original uses 0.125).
        layers: number of blocks per encoder stage.
        stem_channels: channels of the stem's middle convolution.
        num_groups: attention heads.
        gated: gates in the attention layers.
        positional: relative position terms in the attention layers.
        deepest_conv: start the decoder with a stride-2 convolution on the deepest stage.
    """

    spatial_dims: torch.jit.Final[int]
    num_skips: torch.jit.Final[int]
    mode: torch.jit.Final[str]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int],
        stem_out_channels: int,
        width: float,
        layers: Sequence[int],
        stem_channels: int = 128,
        num_groups: int = 8,
        gated: bool = True,
        positional: bool = True,
        deepest_conv: bool = True,
    ) -> None:
        super().__init__()
        if not layers or min(layers) < 1:
            raise ValueError(f"layers must list at least one stage, each with at least one block, got {layers}")
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.BATCH, spatial_dims]
        self.spatial_dims = spatial_dims
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.stem = nn.Sequential(
            conv(in_channels, stem_out_channels, kernel_size=7, stride=2, padding=3, bias=False),
            norm(stem_out_channels),
            nn.ReLU(),
            conv(stem_out_channels, stem_channels, kernel_size=3, padding=1, bias=False),
            norm(stem_channels),
            nn.ReLU(),
            conv(stem_channels, stem_out_channels, kernel_size=3, padding=1, bias=False),
            norm(stem_out_channels),
            nn.ReLU(),
        )
        size = [s // 2 for s in img_size]
        channels = stem_out_channels
        stage_channels = []
        self.stages = nn.ModuleList()
        for stage, blocks in enumerate(layers):
            planes = int(128 * width * 2**stage)
            stride = 1 if stage == 0 else 2
            stage_blocks = [
                AxialBottleneck(spatial_dims, channels, planes, 2 * planes, size, num_groups, stride, gated, positional)
            ]
            size = [s // stride for s in size]
            for _ in range(1, blocks):
                stage_blocks.append(
                    AxialBottleneck(
                        spatial_dims, 2 * planes, planes, 2 * planes, size, num_groups, 1, gated, positional
                    )
                )
            self.stages.append(nn.Sequential(*stage_blocks))
            channels = 2 * planes
            stage_channels.append(channels)
        self.decoder = nn.ModuleList()
        if deepest_conv:
            self.decoder.append(conv(channels, channels, kernel_size=3, stride=2, padding=1))
        for stage in range(len(layers) - 1, 0, -1):
            self.decoder.append(conv(stage_channels[stage], stage_channels[stage - 1], kernel_size=3, padding=1))
        self.out_channels = int(128 * width)
        self.decoder.append(conv(stage_channels[0], self.out_channels, kernel_size=3, padding=1))
        self.num_skips = len(layers) if deepest_conv else len(layers) - 1
        # stride-2 steps: stem, every stage after the first, the deepest decoder convolution
        self.size_multiple = 2 ** (len(layers) + int(deepest_conv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles no branch behind this test
            if torch.is_autocast_enabled(x.device.type):
                # In train mode this stack's gradient turns with a 1e-4 relative change of one activation (cosine
                # 0.70 in float32 alone), so 16-bit rounding anywhere in it gives a gradient unrelated to float32's.
                with torch.autocast(x.device.type, enabled=False):
                    return self._features(x.float())
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        for index, conv in enumerate(self.decoder):
            x = torch.relu(F.interpolate(conv(x), scale_factor=2.0, mode=self.mode))
            if index < self.num_skips:
                # skips run from the deepest stage that the decoder has reached back to the first
                x = x + features[self.num_skips - 1 - index]
        return x


class GatedAxialUNet(nn.Module):
    """U-Net of gated axial-attention bottlenecks ("gated" in the Medical Transformer paper), 2D or 3D.

    With ``gated=False`` it is the paper's axial-attention U-Net baseline. Defaults reproduce the original
    (``layers=(1, 2, 4, 1)``, ``width=0.125``, 8 heads).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (raw logits).
        img_size: largest input per spatial axis (int or sequence); sets the attention's positional spans. Inputs
            may be smaller, but every axis must be a multiple of ``2 ** (len(layers) + 1)`` (32 by default).
        width: channel scale; stage ``t`` has ``int(128 * width * 2**t)`` attention channels, which must split into
            ``num_groups`` groups of an even number of channels.
        layers: blocks per encoder stage.
        stem_channels: channels of the stem's middle convolution.
        num_groups: attention heads.
        gated: gates in the attention layers.

    Raises:
        ValueError: for unsupported ``spatial_dims``, an ``img_size`` the downsampling cannot divide, or widths that
            do not split into attention groups.
    """

    spatial_dims: torch.jit.Final[int]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        width: float = 0.125,
        layers: Sequence[int] = (1, 2, 4, 1),
        stem_channels: int = 128,
        num_groups: int = 8,
        gated: bool = True,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.img_size = list(ensure_tuple_rep(img_size, spatial_dims))
        self.backbone = AxialEncoderDecoder(
            spatial_dims,
            in_channels,
            self.img_size,
            int(64 * width),
            width,
            layers,
            stem_channels,
            num_groups,
            gated=gated,
            positional=True,
            deepest_conv=True,
        )
        self.size_multiple = [self.backbone.size_multiple] * spatial_dims
        if any(size % m for size, m in zip(self.img_size, self.size_multiple, strict=True)):
            raise ValueError(f"img_size {self.img_size} must be a multiple of {self.size_multiple} on every axis")
        self.head = Conv[Conv.CONV, spatial_dims](self.backbone.out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.spatial_dims, self.img_size, self.size_multiple, "GatedAxialUNet")
        return self.head(self.backbone(x))


class MedT(nn.Module):
    """Medical Transformer: a shallow gated global branch plus a deep local branch on a grid of patches.

    ``head(relu(fuse(global_branch(x) + local_branch(patches of x, put back in place))))``. The global branch sees
    the whole input with gated axial attention; the local branch (shared weights, by default without positional
    terms and gates, as in the paper) sees each of the ``patch_grid`` patches. All patches of all samples run
    through the local branch as one batch: in eval mode this equals running them one by one; in train mode the
    local branch's BatchNorm layers take their batch statistics over all patches together (the original loops over
    patches and normalises each patch batch separately).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (raw logits).
        img_size: largest input per spatial axis (int or sequence); sets the positional spans of both branches.
        width: channel scale (0.125 in the original).
        patch_grid: patches per axis (int or sequence); the original uses a 4 x 4 grid.
        global_layers: blocks per stage of the global branch.
        local_layers: blocks per stage of the local branch.
        stem_channels: channels of the stems' middle convolutions.
        num_groups: attention heads.
        global_gated: gates in the global branch (False gives the paper's LoGo network).
        local_positional: relative position terms in the local branch.
        local_gated: gates in the local branch.

    Every input axis must be at most ``img_size``, a multiple of ``2 ** len(global_layers)``, and a multiple of
    ``patch_grid * 2 ** (len(local_layers) + 1)`` (for the defaults: 4 and 128).

    Raises:
        ValueError: for unsupported ``spatial_dims``, an ``img_size`` that the patch grid or the downsampling cannot
            divide, or widths that do not split into attention groups.
    """

    spatial_dims: torch.jit.Final[int]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int] | int,
        width: float = 0.125,
        patch_grid: Sequence[int] | int = 4,
        global_layers: Sequence[int] = (1, 2),
        local_layers: Sequence[int] = (1, 2, 4, 1),
        stem_channels: int = 128,
        num_groups: int = 8,
        global_gated: bool = True,
        local_positional: bool = False,
        local_gated: bool = False,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.img_size = list(ensure_tuple_rep(img_size, spatial_dims))
        self.patch_grid = list(ensure_tuple_rep(patch_grid, spatial_dims))
        if any(size % grid for size, grid in zip(self.img_size, self.patch_grid, strict=True)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_grid {self.patch_grid}")
        patch_size = [size // grid for size, grid in zip(self.img_size, self.patch_grid, strict=True)]
        self.global_branch = AxialEncoderDecoder(
            spatial_dims,
            in_channels,
            self.img_size,
            int(64 * width),
            width,
            global_layers,
            stem_channels,
            num_groups,
            gated=global_gated,
            positional=True,
            deepest_conv=False,
        )
        # as in the original, the local stem widens to the global branch's deepest channel count
        self.local_branch = AxialEncoderDecoder(
            spatial_dims,
            in_channels,
            patch_size,
            2 * int(128 * width * 2 ** (len(global_layers) - 1)),
            width,
            local_layers,
            stem_channels,
            num_groups,
            gated=local_gated,
            positional=local_positional,
            deepest_conv=True,
        )
        channels = self.global_branch.out_channels
        conv = Conv[Conv.CONV, spatial_dims]
        self.fuse = conv(channels, channels, kernel_size=3, padding=1)
        self.head = conv(channels, out_channels, kernel_size=1)
        self.size_multiple = [
            max(self.global_branch.size_multiple, grid * self.local_branch.size_multiple) for grid in self.patch_grid
        ]
        for size, m in zip(self.img_size, self.size_multiple, strict=True):
            if size % m or m % self.global_branch.size_multiple:
                raise ValueError(
                    f"img_size {self.img_size} must be a multiple of {self.size_multiple} on every axis "
                    f"(patch_grid {self.patch_grid} times the local branch's downsampling "
                    f"{self.local_branch.size_multiple}, and the global branch's {self.global_branch.size_multiple})"
                )
        # (N, C, g0, p0, g1, p1, ...) -> (N, g0, g1, ..., C, p0, p1, ...) and back
        self.to_patches = (
            [0] + [2 + 2 * a for a in range(spatial_dims)] + [1] + [3 + 2 * a for a in range(spatial_dims)]
        )
        self.from_patches = [0, 1 + spatial_dims]
        for a in range(spatial_dims):
            self.from_patches += [1 + a, 2 + spatial_dims + a]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.spatial_dims, self.img_size, self.size_multiple, "MedT")
        n, c = x.shape[0], x.shape[1]
        sizes = list(x.shape[2:])
        patch: list[int] = []
        grid_shape = [n, c]
        for axis in range(self.spatial_dims):
            patch.append(sizes[axis] // self.patch_grid[axis])
            grid_shape += [self.patch_grid[axis], patch[axis]]
        patches = x.reshape(grid_shape).permute(self.to_patches).reshape([-1, c] + patch)
        local = self.local_branch(patches)
        f = local.shape[1]
        local = local.reshape([n] + self.patch_grid + [f] + patch).permute(self.from_patches)
        local = local.reshape([n, f] + sizes)
        return self.head(torch.relu(self.fuse(self.global_branch(x) + local)))
