"""Legacy DiffusionModelUNet and ControlNet checkpoints (MONAI Generative Models 0.2.3) in MONAI core's classes.

Every test runs the legacy package side by side: its model's outputs are the reference, and MONAI core's own
``load_old_state_dict`` is shown next to ours.
"""

import copy
import functools
import itertools
import json
import subprocess
import sys

import pytest
import torch
from generative.networks.nets import ControlNet as LegacyControlNet
from generative.networks.nets import DiffusionModelUNet as LegacyDiffusionModelUNet
from monai.networks.nets import ControlNet, DiffusionModelUNet

from monai_ext.legacy import (
    LegacyCheckpointError,
    convert_controlnet_state_dict,
    convert_diffusion_unet_state_dict,
)
from monai_ext.sharing.checkpoint import verify_sha256

LAYOUTS = [
    {"include_fc": fc, "use_combined_linear": combined}
    for fc, combined in itertools.product((True, False), (False, True))
]
LAYOUT_IDS = [f"fc={layout['include_fc']}-combined={layout['use_combined_linear']}" for layout in LAYOUTS]
TOLERANCE = 1e-5


def _arguments(spatial_dims, conditioned, controlnet=False):
    arguments = {
        "spatial_dims": spatial_dims, "in_channels": 1, "num_res_blocks": 1, "attention_levels": (False, True),
        "num_head_channels": 8, "norm_num_groups": 8, "with_conditioning": conditioned,
        "cross_attention_dim": 4 if conditioned else None, "num_class_embeds": 3,
    }  # fmt: skip
    if controlnet:
        arguments.update(conditioning_embedding_num_channels=(8,), conditioning_embedding_in_channels=1)
    else:
        arguments["out_channels"] = 1
    return arguments


@functools.cache
def _legacy(kind, spatial_dims, conditioned):
    """A seeded legacy model with every weight moved off its initial value, its inputs and its outputs."""
    torch.manual_seed(spatial_dims * 10 + conditioned)
    legacy_class = LegacyControlNet if kind == "controlnet" else LegacyDiffusionModelUNet
    model = legacy_class(num_channels=(8, 16), **_arguments(spatial_dims, conditioned, kind == "controlnet")).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    size = (16,) * spatial_dims
    inputs = {
        "x": torch.randn(2, 1, *size),
        "timesteps": torch.tensor([10, 500]),
        "context": torch.randn(2, 3, 4) if conditioned else None,
        "class_labels": torch.tensor([0, 2]),
    }
    if kind == "controlnet":
        inputs.update(controlnet_cond=torch.randn(2, 1, *size), conditioning_scale=1.0)
    with torch.no_grad():
        outputs = _flat(model(**inputs))
    return model, inputs, outputs


def _flat(output):
    if isinstance(output, tuple):  # ControlNet: (down-block residuals, mid-block residual)
        return [*output[0], output[1]]
    return [output]


def _relative_error(model, inputs, reference):
    with torch.no_grad():
        outputs = _flat(model.eval()(**inputs))
    return max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(outputs, reference, strict=True))


def _core(kind, spatial_dims, conditioned, layout):
    core_class = ControlNet if kind == "controlnet" else DiffusionModelUNet
    return core_class(channels=(8, 16), **_arguments(spatial_dims, conditioned, kind == "controlnet"), **layout)


