"""Every network we ship trains under ``torch.autocast`` in bfloat16 and float16 (CPU autocast here).

A training step's gradients must be finite and point where the float32 gradients point (cosine similarity). Our
own arithmetic, the gated axial layer with its hand-written backward passes, must also stay within 1% of float32 in
norm. MONAI's UNet takes the same step beside them.
"""

import pytest
import torch
from monai.networks.nets import UNet

from monai_ext.networks.blocks import AxialBottleneck, GatedAxialAttention, SABlock
from monai_ext.networks.nets import AutoencoderKL, GatedAxialUNet, HybridAxialUNet, MedT

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
NETWORKS = {
    "MedT_2d": (
        lambda: MedT(
            2, 1, 3, 32, patch_grid=2, global_layers=(1, 1), local_layers=(1,), stem_channels=16, num_groups=4
        ),
        (2, 1, 32, 32),
    ),
    "MedT_3d": (
        lambda: MedT(
            3, 1, 3, 16, patch_grid=2, global_layers=(1, 1), local_layers=(1,), stem_channels=16, num_groups=4
        ),
        (2, 1, 16, 16, 16),
    ),
    "GatedAxialUNet_3d": (
        lambda: GatedAxialUNet(3, 1, 3, 32, layers=(1, 1), stem_channels=16, num_groups=4),
        (2, 1, 32, 32, 32),
    ),
    "HybridAxialUNet_3d": (lambda: HybridAxialUNet(3, 1, 3, 32), (2, 1, 32, 32, 32)),  # deepest maps 4^3
    "AxialBottleneck_3d": (lambda: AxialBottleneck(3, 16, 8, 16, 8, num_groups=4), (2, 16, 8, 8, 8)),
    "AutoencoderKL_3d": (
        lambda: AutoencoderKL(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=(8, 16),
            latent_channels=2,
            num_res_blocks=1,
            norm_num_groups=4,
            attention_levels=(False, True),
        ),  # fmt: skip
        (2, 1, 16, 16, 16),
    ),
    "SABlock": (lambda: SABlock(32, 4), (2, 10, 32)),
    "MONAI_UNet_3d": (lambda: UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=2), (2, 1, 32, 32, 32)),
}
# Lowest cosine similarity to the float32 gradient measured over these networks was 0.986 (bfloat16, 8 mantissa
# bits) and 0.9977 (float16). Train-mode BatchNorm over a handful of voxels amplifies 16-bit rounding: the same
# GatedAxialUNet with four stages at 32^3 (deepest maps 2^3, then 1^3) measured 0.83 to 0.96 in bfloat16.
MIN_COSINE = {"bfloat16": 0.97, "float16": 0.99}


def _gradient(model, x, dtype):
    model.zero_grad()
    torch.manual_seed(1)  # the autoencoder samples its latent
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        output = model(x)
    output = output[0] if isinstance(output, tuple) else output
    output.float().square().mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NETWORKS)
def test_a_training_step_under_autocast_gives_finite_gradients_along_the_float32_ones(name, dtype):
    build, shape = NETWORKS[name]
    torch.manual_seed(0)
    model, x = build().train(), torch.randn(shape)
    reference = _gradient(model, x, None)
    gradient = _gradient(model, x, DTYPES[dtype])
    assert torch.isfinite(gradient).all()
    cosine = torch.nn.functional.cosine_similarity(gradient, reference, dim=0).item()
    assert cosine >= MIN_COSINE[dtype], cosine


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gated_axial_attention_under_autocast_stays_within_one_percent_of_float32(spatial_dims, dtype):
    torch.manual_seed(0)
    layer = GatedAxialAttention(spatial_dims, 16, 16, axis=spatial_dims - 1, spatial_size=16, num_groups=4).train()
    x = torch.randn(2, 16, *([16] * spatial_dims))
    reference = _gradient(layer, x, None)
    gradient = _gradient(layer, x, DTYPES[dtype])
    assert torch.isfinite(gradient).all()
    assert (gradient - reference).norm() <= 0.01 * reference.norm()
    with torch.autocast("cpu", dtype=DTYPES[dtype]):
        assert layer.eval()(x).dtype == DTYPES[dtype]  # the surrounding network keeps running in 16 bits
