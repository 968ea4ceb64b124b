import json
from pathlib import Path

import pytest
import torch

from monai_ext.legacy import LegacyCheckpointError, convert_medt_state_dict, medt_from_original
from monai_ext.networks.blocks import GatedAxialAttention
from monai_ext.networks.nets import GatedAxialUNet, MedT

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "medt"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text()) if FIXTURES.is_dir() else {"cases": {}}
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(),
    reason=f"MedT reference fixtures not found at {FIXTURES}: they are outputs of the original Medical Transformer "
    "code (29 MB), kept in the project's shared folder; put it beside the repository as ../shared to run these",
)

# parameters the original defines but its forward never uses, which our MedT does not have
UNUSED_ORIGINAL_PARAMS = {"medt_128": ("adjust_p.", ".conv1."), "logo_128": ("adjust_p.",)}


def build(case: str) -> torch.nn.Module:
    if case.startswith("gated_layer"):
        stride = 2 if case.endswith("stride2") else 1
        return GatedAxialAttention(2, 16, 16 * stride, 64, axis=0 if case.endswith("_h") else 1, stride=stride)
    variant, size = case.rsplit("_", 1)
    return medt_from_original(variant, int(size))


def load(case: str) -> tuple[torch.nn.Module, dict]:
    fixture = torch.load(FIXTURES / f"{case}.pt", weights_only=True)
    model = build(case)
    model.load_state_dict(convert_medt_state_dict(fixture["state_dict"], model))
    return model, fixture


@pytest.mark.parametrize("case", sorted(MANIFEST["cases"]))
def test_matches_original_outputs(case):
    model, fixture = load(case)
    original = {key: value.clone() for key, value in fixture["state_dict"].items()}
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(fixture["input"]), fixture["output_eval"], atol=1e-4, rtol=0)
        if "output_train" in fixture:
            model.train()
            torch.testing.assert_close(model(fixture["input"]), fixture["output_train"], atol=1e-3, rtol=0)
    # the conversion neither modified nor aliased the caller's tensors
    assert all(torch.equal(original[key], value) for key, value in fixture["state_dict"].items())
    manifest = MANIFEST["cases"][case]
    unused = sum(
        torch.Size(shape).numel()
        for key, shape in manifest["state_dict"].items()
        if any(part in key for part in UNUSED_ORIGINAL_PARAMS.get(case, ()))
        and "running" not in key
        and "num_batches" not in key
    )
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] - unused


def test_builds_the_original_configurations():
    assert isinstance(medt_from_original("axialunet", 64), GatedAxialUNet)
    assert not any("f_qr" in key for key in medt_from_original("axialunet", 64).state_dict())
    medt = medt_from_original("medt", 128)
    assert isinstance(medt, MedT) and medt.patch_grid == [4, 4]
    assert medt.local_branch.stages[0][0].attention[0].relative is None
    assert medt_from_original("logo", 128).local_branch.stages[0][0].attention[0].relative is not None
    with pytest.raises(ValueError, match="variant must be one of"):
        medt_from_original("transunet", 128)


def test_mismatching_checkpoint_lists_every_problem(tmp_path):
    state = dict(torch.load(FIXTURES / "gated_64.pt", weights_only=True)["state_dict"])
    del state["layer2.1.conv_up.weight"]
    state["layer9.0.extra"] = torch.zeros(1)
    path = tmp_path / "gated.pth"
    torch.save({"state_dict": state}, path)
    model = medt_from_original("gated", 128)  # relative tables sized for 128, checkpoint for 64
    with pytest.raises(LegacyCheckpointError) as error:
        convert_medt_state_dict(path, model)
    message = str(error.value)
    assert "missing keys (1): backbone.stages.1.1.conv_up.weight" in message
    assert "unexpected keys (1): layer9.0.extra" in message
    assert "backbone.stages.0.0.attention.0.relative: checkpoint (4, 63), model (4, 127)" in message
    assert "mis-shaped keys (16)" in message


def test_ungated_checkpoint_into_gated_model_reports_missing_gates():
    state = torch.load(FIXTURES / "axialunet_64.pt", weights_only=True)["state_dict"]
    with pytest.raises(LegacyCheckpointError, match=r"missing keys \(64\): backbone.stages.0.0.attention.0.f_kr"):
        convert_medt_state_dict(state, medt_from_original("gated", 64))


def test_single_layer_and_wrong_model_type():
    state = torch.load(FIXTURES / "gated_layer_h.pt", weights_only=True)["state_dict"]
    with pytest.raises(LegacyCheckpointError, match="missing keys"):
        convert_medt_state_dict(state, GatedAxialAttention(2, 16, 16, 64, 0, gated=False, positional=False))
    with pytest.raises(TypeError, match="GatedAxialAttention, GatedAxialUNet or MedT"):
        convert_medt_state_dict(state, torch.nn.Conv2d(1, 1, 1))