CONVERTERS = {"unet": convert_diffusion_unet_state_dict, "controlnet": convert_controlnet_state_dict}


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("conditioned", [False, True], ids=["self_attention", "cross_attention"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", ["unet", "controlnet"])
def test_converted_checkpoint_reproduces_the_legacy_outputs(kind, spatial_dims, conditioned, layout):
    legacy, inputs, reference = _legacy(kind, spatial_dims, conditioned)
    model = _core(kind, spatial_dims, conditioned, layout)
    if conditioned and not layout["include_fc"]:
        # the legacy transformer blocks apply attn1.to_out; MONAI's include_fc=False has nowhere to put it
        with pytest.raises(LegacyCheckpointError, match=r"(?s)unexpected keys.*attn1\.out_proj.*include_fc=True"):
            CONVERTERS[kind](legacy.state_dict(), model)
        return
    model.load_state_dict(CONVERTERS[kind](legacy.state_dict(), model))
    assert _relative_error(model, inputs, reference) <= TOLERANCE


def _monai_loaded_error(kind, spatial_dims, conditioned, layout):
    legacy, inputs, reference = _legacy(kind, spatial_dims, conditioned)
    model = _core(kind, spatial_dims, conditioned, layout)
    try:
        model.load_old_state_dict(copy.deepcopy(legacy.state_dict()))  # it pops what it uses
    except KeyError:
        return float("inf")
    return _relative_error(model, inputs, reference)


def test_monai_core_unet_loader_is_wrong_in_three_of_four_layouts_where_ours_is_exact():
    errors = {
        name: _monai_loaded_error("unet", 2, False, layout) for name, layout in zip(LAYOUT_IDS, LAYOUTS, strict=True)
    }
    wrong = sorted(name for name, error in errors.items() if error > 1e-2)
    assert wrong == ["fc=False-combined=True", "fc=True-combined=False", "fc=True-combined=True"], errors
    assert errors["fc=False-combined=False"] <= TOLERANCE


def test_monai_core_controlnet_loader_raises_or_is_wrong_in_every_self_attention_layout():
    for layout in LAYOUTS:
        assert _monai_loaded_error("controlnet", 2, False, layout) > 1e-2, layout


def test_the_callers_checkpoint_is_never_modified(tmp_path):
    legacy, _, _ = _legacy("unet", 2, False)
    old = {key: value.clone() for key, value in legacy.state_dict().items()}
    before = {key: value.clone() for key, value in old.items()}
    convert_diffusion_unet_state_dict(old, _core("unet", 2, False, LAYOUTS[1]))
    assert list(old) == list(before) and all(torch.equal(old[key], before[key]) for key in before)
    path = tmp_path / "legacy.pt"
    torch.save(old, path)
    raw = path.read_bytes()
    convert_diffusion_unet_state_dict(path, _core("unet", 2, False, LAYOUTS[0]))
    assert path.read_bytes() == raw


@pytest.mark.parametrize("wrap", ["state_dict", "module_prefix", "file"])
def test_wrappers_prefixes_and_files_are_accepted(wrap, tmp_path):
    legacy, inputs, reference = _legacy("controlnet", 2, True)
    state = legacy.state_dict()
    if wrap == "state_dict":
        old = {"state_dict": state, "epoch": torch.tensor(3)}
    elif wrap == "module_prefix":
        old = {f"module.{key}": value for key, value in state.items()}
    else:
        old = tmp_path / "ckpt.pt"
        torch.save({"model": state}, old)
    model = _core("controlnet", 2, True, LAYOUTS[0])
    model.load_state_dict(convert_controlnet_state_dict(old, model))
    assert _relative_error(model, inputs, reference) <= TOLERANCE


def test_a_file_with_pickled_objects_is_refused_unread(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "optimizer": functools.partial(print, "ran")}, path)
    with pytest.raises(LegacyCheckpointError, match="refused to load, it holds pickled Python objects"):
        convert_diffusion_unet_state_dict(path, _core("unet", 2, False, LAYOUTS[0]))


def test_every_problem_is_named_in_one_error():
    legacy, _, _ = _legacy("unet", 2, False)
    old = dict(legacy.state_dict())
    del old["time_embed.0.weight"]
    old["stray.weight"] = torch.zeros(1)
    model = DiffusionModelUNet(channels=(8, 32), **_arguments(2, False))  # wider second level
    with pytest.raises(LegacyCheckpointError) as raised:
        convert_diffusion_unet_state_dict(old, model, name="lab_unet.pt")
    message = str(raised.value)
    assert message.startswith("lab_unet.pt does not fit the model:")
    assert "missing keys (1): time_embed.0.weight" in message
    assert "unexpected keys (1): stray.weight" in message
    assert "mis-shaped keys" in message and "middle_block.attention.attn.to_q.weight: checkpoint (16, 16)" in message


def _run_cli(command, *args):
    done = subprocess.run(
        [sys.executable, "-m", "monai_ext", command, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unet", "controlnet"])
def test_command_line_has_one_shape_for_every_model(kind, tmp_path):
    legacy, inputs, reference = _legacy(kind, 2, True)
    torch.save({"state_dict": legacy.state_dict()}, tmp_path / "old.pt")
    target = "monai.networks.nets." + ("ControlNet" if kind == "controlnet" else "DiffusionModelUNet")
    arguments = {"_target_": target, "num_channels": [8, 16], **_arguments(2, True, kind == "controlnet")}
    arguments["use_combined_linear"] = True
    (tmp_path / "net.json").write_text(json.dumps(arguments))
    command = "convert_legacy_controlnet" if kind == "controlnet" else "convert_legacy_diffusion_unet"
    report = _run_cli(
        command, "--src", tmp_path / "old.pt", "--dst", tmp_path / "new.pt", "--config", tmp_path / "net.json"
    )
    assert "source format: MONAI Generative Models (legacy)" in report and "use_combined_linear=True" in report
    verify_sha256(tmp_path / "new.pt")
    model = _core(kind, 2, True, {"include_fc": True, "use_combined_linear": True})
    model.load_state_dict(torch.load(tmp_path / "new.pt", weights_only=True))
    assert _relative_error(model, inputs, reference) <= TOLERANCE


@pytest.mark.parametrize("conditioned", [False, True], ids=["self_attention", "cross_attention"])
def test_patch_attention_keeps_the_converted_unet_on_the_legacy_outputs(conditioned):
    from monai.networks.blocks import SABlock as MonaiSABlock

    from monai_ext.networks import patch_attention

    legacy, inputs, reference = _legacy("unet", 3, conditioned)
    model = _core("unet", 3, conditioned, LAYOUTS[1])
    model.load_state_dict(convert_diffusion_unet_state_dict(legacy.state_dict(), model))
    patched = patch_attention(model)
    assert not any(type(module) is MonaiSABlock for module in patched.modules())
    assert _relative_error(patched, inputs, reference) <= TOLERANCE
