"""NearestUpsampleConv against MONAI's nearest x2 Upsample with a 3-wide post-convolution, side by side."""

import pytest
import torch
from monai.networks.blocks import Convolution, Upsample

from monai_ext.networks.blocks import NearestUpsampleConv


def monai_upsample(spatial_dims: int, channels: int) -> Upsample:
    return Upsample(
        spatial_dims,
        mode="nontrainable",
        in_channels=channels,
        out_channels=channels,
        interp_mode="nearest",
        scale_factor=2.0,
        post_conv=Convolution(spatial_dims, channels, channels, strides=1, kernel_size=3, padding=1, conv_only=True),
        align_corners=None,
    )


@pytest.mark.parametrize("spatial_dims,size", [(1, (7,)), (2, (5, 6)), (3, (4, 5, 3))])
def test_same_outputs_and_gradients_as_monai(spatial_dims, size):
    torch.manual_seed(0)
    ours = NearestUpsampleConv(spatial_dims, 6, 6)
    monai = monai_upsample(spatial_dims, 6)
    monai.load_state_dict(ours.state_dict())  # same keys: postconv.conv.weight and .bias
    x = torch.randn(2, 6, *size)
    x_ours, x_monai = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours_out, monai_out = ours(x_ours), monai(x_monai)
    assert ours_out.shape == monai_out.shape == (2, 6, *[2 * s for s in size])
    torch.testing.assert_close(ours_out, monai_out, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(monai_out)
    (ours_out * weights).sum().backward()
    (monai_out * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_monai.grad, atol=1e-5, rtol=1e-5)
    for name in ("weight", "bias"):
        torch.testing.assert_close(
            getattr(ours.postconv.conv, name).grad, getattr(monai.postconv.conv, name).grad, atol=1e-4, rtol=1e-5
        )
    torch.testing.assert_close(torch.jit.script(ours)(x), ours(x), atol=0, rtol=0)


def test_channel_change_and_invalid_dims():
    layer = NearestUpsampleConv(2, 3, 5)
    assert layer(torch.randn(1, 3, 4, 4)).shape == (1, 5, 8, 8)
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3, got 4"):
        NearestUpsampleConv(4, 3, 3)
