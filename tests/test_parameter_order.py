"""Parameters registered in MONAI 1.6.1's order, so optimizer checkpoints resume across MONAI's classes and ours.

``Optimizer.load_state_dict`` pairs saved moments with parameters by position. MONAI registers ``out_proj`` before
the input projections; a block that registers it after still loads MONAI's weights (keys match) but pairs Adam's
moments with the wrong parameters, or crashes on a shape mismatch.
"""

import copy

import pytest
import torch
from monai.networks.blocks import SABlock as MonaiSABlock
from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL
from monai.networks.nets import DiffusionModelUNet, ViT

from monai_ext.networks.blocks import SABlock
from monai_ext.networks.nets import AutoencoderKL
from monai_ext.networks.patching import patch_attention

SA_LAYOUTS = {
    "separate": {},
    "combined": {"use_combined_linear": True},
    "no_fc": {"include_fc": False},
    "no_fc_combined": {"include_fc": False, "use_combined_linear": True},
    "rel_pos": {"rel_pos_embedding": "decomposed", "input_size": (2, 4)},
    "causal": {"causal": True, "sequence_length": 8},
    "dim_head": {"dim_head": 4, "hidden_input_size": 12},
}
AE_ARGS = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (8, 16), "latent_channels": 2,
    "num_res_blocks": 1, "norm_num_groups": 4, "attention_levels": (False, True), "with_encoder_nonlocal_attn": True,
}  # fmt: skip


def _sablocks(layout):
    return MonaiSABlock(16, 2, **SA_LAYOUTS[layout]), SABlock(16, 2, **SA_LAYOUTS[layout])


def _autoencoders(combined):
    args = {**AE_ARGS, "use_combined_linear": combined}
    return MonaiAutoencoderKL(**args), AutoencoderKL(**args)


def _patched(name):
    torch.manual_seed(0)
    if name == "vit":
        build = lambda: ViT(1, (16, 16), (4, 4), hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4, spatial_dims=2)  # noqa: E731
    elif name == "autoencoderkl":
        build = lambda: MonaiAutoencoderKL(**AE_ARGS)  # noqa: E731
    else:
        build = lambda: DiffusionModelUNet(  # noqa: E731
            spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16), attention_levels=(False, True),
            num_res_blocks=1, num_head_channels=8, norm_num_groups=8, with_conditioning=True, cross_attention_dim=4,
        )  # fmt: skip
    monai_model = build()
    ours = build()
    ours.load_state_dict(monai_model.state_dict())
    return monai_model, patch_attention(ours)


PAIRS = {
    **{f"sablock_{layout}": (lambda layout=layout: _sablocks(layout)) for layout in SA_LAYOUTS},
    "autoencoderkl_separate": lambda: _autoencoders(False),
    "autoencoderkl_combined": lambda: _autoencoders(True),
    **{f"patched_{name}": (lambda name=name: _patched(name)) for name in ("vit", "autoencoderkl", "diffusion_unet")},
}


def _names(model):
    return [name for name, _ in model.named_parameters()]


@pytest.mark.parametrize("pair", PAIRS)
def test_parameter_and_state_dict_order_equals_monais(pair):
    monai_model, ours = PAIRS[pair]()
    assert _names(ours) == _names(monai_model)
    # Checkpoints hold parameters and persistent buffers in registration order. MONAI's causal SABlock alone keeps a
    # causal_mask buffer; ours computes the mask (no buffer, any length). Non-persistent constants never reach a
    # checkpoint (our AutoencoderKL's upsampling keeps one).
    monai_keys = [key for key in monai_model.state_dict() if not key.endswith("causal_mask")]
    assert list(ours.state_dict()) == monai_keys


def _loss(model, x):
    if isinstance(model, DiffusionModelUNet):
        out = model(x, timesteps=torch.tensor([3, 7]), context=torch.ones(2, 1, 4))
    else:
        out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.square().mean()


def _input(model):
    if isinstance(model, (SABlock, MonaiSABlock)):
        return torch.randn(2, 8, model.hidden_input_size)
    return torch.randn(2, 1, 16, 16)


def _steps(model, optimizer, x, n):
    for _ in range(n):
        optimizer.zero_grad()
        _loss(model, x).backward()
        optimizer.step()


def _by_name(state, source_names, target_names):
    """The optimizer state of ``source_names``' parameters re-indexed for ``target_names``: the correct pairing."""
    index = {name: i for i, name in enumerate(source_names)}
    moments = {j: state["state"][index[name]] for j, name in enumerate(target_names) if index[name] in state["state"]}
    return {"state": moments, "param_groups": state["param_groups"]}


@pytest.mark.parametrize("direction", ["monai_to_ours", "ours_to_monai"])
@pytest.mark.parametrize("pair", ["sablock_separate", "sablock_combined", "autoencoderkl_separate", "patched_vit"])
def test_adam_checkpoint_resumes_bitwise_across_monai_and_ours(pair, direction):
    monai_model, ours = PAIRS[pair]()
    source, target = (monai_model, ours) if direction == "monai_to_ours" else (ours, monai_model)
    torch.manual_seed(1)
    x = _input(source)
    optimizer = torch.optim.Adam(source.parameters(), lr=1e-2)
    _steps(source, optimizer, x, 2)
    saved_model, saved_optimizer = source.state_dict(), optimizer.state_dict()

    resumed = {}
    for pairing in ("position", "name"):
        target.load_state_dict(saved_model)
        target_optimizer = torch.optim.Adam(target.parameters(), lr=1e-2)
        state = copy.deepcopy(saved_optimizer)  # Adam updates the loaded moments in place
        if pairing == "name":
            state = _by_name(saved_optimizer, _names(source), _names(target))
        target_optimizer.load_state_dict(state)  # torch pairs by position
        torch.manual_seed(2)  # the autoencoder samples its latent
        _steps(target, target_optimizer, x, 3)
        resumed[pairing] = {name: p.detach().clone() for name, p in target.named_parameters()}
    for name, value in resumed["name"].items():
        assert torch.equal(resumed["position"][name], value), name
