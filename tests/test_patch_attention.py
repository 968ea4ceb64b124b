"""monai_ext.networks.patch_attention on MONAI networks: every SABlock replaced, eval outputs unchanged."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.blocks import SABlock as MonaiSABlock
from monai.networks.blocks import TransformerBlock
from monai.networks.nets import UNETR, AutoencoderKL, DiffusionModelUNet, ViT
from torch import nn

import monai_ext
from monai_ext.networks import patch_attention
from monai_ext.networks.blocks import SABlock

TOL = 1e-5


def _randomise(module: nn.Module) -> None:
    # MONAI zero-initialises several output layers (e.g. in DiffusionModelUNet), which would hide any difference
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.1)


def _count(module: nn.Module, cls: type) -> int:
    return sum(type(m) is cls for m in module.modules())


def _check_patched(net: nn.Module, run) -> nn.Module:
    _randomise(net)
    net.eval()
    num_blocks = _count(net, MonaiSABlock)
    assert num_blocks > 0
    with torch.no_grad():
        expected = run(net)
    assert patch_attention(net) is net
    assert _count(net, MonaiSABlock) == 0
    assert _count(net, SABlock) == num_blocks
    with torch.no_grad():
        assert (run(net) - expected).abs().max().item() < TOL
    return net


def test_vit():
    net = ViT(1, (16, 16, 16), (8, 8, 8), hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 1, 16, 16, 16)
    _check_patched(net, lambda n: n(x)[0])
    assert torch.equal(torch.jit.script(net)(x)[0], net(x)[0])


def test_unetr():
    net = UNETR(1, 2, (16, 16, 16), feature_size=8, hidden_size=48, mlp_dim=64, num_heads=4)
    x = torch.randn(1, 1, 16, 16, 16)
    _check_patched(net, lambda n: n(x))


def test_autoencoderkl():
    net = AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(8, 16),
        latent_channels=2,
        num_res_blocks=(1, 1),
        attention_levels=(False, True),
        norm_num_groups=4,
    )
    x = torch.randn(1, 1, 16, 16, 16)
    # forward samples the latent; reconstruct decodes its mean, so it is deterministic
    _check_patched(net, lambda n: n.reconstruct(x))


def test_diffusion_model_unet():
    net = DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 16),
        attention_levels=(False, True),
        num_res_blocks=1,
        norm_num_groups=4,
        num_head_channels=8,
    )
    x, timesteps = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
    _check_patched(net, lambda n: n(x, timesteps=timesteps))


def test_configuration_mode_dtype_and_frozen_parameters_carry_over():
    block = MonaiSABlock(
        32, 4, dropout_rate=0.1, qkv_bias=True, dim_head=6, hidden_input_size=20, use_combined_linear=False
    ).double()
    block.to_k.weight.requires_grad_(False)
    net = nn.Sequential(nn.Linear(20, 20), block).double().train()
    patch_attention(net)
    ours = net[1]
    assert isinstance(ours, SABlock) and ours.training
    assert (ours.num_heads, ours.dim_head, ours.hidden_input_size, ours.dropout_rate) == (4, 6, 20, 0.1)
    assert not ours.use_combined_linear and ours.to_q.bias is not None
    assert ours.to_q.weight.dtype == torch.float64
    assert not ours.to_k.weight.requires_grad and ours.to_v.weight.requires_grad
    assert torch.equal(ours.to_k.weight, block.to_k.weight)


def test_shared_block_stays_shared_and_single_block_is_converted():
    shared = MonaiSABlock(16, 2)
    net = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    patch_attention(net)
    assert isinstance(net["a"], SABlock) and net["a"] is net["b"][0]
    single = MonaiSABlock(16, 2, causal=True, sequence_length=8, rel_pos_embedding="decomposed", input_size=(2, 4))
    _randomise(single)
    converted = patch_attention(single.eval())
    assert isinstance(converted, SABlock) and converted.causal and converted.rel_positional_embedding is not None
    x = torch.randn(2, 8, 16)
    assert (converted(x) - single(x)).abs().max().item() < TOL


def test_subclasses_are_left_alone():
    class Custom(MonaiSABlock):
        pass

    net = nn.Sequential(Custom(16, 2))
    patch_attention(net)
    assert type(net[0]) is Custom


def test_refused_configuration_names_the_block():
    # MONAI accepts include_fc=False with an attention width that differs from the input width; ours refuses it
    net = nn.Sequential(TransformerBlock(32, 64, 4), nn.Sequential(MonaiSABlock(32, 4, dim_head=6, include_fc=False)))
    with pytest.raises(ValueError, match=r"SABlock at '1\.0'.*include_fc=False"):
        patch_attention(net)


def test_bundle_config_expression():
    config = ConfigParser(
        {
            "imports": ["$import monai_ext"],
            "network_def": {
                "_target_": "monai.networks.nets.ViT",
                "in_channels": 1,
                "img_size": [16, 16, 16],
                "patch_size": [8, 8, 8],
                "hidden_size": 32,
                "mlp_dim": 64,
                "num_layers": 1,
                "num_heads": 4,
            },
            "network": "$monai_ext.networks.patch_attention(@network_def)",
        }
    )
    network = config.get_parsed_content("network")
    assert monai_ext.networks.patch_attention is patch_attention
    assert _count(network, SABlock) == 1 and _count(network, MonaiSABlock) == 0
