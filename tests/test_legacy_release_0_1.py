"""Checkpoints with MONAI Generative Models 0.1.0's semantics convert exactly with ``legacy_version="0.1.0"``.

0.1.0 is not on PyPI; the reference is 0.2.3's own classes made to compute what 0.1.0 did (proj_attn applied,
cross-attention unscaled; ``legacy_bundles.as_release_0_1``), saved under 0.1.0's key names.
"""

import pytest
import torch
from legacy_bundles import CONDITIONED_UNET, LDM_AUTOENCODER, SELF_ATTENTION_UNET, legacy_ldm_models, release_0_1_state
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from monai_ext.legacy import LegacyCheckpointError, convert_autoencoderkl_state_dict, convert_diffusion_unet_state_dict
from monai_ext.legacy.release_0_1 import is_release_0_1_checkpoint


def _core(arguments):
    return {("channels" if k == "num_channels" else k): v for k, v in arguments.items()}


@pytest.fixture(scope="module")
def legacy_0_1():
    return legacy_ldm_models(conditioned=True, release_0_1=True)


def _unet_inputs(conditioned=True):
    torch.manual_seed(5)
    return torch.randn(2, 3, 8, 8, 8), torch.tensor([10, 700]), torch.randn(2, 1, 4) if conditioned else None


@pytest.mark.parametrize("conditioned", [True, False], ids=["cross-attention", "self-attention"])
def test_release_0_1_unet_converts_exactly(conditioned):
    _, legacy_unet = legacy_ldm_models(conditioned, release_0_1=True)
    saved = release_0_1_state(legacy_unet)
    assert is_release_0_1_checkpoint(saved)
    zero_one_names = (".ff.net.0.proj.", ".ff.net.2.") if conditioned else (".query.", ".key.", ".value.")
    assert all(any(name in key for key in saved) for name in zero_one_names)
    x, t, context = _unet_inputs(conditioned)
    with torch.no_grad():
        expected = legacy_unet(x, timesteps=t, context=context)
    arguments = _core(CONDITIONED_UNET if conditioned else SELF_ATTENTION_UNET)
    for layout in ({}, {"use_combined_linear": True}):
        unet = DiffusionModelUNet(**arguments, **layout).eval()
        unet.load_state_dict(convert_diffusion_unet_state_dict(saved, unet, legacy_version="0.1.0"))
        with torch.no_grad():
            found = unet(x, timesteps=t, context=context)
        assert (found - expected).abs().max() <= 1e-5 * expected.abs().max(), layout


@pytest.mark.parametrize("conditioned", [True, False], ids=["cross-attention", "self-attention"])
def test_release_0_1_semantics_differ_from_0_2(conditioned):
    """The same weights read as 0.2.x give another output: the version decides what the weights compute."""
    _, legacy_unet = legacy_ldm_models(conditioned, release_0_1=True)
    x, t, context = _unet_inputs(conditioned)
    with torch.no_grad():
        expected = legacy_unet(x, timesteps=t, context=context)
    unet = DiffusionModelUNet(**_core(CONDITIONED_UNET if conditioned else SELF_ATTENTION_UNET)).eval()
    as_0_2 = {k.replace(".query.", ".to_q.").replace(".key.", ".to_k.").replace(".value.", ".to_v."): v
              for k, v in release_0_1_state(legacy_unet).items()}  # fmt: skip
    as_0_2 = {
        k.replace(".ff.net.0.proj.", ".ff.linear1.").replace(".ff.net.2.", ".ff.linear2."): v for k, v in as_0_2.items()
    }
    unet.load_state_dict(convert_diffusion_unet_state_dict(as_0_2, unet))
    with torch.no_grad():
        found = unet(x, timesteps=t, context=context)
    assert (found - expected).abs().max() > 1e-2 * expected.abs().max()
    # read as 0.2.x, 0.1.0's key names do not fit at all
    with pytest.raises(LegacyCheckpointError, match="missing keys"):
        convert_diffusion_unet_state_dict(release_0_1_state(legacy_unet), unet)


def test_release_0_1_autoencoder_attention_converts_exactly(legacy_0_1):
    legacy_autoencoder, _ = legacy_0_1
    saved = release_0_1_state(legacy_autoencoder)
    assert any(key.endswith(".q.conv.weight") and saved[key].ndim == 5 for key in saved)
    torch.manual_seed(6)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = legacy_autoencoder.decode(legacy_autoencoder.encode(x)[0])
    autoencoder = AutoencoderKL(**_core(LDM_AUTOENCODER)).eval()
    autoencoder.load_state_dict(convert_autoencoderkl_state_dict(saved, autoencoder, legacy_version="0.1.0"))
    with torch.no_grad():
        found = autoencoder.decode(autoencoder.encode(x)[0])
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_converted_checkpoint_passes_through_a_0_1_load_unchanged(legacy_0_1):
    """A migrated config loads through the 0.1.0 converter; the file it loads is already in MONAI's format."""
    _, legacy_unet = legacy_0_1
    unet = DiffusionModelUNet(**_core(CONDITIONED_UNET)).eval()
    converted = convert_diffusion_unet_state_dict(release_0_1_state(legacy_unet), unet, legacy_version="0.1.0")
    again = convert_diffusion_unet_state_dict(converted, unet, legacy_version="0.1.0")
    assert again.keys() == converted.keys()
    assert all(torch.equal(again[key], converted[key]) for key in converted)


def test_a_0_2_unet_with_spatial_transformers_is_not_taken_for_0_1():
    """``proj_out.conv`` names the spatial transformers' output in every release; only 0.1.0 had ``q.conv``."""
    import generative.networks.nets as legacy_nets

    state = legacy_nets.DiffusionModelUNet(**CONDITIONED_UNET).state_dict()
    assert any(key.endswith("proj_out.conv.weight") for key in state)
    assert not is_release_0_1_checkpoint(state)


def test_a_legacy_version_that_is_not_a_version_is_refused(legacy_0_1):
    _, legacy_unet = legacy_0_1
    unet = DiffusionModelUNet(**_core(CONDITIONED_UNET))
    with pytest.raises(ValueError, match="'zero.one' is not a version number"):
        convert_diffusion_unet_state_dict(legacy_unet.state_dict(), unet, legacy_version="zero.one")
