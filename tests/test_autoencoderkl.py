"""monai_ext AutoencoderKL vs monai.networks.nets.AutoencoderKL: same layout and outputs, plus what MONAI lacks."""

import itertools

import pytest
import torch
from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL

from monai_ext.networks.blocks.selfattention import SABlock
from monai_ext.networks.nets import AutoencoderKL

LAYOUTS = list(itertools.product([True, False], [True, False]))  # include_fc x use_combined_linear


def tiny_args(spatial_dims: int, **overrides) -> dict:
    args = {
        "spatial_dims": spatial_dims,
        "channels": (4, 8),
        "attention_levels": (False, True),
        "num_res_blocks": 1,
        "norm_num_groups": 4,
        "latent_channels": 3,
    }
    return {**args, **overrides}


def image(spatial_dims: int) -> torch.Tensor:
    return torch.randn(1, 1, *([32] * spatial_dims if spatial_dims == 2 else [16] * spatial_dims))


def close(ours: torch.Tensor, reference: torch.Tensor) -> bool:
    return (ours - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("include_fc,use_combined_linear", LAYOUTS)
@pytest.mark.parametrize("use_convtranspose", [False, True])
def test_same_state_dict_keys_and_shapes_as_monai(spatial_dims, include_fc, use_combined_linear, use_convtranspose):
    args = tiny_args(
        spatial_dims,
        include_fc=include_fc,
        use_combined_linear=use_combined_linear,
        use_convtranspose=use_convtranspose,
    )
    ours = {key: value.shape for key, value in AutoencoderKL(**args).state_dict().items()}
    monai = {key: value.shape for key, value in MonaiAutoencoderKL(**args).state_dict().items()}
    assert ours == monai


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("include_fc,use_combined_linear", LAYOUTS)
def test_same_outputs_as_monai_with_monai_weights(spatial_dims, include_fc, use_combined_linear):
    args = tiny_args(spatial_dims, include_fc=include_fc, use_combined_linear=use_combined_linear)
    monai = MonaiAutoencoderKL(**args).eval()
    ours = AutoencoderKL(**args).eval()
    ours.load_state_dict(monai.state_dict())
    x = image(spatial_dims)
    with torch.no_grad():
        for ours_out, monai_out in zip(ours.encode(x), monai.encode(x), strict=True):
            assert close(ours_out, monai_out)
        z = torch.randn_like(monai.encode(x)[0])
        assert close(ours.decode(z), monai.decode(z))
        assert close(ours.reconstruct(x), monai.reconstruct(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_same_gradients_as_monai_and_inference_leaves_the_input_alone(spatial_dims):
    # the residual blocks compute in place without autograd and call oneDNN directly on CPU; the upsampling
    # convolution runs on the coarse grid: none of it may change outputs or gradients
    args = tiny_args(spatial_dims, num_res_blocks=2)
    monai = MonaiAutoencoderKL(**args).eval()
    ours = AutoencoderKL(**args).eval()
    ours.load_state_dict(monai.state_dict())
    x = image(spatial_dims)
    x_ours, x_monai = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours_out, monai_out = ours.reconstruct(x_ours), monai.reconstruct(x_monai)
    assert close(ours_out, monai_out)
    weights = torch.randn_like(monai_out)
    (ours_out * weights).sum().backward()
    (monai_out * weights).sum().backward()
    assert close(x_ours.grad, x_monai.grad)
    monai_grads = {name: param.grad for name, param in monai.named_parameters()}
    # convolution biases right before a per-channel GroupNorm get zero gradient up to rounding: compare every
    # gradient against the scale of all of them
    scale = max(grad.abs().max().item() for grad in monai_grads.values() if grad is not None)
    for name, param in ours.named_parameters():
        if monai_grads[name] is None:  # the latent's sigma branch is not part of reconstruct
            assert param.grad is None, name
            continue
        torch.testing.assert_close(param.grad, monai_grads[name], atol=1e-5 * scale, rtol=1e-4, msg=name)
    original = x.clone()
    with torch.inference_mode():
        assert close(ours.reconstruct(x), monai.reconstruct(x))
    assert torch.equal(x, original)


def test_attention_uses_monai_ext_sablock():
    model = AutoencoderKL(**tiny_args(3))
    attention = [module for module in model.modules() if isinstance(module, SABlock)]
    # encoder: one per residual block of level 1 plus the non-local one; the decoder mirrors it
    assert len(attention) == 4


def test_training_forward_samples_the_latent_and_eval_forward_is_deterministic():
    args = tiny_args(2)
    monai = MonaiAutoencoderKL(**args)
    ours = AutoencoderKL(**args)
    ours.load_state_dict(monai.state_dict())
    x = image(2)

    torch.manual_seed(1)
    reconstruction, z_mu, z_sigma = ours(x)
    for ours_out, monai_out in zip((z_mu, z_sigma), monai.encode(x), strict=True):
        assert close(ours_out, monai_out)
    torch.manual_seed(1)
    assert torch.equal(reconstruction, ours.decode(ours.sampling(z_mu, z_sigma)))
    assert not torch.allclose(reconstruction, ours.decode(z_mu), atol=1e-3)

    monai.eval()
    ours.eval()
    with torch.no_grad():
        # MONAI samples the latent even in eval mode, so two calls disagree
        assert not torch.equal(monai(x)[0], monai(x)[0])
        first, second = ours(x), ours(x)
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
        assert torch.equal(first[0], ours.reconstruct(x))


def test_sampling_is_reparameterised_noise():
    ours = AutoencoderKL(**tiny_args(2))
    z_mu, z_sigma = torch.full((4096,), 2.0), torch.full((4096,), 0.5)
    torch.manual_seed(3)
    sample = ours.sampling(z_mu, z_sigma)
    torch.manual_seed(3)
    assert torch.equal(sample, z_mu + torch.randn_like(z_sigma) * z_sigma)
    assert abs(sample.mean().item() - 2.0) < 0.05 and abs(sample.std().item() - 0.5) < 0.05


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    plain = AutoencoderKL(**tiny_args(2))
    checkpointed = AutoencoderKL(**tiny_args(2, use_checkpoint=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = image(2)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(5)
        reconstruction, z_mu, z_sigma = model(x)
        (reconstruction.square().mean() + z_mu.mean() + z_sigma.mean()).backward()
        results.append([reconstruction] + [p.grad for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_monai_cannot_be_scripted_with_use_checkpoint():
    # Without attention blocks, torch.utils.checkpoint in encode/decode is MONAI's only obstacle (it is compiled even
    # when use_checkpoint=False); with attention, MONAI's SpatialAttentionBlock fails first.
    no_attention = tiny_args(
        2,
        attention_levels=(False, False),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
        use_checkpoint=True,
    )
    with pytest.raises(torch.jit.frontend.NotSupportedError, match="(?s)Checkpoint a model.*AutoencoderKL.encode"):
        torch.jit.script(MonaiAutoencoderKL(**no_attention))
    with pytest.raises(RuntimeError, match="spatialattention"):
        torch.jit.script(MonaiAutoencoderKL(**tiny_args(2, use_checkpoint=True)))
    scripted = torch.jit.script(AutoencoderKL(**no_attention).eval())
    assert scripted.reconstruct(image(2)).shape == (1, 1, 32, 32)
    assert scripted.decode_stage_2_outputs(scripted.encode_stage_2_inputs(image(2))).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_ours_scripts_and_matches_eager(spatial_dims, use_checkpoint):
    ours = AutoencoderKL(**tiny_args(spatial_dims, use_checkpoint=use_checkpoint)).eval()
    scripted = torch.jit.script(ours)
    x = image(spatial_dims)
    with torch.no_grad():
        for eager_out, scripted_out in zip(ours(x), scripted(x), strict=True):
            assert close(scripted_out, eager_out)
        z = torch.randn_like(ours.encode(x)[0])
        assert close(scripted.decode(z), ours.decode(z))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"channels": (4, 6)}, "multiple of norm_num_groups"),
        ({"attention_levels": (False, True, True)}, "attention_levels"),
        ({"num_res_blocks": (1, 1, 1)}, "num_res_blocks"),
    ],
)
def test_invalid_arguments_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderKL(**tiny_args(2, **overrides))
