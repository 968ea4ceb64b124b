"""Nearest-neighbour x2 upsampling followed by a 3-wide convolution, computed on the coarse grid."""

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["NearestUpsampleConv"]

# For one axis, output 2i + p of "repeat each voxel twice, then a 3-tap conv with padding 1" reads coarse voxels
# i - 1 + p and i + p: taps (w0, w1 + w2) for p = 0 and (w0 + w1, w2) for p = 1. [phase, coarse tap, original tap]
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
_EQUATIONS = {1: "pax,oix->poia", 2: "pax,qby,oixy->pqoiab", 3: "pax,qby,rcz,oixyz->pqroiabc"}


class NearestUpsampleConv(nn.Module):
    """``conv(nearest_upsample(x, 2))`` with a 3-wide, padding-1 convolution, without forming the upsampled input.

    Same parameters and state-dict keys (``postconv.conv.*``) as MONAI's
    ``Upsample(mode="nontrainable", interp_mode="nearest", scale_factor=2, post_conv=<3-wide conv>)``, and the same
    output up to float rounding. Each of the ``2**spatial_dims`` output phases is a 2-wide convolution of the
    coarse input whose taps are sums of the original taps, so all phases run as one convolution with
    ``2**spatial_dims`` times the output channels on the coarse grid: ``(2/3)**spatial_dims`` of the
    multiply-adds (30% in 3D), and no upsampled copy of the input.

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.

    Raises:
        ValueError: ``spatial_dims`` is not 1, 2 or 3.
    """

    spatial_dims: torch.jit.Final[int]
    equation: torch.jit.Final[str]

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if spatial_dims not in _EQUATIONS:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.equation = _EQUATIONS[spatial_dims]
        self.postconv = Convolution(
            spatial_dims, in_channels, out_channels, strides=1, kernel_size=3, padding=1, conv_only=True
        )
        self.register_buffer("phase_taps", _PHASE_TAPS.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(B, out_channels, *(2 * spatial))``.
        """
        conv = self.postconv.conv
        weight, bias = conv.weight, conv.bias
        phases = 1 << self.spatial_dims
        out_channels = weight.shape[0]
        taps = self.phase_taps.to(weight.dtype)
        phase_weight = torch.einsum(self.equation, [taps] * self.spatial_dims + [weight])
        phase_weight = phase_weight.reshape([phases * out_channels, weight.shape[1]] + [2] * self.spatial_dims)
        phase_bias = bias.repeat(phases) if bias is not None else None
        if self.spatial_dims == 1:
            per_phase = F.conv1d(x, phase_weight, phase_bias, padding=1)
        elif self.spatial_dims == 2:
            per_phase = F.conv2d(x, phase_weight, phase_bias, padding=1)
        else:
            per_phase = F.conv3d(x, phase_weight, phase_bias, padding=1)
        sizes = list(x.shape[2:])
        batch = x.shape[0]
        per_phase = per_phase.view([batch, phases, out_channels] + [s + 1 for s in sizes])
        interleaved = [batch, out_channels]
        for size in sizes:
            interleaved += [size, 2]
        out = torch.empty(interleaved, dtype=per_phase.dtype, device=per_phase.device)
        for phase in range(phases):
            source = per_phase[:, phase]
            target = out
            # the phase's bit for axis a (most significant first) picks the output parity along a; selecting the
            # last axes first keeps the earlier parity dimensions where they are
            for axis in range(self.spatial_dims - 1, -1, -1):
                parity = (phase >> (self.spatial_dims - 1 - axis)) & 1
                source = source.narrow(2 + axis, parity, sizes[axis])
                target = target.select(3 + 2 * axis, parity)
            target.copy_(source)
        return out.view([batch, out_channels] + [2 * s for s in sizes])
