"""Loading MONAI Generative Models AutoencoderKL checkpoints: ours reproduces the legacy model, MONAI core does not."""

import itertools
import json
import logging
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from generative.networks.nets import AutoencoderKL as LegacyAutoencoderKL
from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL

from monai_ext.legacy import LegacyCheckpointError, convert_autoencoderkl_state_dict
from monai_ext.networks.nets import AutoencoderKL
from monai_ext.sharing.checkpoint import verify_sha256

LAYOUTS = list(itertools.product([True, False], [True, False]))  # include_fc x use_combined_linear
ARCHITECTURE = {
    "in_channels": 1,
    "out_channels": 1,
    "num_res_blocks": 1,
    "attention_levels": (False, True),
    "latent_channels": 3,
    "norm_num_groups": 4,
    "with_encoder_nonlocal_attn": True,
    "with_decoder_nonlocal_attn": True,
}
SIZE = {2: 32, 3: 16}


def legacy_model(spatial_dims: int, **overrides) -> LegacyAutoencoderKL:
    """A seeded legacy model whose norms have random affine weights, so that no output is trivially reproduced."""
    torch.manual_seed(spatial_dims)
    model = LegacyAutoencoderKL(spatial_dims=spatial_dims, num_channels=(4, 8), **{**ARCHITECTURE, **overrides})
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.5)
            torch.nn.init.normal_(module.bias, 0.0, 0.5)
    return model.eval()


def new_model(cls, spatial_dims: int, include_fc: bool = True, use_combined_linear: bool = False, **overrides):
    args = {**ARCHITECTURE, **overrides}
    return cls(
        spatial_dims=spatial_dims,
        channels=(4, 8),
        include_fc=include_fc,
        use_combined_linear=use_combined_linear,
        **args,
    ).eval()


def image(spatial_dims: int) -> torch.Tensor:
    return torch.randn(1, 1, *[SIZE[spatial_dims]] * spatial_dims)


def outputs(model, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        z_mu, z_sigma = model.encode(x)
        return {"z_mu": z_mu, "z_sigma": z_sigma, "decode": model.decode(z), "reconstruct": model.reconstruct(x)}


@dataclass
class Reference:
    """A model with an input image, a latent and its outputs on them, computed once."""

    model: torch.nn.Module
    spatial_dims: int
    x: torch.Tensor
    z: torch.Tensor
    outputs: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: torch.nn.Module, spatial_dims: int) -> "Reference":
        x = image(spatial_dims)
        with torch.no_grad():
            z = torch.randn_like(model.encode(x)[0])
        return cls(model, spatial_dims, x, z, outputs(model, x, z))


def max_error(model, reference: Reference) -> dict[str, float]:
    """Max abs error of every output of ``model`` against ``reference``, relative to the largest reference value."""
    found = outputs(model, reference.x, reference.z)
    return {name: ((found[name] - ref).abs().max() / ref.abs().max()).item() for name, ref in reference.outputs.items()}


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def legacy(request) -> Reference:
    return Reference.of(legacy_model(request.param), request.param)


@pytest.fixture(scope="module")
def legacy_2d() -> Reference:
    return Reference.of(legacy_model(2), 2)


@pytest.mark.parametrize("include_fc,use_combined_linear", LAYOUTS)
def test_converted_checkpoint_reproduces_legacy_outputs_and_monai_core_does_not(
    legacy, include_fc, use_combined_linear
):
    spatial_dims = legacy.spatial_dims
    old = legacy.model.state_dict()
    snapshot = {key: value.clone() for key, value in old.items()}

    ours = new_model(AutoencoderKL, spatial_dims, include_fc, use_combined_linear)
    ours.load_state_dict(convert_autoencoderkl_state_dict(old, ours))
    errors = max_error(ours, legacy)
    assert max(errors.values()) <= 1e-5, errors
    assert list(old) == list(snapshot) and all(torch.equal(old[key], snapshot[key]) for key in old)

    monai = new_model(MonaiAutoencoderKL, spatial_dims, include_fc, use_combined_linear)
    monai_input = dict(old)
    monai.load_old_state_dict(monai_input)  # MONAI pops what it uses out of the dict it is given
    assert len(monai_input) < len(old)
    monai_errors = max_error(monai, legacy)
    if include_fc or use_combined_linear:
        # proj_attn applied as out_proj, and/or the fused qkv left at its random initialisation
        assert monai_errors["reconstruct"] > 1e-2, monai_errors
    else:
        assert max(monai_errors.values()) <= 1e-5, monai_errors


