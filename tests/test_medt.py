import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from randomised_norms import randomise_batch_norms

from monai_ext.networks.nets import GatedAxialUNet, MedT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from medt_reference import ReferenceMedT, reference_copy  # noqa: E402


def small_medt_3d(**kwargs) -> MedT:
    arguments = {"width": 0.125, "patch_grid": 2, "global_layers": (1, 1), "local_layers": (1, 1)} | kwargs
    return MedT(3, 1, 3, 32, **arguments)


def test_unet_shapes_2d_and_3d():
    unet = GatedAxialUNet(2, 1, 4, img_size=(64, 32)).eval()
    assert unet(torch.randn(2, 1, 64, 32)).shape == (2, 4, 64, 32)
    assert unet(torch.randn(1, 1, 32, 32)).shape == (1, 4, 32, 32)  # smaller than img_size
    unet3d = GatedAxialUNet(3, 2, 3, img_size=32, layers=(1, 1, 1, 1)).eval()
    assert unet3d(torch.randn(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    assert unet3d.backbone.stages[0][0].attention[2].spatial_size == 16


def test_medt_shapes_2d_and_3d():
    medt = MedT(2, 3, 2, 128).eval()
    assert medt(torch.randn(1, 3, 128, 128)).shape == (1, 2, 128, 128)
    assert medt.local_branch.stages[0][0].attention[0].spatial_size == 16
    medt3d = small_medt_3d().eval()
    assert medt3d(torch.randn(2, 1, 32, 32, 32)).shape == (2, 3, 32, 32, 32)
    assert medt3d(torch.randn(1, 1, 16, 32, 16)).shape == (1, 3, 16, 32, 16)


def test_size_errors():
    medt = small_medt_3d()  # multiples of patch_grid 2 * local downsampling 8 = 16
    with pytest.raises(ValueError, match=r"MedT: spatial size \[24, 32, 32\].*multiple of \[16, 16, 16\]"):
        medt(torch.randn(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match=r"at most img_size \[32, 32, 32\]"):
        medt(torch.randn(1, 1, 48, 32, 32))
    with pytest.raises(ValueError, match=r"GatedAxialUNet: spatial size \[48, 64\]"):
        GatedAxialUNet(2, 1, 2, 64)(torch.randn(1, 1, 48, 64))
    with pytest.raises(ValueError, match="img_size .* must be a multiple of"):
        MedT(2, 3, 2, 96)
    with pytest.raises(ValueError, match="divisible by patch_grid"):
        MedT(2, 3, 2, 128, patch_grid=3)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        GatedAxialUNet(1, 1, 2, 64)
    with pytest.raises(ValueError, match="even number"):
        GatedAxialUNet(2, 1, 2, 64, width=0.0625)


def test_local_batch_equals_patch_loop_in_eval():
    for medt in (MedT(2, 2, 3, 128, patch_grid=(4, 2), width=0.125), small_medt_3d(local_positional=True)):
        randomise_batch_norms(medt, shift_scale=0.1)
        medt.eval()
        loop = reference_copy(medt).eval()
        assert isinstance(loop, ReferenceMedT)
        x = torch.randn(2, medt.global_branch.stem[0].in_channels, *medt.img_size)
        with torch.no_grad():
            torch.testing.assert_close(medt(x), loop(x), atol=1e-4, rtol=1e-4)


def test_local_batch_in_train_mode_normalises_all_patches_together():
    medt = small_medt_3d()
    x = torch.randn(1, 1, 16, 32, 32)
    batched = medt(x)
    loop = reference_copy(medt)
    looped = loop(x)
    assert batched.shape == looped.shape
    assert not torch.allclose(batched, looped, atol=1e-3)  # documented: BatchNorm statistics differ


@pytest.mark.parametrize(
    "build,shape",
    [
        (lambda: GatedAxialUNet(2, 1, 2, 64, gated=False), (1, 1, 64, 64)),
        (lambda: GatedAxialUNet(3, 1, 2, 32, layers=(1, 1, 1, 1)), (2, 1, 32, 32, 32)),
        (lambda: MedT(2, 3, 2, 64, patch_grid=2, global_gated=False, local_positional=True), (2, 3, 64, 64)),
        (lambda: small_medt_3d(), (2, 1, 16, 16, 16)),
    ],
)
def test_scripted_matches_eager(build, shape):
    model = build()
    randomise_batch_norms(model, shift_scale=0.1)
    scripted = torch.jit.script(model)
    x = torch.randn(shape)
    for train in (False, True):
        model.train(train)
        scripted.train(train)
        torch.testing.assert_close(scripted(x), model(x), atol=1e-4, rtol=1e-4)


def test_train_step_and_deterministic_eval():
    medt = small_medt_3d()
    optimiser = torch.optim.SGD(medt.parameters(), lr=0.01)
    x, target = torch.randn(2, 1, 16, 32, 16), torch.randint(0, 3, (2, 16, 32, 16))
    loss = torch.nn.functional.cross_entropy(medt(x), target)
    loss.backward()
    for name, param in medt.named_parameters():
        if name.split(".")[-2] in ("norm_qk", "norm_qr", "norm_kr") and name.endswith("bias"):
            assert param.grad is not None and not param.grad.any(), name  # a shift of the logits cancels in softmax
        elif param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    optimiser.step()
    medt.eval()
    with torch.no_grad():
        assert torch.equal(medt(x), medt(x))


def test_bundle_config_instantiates_dotted_target():
    config = {
        "imports": ["$import monai_ext"],
        "network_def": {
            "_target_": "monai_ext.networks.nets.MedT",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "img_size": [32, 32, 32],
            "patch_grid": 2,
            "global_layers": [1, 1],
            "local_layers": [1, 1],
        },
    }
    parser = ConfigParser(config)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, MedT) and network.patch_grid == [2, 2, 2]
