"""A legacy latent diffusion pipeline (MONAI Generative 0.2.3), converted with our loaders, sampled by MONAI core.

Autoencoder + diffusion UNet + DDIM scheduler, small, seeded, with every weight moved off its initial value; the
converted pipeline must give the legacy pipeline's sample from the same noise. MONAI core's own
``load_old_state_dict`` on the same checkpoints is shown beside it.
"""

import copy

import pytest
import torch
from generative.networks.nets import AutoencoderKL as LegacyAutoencoderKL
from generative.networks.nets import DiffusionModelUNet as LegacyDiffusionModelUNet
from legacy_generative import legacy_scheduler_and_inferer_modules
from monai.inferers import LatentDiffusionInferer
from monai.networks import schedulers as monai_schedulers
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler

from monai_ext.legacy import convert_autoencoderkl_state_dict, convert_diffusion_unet_state_dict, set_legacy_timesteps

AUTOENCODER = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "latent_channels": 3, "num_res_blocks": 1,
    "norm_num_groups": 8, "attention_levels": (False, True),
}  # fmt: skip
UNET = {
    "spatial_dims": 2, "in_channels": 3, "out_channels": 3, "num_res_blocks": 1, "attention_levels": (False, True),
    "num_head_channels": 8, "norm_num_groups": 8, "with_conditioning": True, "cross_attention_dim": 4,
}  # fmt: skip
SCHEDULER = {"num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}
STEPS = 10
SCALE_FACTOR = 0.8


def _perturbed(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def _sample(inferer_class, scheduler_class, autoencoder, unet, noise, context, legacy_timesteps=False):
    scheduler = scheduler_class(**SCHEDULER)
    if legacy_timesteps:
        set_legacy_timesteps(scheduler, STEPS)
    else:
        scheduler.set_timesteps(num_inference_steps=STEPS)
    inferer = inferer_class(scheduler, scale_factor=SCALE_FACTOR)
    with torch.no_grad():
        return inferer.sample(noise, autoencoder, unet, scheduler, conditioning=context, verbose=False)


@pytest.fixture(scope="module")
def legacy_pipeline():
    schedulers, inferers = legacy_scheduler_and_inferer_modules()
    torch.manual_seed(0)
    autoencoder = _perturbed(LegacyAutoencoderKL(num_channels=(8, 16), **AUTOENCODER), 1)
    unet = _perturbed(LegacyDiffusionModelUNet(num_channels=(8, 16), **UNET), 2)
    noise, context = torch.randn(2, 3, 16, 16), torch.randn(2, 1, 4)
    sample = _sample(inferers.LatentDiffusionInferer, schedulers.DDIMScheduler, autoencoder, unet, noise, context)
    return autoencoder, unet, noise, context, sample


@pytest.mark.parametrize("include_fc", [True, False])
def test_converted_pipeline_gives_the_legacy_sample(legacy_pipeline, include_fc):
    legacy_autoencoder, legacy_unet, noise, context, expected = legacy_pipeline
    autoencoder = AutoencoderKL(channels=(8, 16), include_fc=include_fc, **AUTOENCODER)
    autoencoder.load_state_dict(convert_autoencoderkl_state_dict(legacy_autoencoder.state_dict(), autoencoder))
    unet = DiffusionModelUNet(channels=(8, 16), use_combined_linear=not include_fc, **UNET)
    unet.load_state_dict(convert_diffusion_unet_state_dict(legacy_unet.state_dict(), unet))

    models = (autoencoder.eval(), unet.eval(), noise, context)
    sample = _sample(LatentDiffusionInferer, DDIMScheduler, *models, legacy_timesteps=True)
    assert sample.shape == expected.shape == (2, 1, 32, 32)
    assert (sample - expected).abs().max() <= 1e-4 * expected.abs().max()
    # MONAI 1.6's own DDIM spacing visits other timesteps: another sample from the same weights and noise
    other = _sample(LatentDiffusionInferer, DDIMScheduler, *models)
    assert (other - expected).abs().max() > 1e-2 * expected.abs().max()


def test_monai_core_loaders_change_the_sample(legacy_pipeline):
    legacy_autoencoder, legacy_unet, noise, context, expected = legacy_pipeline
    autoencoder = AutoencoderKL(channels=(8, 16), **AUTOENCODER)
    autoencoder.load_old_state_dict(copy.deepcopy(legacy_autoencoder.state_dict()))
    unet = DiffusionModelUNet(channels=(8, 16), **UNET)
    unet.load_old_state_dict(copy.deepcopy(legacy_unet.state_dict()))
    sample = _sample(LatentDiffusionInferer, DDIMScheduler, autoencoder.eval(), unet.eval(), noise, context, True)
    assert (sample - expected).abs().max() > 1e-2 * expected.abs().max()


def test_legacy_timesteps_equal_the_legacy_schedulers_and_monais_differ():
    schedulers, _ = legacy_scheduler_and_inferer_modules()
    for name, offset in (("DDIMScheduler", 1), ("DDPMScheduler", 0)):
        extra = {"steps_offset": offset} if offset else {}
        legacy = getattr(schedulers, name)(**SCHEDULER, **extra)
        legacy.set_timesteps(STEPS)
        ours = getattr(monai_schedulers, name)(**SCHEDULER, **extra)
        set_legacy_timesteps(ours, STEPS)
        assert torch.equal(ours.timesteps, legacy.timesteps), name
        monais = getattr(monai_schedulers, name)(**SCHEDULER, **extra)
        monais.set_timesteps(STEPS)
        assert not torch.equal(monais.timesteps, legacy.timesteps), name
    with pytest.raises(TypeError, match="DDIMScheduler or DDPMScheduler"):
        set_legacy_timesteps(monai_schedulers.PNDMScheduler(**SCHEDULER), STEPS)


def test_latent_diffusion_training_call_with_a_legacy_scale_factor_matches(legacy_pipeline):
    """The training step of a migrated bundle (``LDMTrainer`` calls the inferer): same prediction as the legacy one."""
    schedulers, inferers = legacy_scheduler_and_inferer_modules()
    legacy_autoencoder, legacy_unet, _, context, _ = legacy_pipeline
    autoencoder = AutoencoderKL(channels=(8, 16), **AUTOENCODER)
    autoencoder.load_state_dict(convert_autoencoderkl_state_dict(legacy_autoencoder.state_dict(), autoencoder))
    unet = DiffusionModelUNet(channels=(8, 16), **UNET)
    unet.load_state_dict(convert_diffusion_unet_state_dict(legacy_unet.state_dict(), unet))
    torch.manual_seed(7)
    images, noise = torch.randn(2, 1, 32, 32), torch.randn(2, 3, 16, 16)
    timesteps = torch.tensor([3, 900])
    predictions = []
    for inferer_class, scheduler_class, models in (
        (inferers.LatentDiffusionInferer, schedulers.DDPMScheduler, (legacy_autoencoder, legacy_unet)),
        (LatentDiffusionInferer, monai_schedulers.DDPMScheduler, (autoencoder.eval(), unet.eval())),
    ):
        inferer = inferer_class(scheduler_class(**SCHEDULER), scale_factor=SCALE_FACTOR)
        torch.manual_seed(8)  # the inferer encodes by sampling the latent: the same draw for both
        with torch.no_grad():
            predictions.append(inferer(images, *models, noise=noise, timesteps=timesteps, condition=context))
    legacy, migrated = predictions
    assert (migrated - legacy).abs().max() <= 1e-5 * legacy.abs().max()


def test_a_legacy_patch_discriminator_checkpoint_loads_into_monais_unchanged():
    """Migrated training configs name MONAI's PatchDiscriminator: same keys, and the same outputs, with no converter."""
    from generative.networks.nets import PatchDiscriminator as LegacyPatchDiscriminator
    from monai.networks.nets import PatchDiscriminator

    arguments = {"spatial_dims": 3, "num_layers_d": 3, "in_channels": 1, "out_channels": 1, "norm": "INSTANCE"}
    legacy = _perturbed(LegacyPatchDiscriminator(num_channels=8, **arguments), 8)
    core = PatchDiscriminator(channels=8, **arguments).eval()
    core.load_state_dict(legacy.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected, found = legacy(x), core(x)
    assert len(found) == len(expected) == 5
    assert all(torch.equal(a, b) for a, b in zip(found, expected, strict=True))