@pytest.mark.parametrize("use_combined_linear", [False, True])
def test_out_proj_is_identity_and_proj_attn_is_dropped(legacy, use_combined_linear):
    model = new_model(AutoencoderKL, legacy.spatial_dims, True, use_combined_linear)
    converted = convert_autoencoderkl_state_dict(legacy.model.state_dict(), model)
    assert list(converted) == list(model.state_dict())
    out_proj = [key for key in converted if key.endswith("attn.out_proj.weight")]
    assert len(out_proj) == 4
    for key in out_proj:
        assert torch.equal(converted[key], torch.eye(8))
        assert not converted[key.replace("weight", "bias")].any()
    assert not any("proj_attn" in key for key in converted)


def test_proj_attn_applied_reproduces_code_that_applied_it(legacy):
    spatial_dims, old = legacy.spatial_dims, legacy.model.state_dict()

    def apply_proj_attn(block, inputs, output):
        # what a forward that DID apply proj_attn returns: residual + proj_attn(attention), on the channel axis
        x = inputs[0]
        attention = (output - x).movedim(1, -1)
        return x + block.proj_attn(attention).movedim(-1, 1)

    hooks = [
        module.register_forward_hook(apply_proj_attn)
        for module in legacy.model.modules()
        if hasattr(module, "proj_attn")
    ]
    try:
        applied = Reference.of(legacy.model, spatial_dims)
    finally:
        for hook in hooks:
            hook.remove()
    for use_combined_linear in (False, True):
        model = new_model(AutoencoderKL, spatial_dims, True, use_combined_linear)
        model.load_old_state_dict(old, proj_attn_applied=True)
        assert max(max_error(model, applied).values()) <= 1e-5
        model.load_old_state_dict(old)
        assert max_error(model, applied)["reconstruct"] > 1e-3

    without_fc = new_model(AutoencoderKL, spatial_dims, include_fc=False)
    with pytest.raises(LegacyCheckpointError, match="(?s)unexpected keys.*attn.out_proj.weight.*include_fc=True"):
        convert_autoencoderkl_state_dict(old, without_fc, proj_attn_applied=True)


@pytest.mark.parametrize("source_layout,target_layout", list(itertools.permutations(LAYOUTS, 2)))
def test_current_format_converts_between_layouts(source_layout, target_layout):
    source = new_model(AutoencoderKL, 2, *source_layout)
    target = new_model(AutoencoderKL, 2, *target_layout)
    source_fc, target_fc = source_layout[0], target_layout[0]
    if source_fc and not target_fc:
        # a trained out_proj cannot be dropped; an identity one (as written by the legacy conversion) can
        with pytest.raises(LegacyCheckpointError, match="(?s)unexpected keys.*out_proj.*include_fc=True"):
            convert_autoencoderkl_state_dict(source.state_dict(), target)
        for module in source.modules():
            if hasattr(module, "out_proj") and isinstance(module.out_proj, torch.nn.Linear):
                torch.nn.init.eye_(module.out_proj.weight)
                torch.nn.init.zeros_(module.out_proj.bias)
    target.load_state_dict(convert_autoencoderkl_state_dict(source.state_dict(), target))
    assert max(max_error(target, Reference.of(source, 2)).values()) <= 1e-5


def test_same_layout_checkpoint_passes_through_unchanged():
    model = new_model(AutoencoderKL, 2)
    state = model.state_dict()
    converted = convert_autoencoderkl_state_dict(state, model)
    assert list(converted) == list(state)
    assert all(converted[key] is state[key] for key in state)


def test_missing_key_is_an_error_while_monai_core_loads_a_random_conv(legacy_2d):
    old = legacy_2d.model.state_dict()
    del old["encoder.blocks.0.conv.weight"]

    monai = new_model(MonaiAutoencoderKL, 2, include_fc=False)
    monai.load_old_state_dict(dict(old))  # no error: the initial convolution keeps its random weights
    assert max_error(monai, legacy_2d)["z_mu"] > 1e-2

    with pytest.raises(LegacyCheckpointError, match=r"missing keys \(1\): encoder\.blocks\.0\.conv\.weight"):
        convert_autoencoderkl_state_dict(old, new_model(AutoencoderKL, 2))


def test_extra_key_is_an_error():
    old = legacy_model(2).state_dict()
    old["encoder.blocks.1.extra.weight"] = torch.zeros(3)
    with pytest.raises(LegacyCheckpointError, match=r"unexpected keys \(1\): encoder\.blocks\.1\.extra\.weight"):
        convert_autoencoderkl_state_dict(old, new_model(AutoencoderKL, 2))


def test_wrong_shape_is_an_error_naming_both_shapes():
    old = legacy_model(2).state_dict()
    old["decoder.blocks.0.conv.weight"] = torch.zeros(8, 3, 1, 1)
    with pytest.raises(
        LegacyCheckpointError,
        match=r"mis-shaped keys \(1\): decoder\.blocks\.0\.conv\.weight: "
        r"checkpoint \(8, 3, 1, 1\), model \(8, 3, 3, 3\)",
    ):
        convert_autoencoderkl_state_dict(old, new_model(AutoencoderKL, 2))


def test_every_problem_is_reported_in_one_error():
    old = legacy_model(2).state_dict()
    del old["encoder.blocks.0.conv.weight"]
    old["extra"] = torch.zeros(1)
    old["decoder.blocks.0.conv.bias"] = torch.zeros(5)
    with pytest.raises(LegacyCheckpointError) as error:
        convert_autoencoderkl_state_dict(old, new_model(AutoencoderKL, 2, use_combined_linear=True), name="old.pt")
    message = str(error.value)
    assert message.startswith("old.pt does not fit the model")
    for expected in ("encoder.blocks.0.conv.weight", "unexpected keys (1): extra", "decoder.blocks.0.conv.bias"):
        assert expected in message


def test_wrong_architecture_names_the_attention_keys():
    old = legacy_model(2).state_dict()
    model = new_model(AutoencoderKL, 2, attention_levels=(False, False))
    with pytest.raises(LegacyCheckpointError, match=r"(?s)unexpected keys.*encoder\.blocks\.4\.attn\.to_q\.weight"):
        convert_autoencoderkl_state_dict(old, model)


def test_legacy_convtranspose_checkpoint_is_refused_with_the_reason():
    old = legacy_model(2, use_convtranspose=True).state_dict()
    with pytest.raises(LegacyCheckpointError, match="use_convtranspose=True.*cannot be converted"):
        convert_autoencoderkl_state_dict(old, new_model(AutoencoderKL, 2, use_convtranspose=True))


@pytest.mark.parametrize("wrap", ["state_dict", "module", "both"])
def test_wrapped_and_prefixed_checkpoints_load_while_monai_core_fails(wrap, tmp_path, legacy_2d):
    old = legacy_2d.model.state_dict()
    if wrap in ("module", "both"):
        old = {f"module.{key}": value for key, value in old.items()}
    if wrap in ("state_dict", "both"):
        old = {"state_dict": old, "epoch": torch.tensor(3)}

    with pytest.raises(KeyError):
        new_model(MonaiAutoencoderKL, 2, include_fc=False).load_old_state_dict(dict(old))

    path = tmp_path / "old.pt"
    torch.save(old, path)
    model = new_model(AutoencoderKL, 2)
    model.load_old_state_dict(old)
    assert max(max_error(model, legacy_2d).values()) <= 1e-5
    for source in (path, str(path)):
        assert list(convert_autoencoderkl_state_dict(source, model)) == list(model.state_dict())


def test_logs_instead_of_printing(capsys, caplog):
    model = new_model(AutoencoderKL, 2)
    with caplog.at_level(logging.INFO, logger="monai_ext.legacy.autoencoderkl"):
        model.load_old_state_dict(legacy_model(2).state_dict(), verbose=True)
    assert capsys.readouterr().out == ""
    messages = "\n".join(caplog.messages)
    assert "encoder.blocks.4.proj_attn.weight" in messages  # verbose: every dropped key
    assert "4 out_proj set to identity, 8 unused keys dropped" in messages


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai_ext", "convert_legacy_autoencoderkl", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_command_line_converts_refuses_to_overwrite_and_reports(tmp_path, legacy_2d):
    src, dst, config = tmp_path / "old.pt", tmp_path / "new.pt", tmp_path / "net.json"
    torch.save({"state_dict": legacy_2d.model.state_dict()}, src)
    arguments = {"_target_": "monai_ext.networks.nets.AutoencoderKL", "spatial_dims": 2, "num_channels": [4, 8]}
    config.write_text(json.dumps({**arguments, **ARCHITECTURE, "use_combined_linear": True}))

    result = run_cli("--src", str(src), "--dst", str(dst), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "source format: MONAI Generative Models (legacy)" in result.stdout
    assert "use_combined_linear=True" in result.stdout
    assert "proj_attn dropped (never applied by the legacy forward): yes, in 4 attention blocks" in result.stdout
    model = new_model(AutoencoderKL, 2, use_combined_linear=True)
    model.load_state_dict(torch.load(dst, weights_only=True))
    assert max(max_error(model, legacy_2d).values()) <= 1e-5
    written = dst.read_bytes()

    result = run_cli("--src", str(src), "--dst", str(dst), "--config", str(config))
    assert result.returncode != 0
    assert f"{dst} exists; pass --force" in result.stderr
    assert dst.read_bytes() == written

    config.write_text(json.dumps({**arguments, **ARCHITECTURE, "include_fc": False}))
    result = run_cli("--src", str(src), "--dst", str(dst), "--config", str(config), "--force")
    assert result.returncode == 0, result.stderr
    assert "include_fc=False" in result.stdout
    assert dst.read_bytes() != written
    # no temporary file left; the SHA-256 is recorded, so a bundle's checked loader accepts the file
    assert sorted(path.name for path in tmp_path.iterdir()) == ["net.json", "new.pt", "old.pt", "sha256_manifest.json"]
    verify_sha256(dst)
