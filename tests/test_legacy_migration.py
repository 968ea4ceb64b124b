"""``python -m monai_ext migrate``: legacy MONAI Generative Models bundles, moved to MONAI core, sample what they did.

The Model Zoo's brats_mri_generative_diffusion 1.0.9 (reduced, seeded legacy weights from monai-generative 0.2.3) is
migrated with --verify; the test then runs both bundles itself through ``python -m monai.bundle run`` on one noise,
the legacy one with the legacy package as a user would run it, the migrated one with ``generative`` unimportable.
Our own small 3D latent diffusion bundles cover cross-attention, 0.1.0 semantics and YAML.
"""

import hashlib
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import REPO_ROOT, run_cli
from legacy_bundles import (
    LEGACY_STAND_INS,
    bundle_run,
    legacy_ldm_sample,
    sample_inference,
    write_ldm_bundle,
    zoo_bundle,
)
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from monai_ext.bundle.standins import write_standin
from monai_ext.legacy.migration import MigrationError, migrate
from monai_ext.legacy.migration.configs import BundleConfigs
from monai_ext.legacy.migration.scripts import rewrite_scripts
from monai_ext.legacy.migration.versions import decide_legacy_version
from monai_ext.sharing.checkpoint import verify_sha256

SCHEMA = REPO_ROOT / "tests" / "data" / "meta_schema_20240725.json"
TARGET = 1e-4  # largest difference over the legacy sample's largest value


def _sample(kind, bundle, noise_file, output, *overrides):
    return sample_inference(kind, bundle, noise_file, output, *overrides)[0]


def _hashes(folder):
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    legacy = zoo_bundle(root)
    before = _hashes(legacy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(LEGACY_STAND_INS))
        report = migrate(str(legacy), str(root / "migrated"), verify=True)
    return legacy, root / "migrated", report, before


def test_the_report_lists_every_change_and_what_is_left(zoo):
    _, migrated, report, _ = zoo
    assert (migrated / "docs" / "migration_report.md").read_text() == report
    expected = [
        "weights from monai-generative 0.2.2: metadata.json lists monai-generative 0.2.2",
        "configs/inference.json : network_def#_target_: generative.networks.nets.DiffusionModelUNet -> "
        "monai.networks.nets.DiffusionModelUNet",
        "configs/train_autoencoder.json : discriminator_def#num_channels: argument num_channels -> channels "
        "(id discriminator_def#channels)",
        "configs/train_autoencoder.json : perceptual_loss_def#_target_: generative.losses.PerceptualLoss -> "
        "monai.losses.PerceptualLoss",
        "configs/inference.json : set_timesteps: $@noise_scheduler.set_timesteps(num_inference_steps=50) -> "
        "$monai_ext.legacy.set_legacy_timesteps(@noise_scheduler, num_inference_steps=50)",
        "configs/inference.json : load_diffusion: $@network_def.load_state_dict(torch.load(@load_diffusion_path)) -> "
        "$@network_def.load_state_dict(monai_ext.legacy.convert_diffusion_unet_state_dict(@load_diffusion_path, "
        "@network_def))",
        "configs/inference.json : load_diffusion_path: $@model_dir + '/model.pt' -> $@model_dir + '/model_monai.pt'",
        "configs/train_autoencoder.json : train#handlers#0#final_filename: model_autoencoder.pt -> "
        "model_autoencoder_monai.pt",
        "scripts/losses.py : line 12: from generative.losses import PatchAdversarialLoss -> from monai.losses import "
        "PatchAdversarialLoss",
        "scripts/ldm_trainer.py : line 17: from monai.config import IgniteInfo -> from monai.utils import IgniteInfo",
        'configs/metadata.json : version: "1.0.9" -> "1.1.0"',
        "configs/metadata.json : generator_data_format: (this name) -> network_data_format",
        "large_files.yml names the legacy checkpoints",
        "ckpt_export cannot export network_def (DiffusionModelUNet)",
    ]
    missing = [line for line in expected if line not in report]
    assert not missing, f"not in the report: {missing}\n{report}"


def test_the_legacy_bundle_is_untouched_and_converted_weights_are_recorded(zoo):
    legacy, migrated, _, before = zoo
    assert _hashes(legacy) == before
    for name in ("model.pt", "model_autoencoder.pt"):
        assert (migrated / "models" / name).read_bytes() == (legacy / "models" / name).read_bytes()
    record = json.loads((migrated / "configs" / "metadata.json").read_text())["monai_ext_migration"]
    assert record["legacy_version"] == "0.2.2"
    assert set(record["checkpoints"]) == {"models/model.pt", "models/model_autoencoder.pt"}
    for original, entry in record["checkpoints"].items():
        assert entry["sha256_original"] == before[original]
        assert verify_sha256(migrated / entry["converted"]) == entry["sha256_converted"]


def test_migrated_configs_keep_their_ids_and_name_no_legacy_package(zoo):
    legacy, migrated, _, _ = zoo
    for path in sorted((migrated / "configs").glob("*.json")):
        if path.name == "metadata.json":
            continue
        old, new = json.loads((legacy / "configs" / path.name).read_text()), json.loads(path.read_text())
        assert set(new) == set(old) | ({"imports"} if "imports" in new else set()), path.name
        assert "generative" not in path.read_text(), path.name
    for path in (migrated / "scripts").glob("*.py"):
        assert "generative" not in path.read_text() and "monai.config import IgniteInfo" not in path.read_text()
    assert "# Copyright (c) MONAI Consortium" in (migrated / "scripts" / "losses.py").read_text(), "comments kept"


def test_migrated_zoo_bundle_samples_the_legacy_sample(zoo, tmp_path):
    legacy, migrated, _, _ = zoo
    torch.manual_seed(3)
    torch.save(torch.randn(1, 4, 8, 8, 8), tmp_path / "noise.pt")
    expected = _sample("legacy", legacy, tmp_path / "noise.pt", tmp_path / "legacy")
    found = _sample("core", migrated, tmp_path / "noise.pt", tmp_path / "migrated")
    assert found.shape == expected.shape == (32, 32, 32)
    assert np.abs(found - expected).max() <= TARGET * np.abs(expected).max()
    # MONAI 1.6's own timesteps, as the Zoo's hand migration kept them: another sample from the same weights
    monai_spacing = "$@noise_scheduler.set_timesteps(num_inference_steps=50)"
    other = _sample("core", migrated, tmp_path / "noise.pt", tmp_path / "other", "--set_timesteps", monai_spacing)
    assert np.abs(other - expected).max() > 1e-3 * np.abs(expected).max()
    # what --verify measured and recorded, on noise the bundle drew itself
    parity = json.loads((migrated / "configs" / "metadata.json").read_text())["monai_ext_migration"]["parity"]
    assert parity["config"] == "configs/inference.json" and parity["files"] == 1
    assert parity["max_relative_difference"] <= TARGET and parity["max_abs_legacy"] > 0.1


def test_migrated_metadata_passes_monais_schema_check(zoo):
    _, migrated, _, _ = zoo
    meta = json.loads((migrated / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith("/meta_schema_20240725.json") and meta["version"] == "1.1.0"
    assert meta["changelog"]["1.1.0"].startswith("moved from monai-generative 0.2.2 to MONAI core")
    assert (
        "monai-generative" not in meta["required_packages_version"] and "monai-ext" in meta["required_packages_version"]
    )
    assert "optional_packages_version" not in meta and "generator_data_format" not in meta
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    verify_metadata(meta_file=str(migrated / "configs" / "metadata.json"), filepath=str(SCHEMA), hash_val=digest,
                    hash_type="sha256")  # fmt: skip


# MONAI's AutoencoderKL samples its latent in eval mode too, so the trace check sees another reconstruction
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_the_migrated_autoencoder_exports_with_monais_ckpt_export(zoo, tmp_path):
    """MONAI's AutoencoderKL does not compile with torch.jit.script; ckpt_export traces it (--use_trace)."""
    _, migrated, _, _ = zoo
    config, weights = migrated / "configs" / "inference.json", migrated / "models" / "model_autoencoder_monai.pt"
    ckpt_export(net_id="autoencoder_def", filepath=str(tmp_path / "autoencoder.ts"), ckpt_file=str(weights),
                meta_file=str(migrated / "configs" / "metadata.json"), config_file=str(config), use_trace=True,
                input_shape=[1, 1, 32, 32, 32], bundle_root=str(migrated))  # fmt: skip
    parser = ConfigParser()
    parser.read_config(str(config))
    network = parser.get_parsed_content("autoencoder_def").eval()
    network.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        _, z_mu, z_sigma = torch.jit.load(str(tmp_path / "autoencoder.ts"))(x)
        expected_mu, expected_sigma = network.encode(x)
    assert torch.allclose(z_mu, expected_mu, atol=1e-5) and torch.allclose(z_sigma, expected_sigma, atol=1e-5)


@pytest.mark.slow
def test_migrated_training_configs_run_one_iteration_without_the_legacy_package(zoo, tmp_path):
    _, migrated, _, _ = zoo
    bundle = tmp_path / "bundle"
    shutil.copytree(migrated, bundle)
    write_standin("BrainTumour", str(tmp_path / "data" / "Task01_BrainTumour"), num_training=5)
    # the resnet50 perceptual loss needs torchvision (see tests/legacy_stand_ins): an L1 loss stands in for it
    one_iteration = ["--dataset_dir", tmp_path / "data", "--train#trainer#max_epochs", "1",
                     "--train#trainer#epoch_length", "1", "--train#dataset#num_workers", "0",
                     "--perceptual_loss_def", "{'_target_': 'torch.nn.L1Loss'}"]  # fmt: skip
    models = bundle / "models"
    before = {name: (models / name).read_bytes() for name in ("model_autoencoder_monai.pt", "model_monai.pt")}
    bundle_run("core", bundle, "--config_file", "configs/train_autoencoder.json", *one_iteration)
    assert (models / "model_autoencoder_monai.pt").read_bytes() != before["model_autoencoder_monai.pt"]
    both = "['configs/train_autoencoder.json','configs/train_diffusion.json']"
    done = bundle_run("core", bundle, "--config_file", both, *one_iteration)
    assert "scale factor:" in done.stdout
    assert (models / "model_monai.pt").read_bytes() != before["model_monai.pt"]
    # the retrained files still load through the migrated inference's converters
    sample = _sample("core", bundle, _noise(tmp_path), tmp_path / "out")
    assert sample.shape == (32, 32, 32) and np.isfinite(sample).all()


def _noise(folder):
    torch.save(torch.randn(1, 4, 8, 8, 8), folder / "noise.pt")
    return folder / "noise.pt"


@pytest.mark.slow
def test_migrated_inference_runs_confined(zoo, tmp_path):
    from monai_ext.sharing.sandbox import landlock

    try:
        landlock.abi_version()
    except landlock.LandlockUnavailableError as err:
        pytest.skip(f"the kernel cannot confine: {err}")
    _, migrated, _, _ = zoo
    bundle = tmp_path / "bundle"
    shutil.copytree(migrated, bundle)
    done = run_cli(
        [bundle, "--config_file", "configs/inference.json"], tmp_path / "cwd", module=("-m", "monai_ext", "run")
    )
    assert "monai_ext run: confined by the kernel." in done.stderr
    [written] = (bundle / "output").rglob("*.nii.gz")
    assert nib.load(written).shape == (32, 32, 32)


# Our own bundles: cross-attention (JSON and YAML), 0.1.0 semantics with self-attention and 0.1.0 key names
LDM_CASES = {
    "cross-attention": ("json", True, False),
    "yaml": ("yaml", True, False),
    "release-0.1.0": ("json", False, True),
}


@pytest.mark.parametrize("case", list(LDM_CASES))
def test_migrated_ldm_bundle_samples_the_legacy_sample(case, tmp_path, monkeypatch):
    fmt, conditioned, release_0_1 = LDM_CASES[case]
    legacy = write_ldm_bundle(tmp_path, fmt, conditioned, release_0_1)
    report = migrate(str(legacy), str(tmp_path / "migrated"))
    rule = "has attention keys that only monai-generative 0.1.0 wrote" if release_0_1 else "lists monai-generative"
    assert rule in report
    migrated = tmp_path / "migrated"
    config = next((migrated / "configs").glob("inference.*"))
    assert "generative" not in config.read_text()
    torch.manual_seed(4)
    noise = torch.randn(1, 3, 8, 8, 8)
    torch.save(noise, tmp_path / "noise.pt")
    monkeypatch.chdir(migrated)
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["noise"] = f"$torch.load('{tmp_path / 'noise.pt'}', weights_only=True)"
    for step in ("load_autoencoder", "load_diffusion", "set_timesteps"):
        parser.get_parsed_content(step)
    found = parser.get_parsed_content("sample")
    expected = legacy_ldm_sample(noise, conditioned, release_0_1)
    assert found.shape == expected.shape == (1, 1, 16, 16, 16)
    assert (found - expected).abs().max() <= TARGET * expected.abs().max()
    if case == "cross-attention":
        meta = str(migrated / "configs" / "metadata.json")
        context = {"timesteps": torch.tensor([10]), "context": torch.zeros(1, 1, 4)}
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=str(config), extra_forward_args=context)


def test_the_0_1_bundle_read_as_0_2_does_not_convert(tmp_path):
    legacy = write_ldm_bundle(tmp_path, "json", conditioned=False, release_0_1=True)
    report = migrate(str(legacy), str(tmp_path / "migrated"), legacy_version="0.2.3")
    assert "weights from monai-generative 0.2.3: given with --legacy_version" in report
    todo = report.split("## Left for a person")[1]
    assert "models/unet.pt was not converted" in todo and "unexpected keys" in todo


@pytest.mark.slow
def test_verify_on_a_yaml_bundle(tmp_path, monkeypatch):
    legacy = write_ldm_bundle(tmp_path, "yaml", conditioned=True)
    report = migrate(str(legacy), str(tmp_path / "migrated"), verify=True)
    assert "parity (--verify, configs/inference.yaml, same noise)" in report
    parity = json.loads((tmp_path / "migrated" / "configs" / "metadata.json").read_text())["monai_ext_migration"]
    assert parity["parity"]["max_relative_difference"] <= TARGET


def _legacy_configs(**components):
    return {"configs/inference.json": components}


def test_the_legacy_version_is_decided_by_the_strongest_evidence():
    unet = {"_target_": "generative.networks.nets.DiffusionModelUNet", "use_flash_attention": False}
    listed_0_1 = {"optional_packages_version": {"monai-generative": "0.1.0"}}
    decided = decide_legacy_version(None, _legacy_configs(network_def=unet), listed_0_1, {})
    assert decided.version == "0.2.0" and not decided.before_0_2
    assert decided.rule == (
        "configs/inference.json : network_def#use_flash_attention: use_flash_attention exists only from "
        "monai-generative 0.2.0 on, although metadata.json lists monai-generative 0.1.0"
    )
    plain = {"_target_": "generative.networks.nets.DiffusionModelUNet"}
    decided = decide_legacy_version(None, _legacy_configs(network_def=plain), listed_0_1, {})
    assert decided.version == "0.1.0" and decided.before_0_2
    keys_0_1 = {"models/unet.pt": {"middle_block.attention.query.weight": torch.zeros(1)}}
    with pytest.raises(MigrationError, match="pass --legacy_version"):
        decide_legacy_version(None, _legacy_configs(network_def=unet), {}, keys_0_1)
    with pytest.raises(MigrationError, match="metadata.json lists none.*--legacy_version 0.2.3"):
        decide_legacy_version(None, _legacy_configs(network_def=plain), {}, {})
    assert decide_legacy_version("0.2.1", {}, listed_0_1, keys_0_1).rule == "given with --legacy_version"


def test_migrate_refuses_bad_input_in_one_line(tmp_path):
    legacy = write_ldm_bundle(tmp_path, "json")
    (tmp_path / "taken").mkdir()
    for arguments, message in (
        ((legacy, tmp_path / "taken"), "taken exists; name a new folder"),
        ((tmp_path / "nothing", tmp_path / "new"), "nothing is not a bundle folder (it has no configs/)"),
    ):
        with pytest.raises(SystemExit, match=re.escape(message)):
            migrate(*map(str, arguments))
    (legacy / "configs" / "broken.json").write_text("{")
    with pytest.raises(SystemExit, match="error: cannot read config .*broken.json"):
        migrate(str(legacy), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_verify_without_a_noise_id_says_so_and_keeps_the_migrated_bundle(tmp_path):
    legacy = write_ldm_bundle(tmp_path, "json")
    config = json.loads((legacy / "configs" / "inference.json").read_text())
    config["latent"] = config.pop("noise")
    config["sample"] = config["sample"].replace("@noise", "@latent")
    (legacy / "configs" / "inference.json").write_text(json.dumps(config))
    expected = (
        "error: --verify overrides the ids ['noise'] of configs/inference.json, which does not define them (the "
        f"migrated bundle is in {tmp_path / 'new'}, its report in {tmp_path / 'new' / 'docs' / 'migration_report.md'})"
    )
    with pytest.raises(SystemExit, match=re.escape(expected)):
        migrate(str(legacy), str(tmp_path / "new"), verify=True)
    assert "## Left for a person" in (tmp_path / "new" / "docs" / "migration_report.md").read_text()


def test_a_checkpoint_missing_from_the_bundle_is_left_for_a_person(tmp_path):
    legacy = write_ldm_bundle(tmp_path, "json")
    (legacy / "models" / "unet.pt").unlink()
    report = migrate(str(legacy), str(tmp_path / "migrated"))
    assert "configs/inference.json : load_diffusion: models/unet.pt is not in the bundle" in report
    config = json.loads((tmp_path / "migrated" / "configs" / "inference.json").read_text())
    # the load still goes through the converter, so the legacy file works once it is put in place
    assert "convert_diffusion_unet_state_dict(@bundle_root + '/models/unet.pt'" in config["load_diffusion"]


def test_scripts_imports_are_rewritten_in_place_and_the_rest_is_listed(tmp_path):
    (tmp_path / "scripts").mkdir(parents=True)
    (tmp_path / "scripts" / "tools.py").write_text(
        "# keep this comment\n"
        "from generative.networks.nets import PatchDiscriminator  # noqa\n"
        "from monai.config import IgniteInfo, KeysCollection\n"
        "import generative\n"
        "\n"
        "def build(scheduler):\n"
        "    scheduler.set_timesteps(10)\n"
        "    return PatchDiscriminator(spatial_dims=2, num_channels=8, in_channels=1)\n"
    )
    report = rewrite_scripts(tmp_path)
    text = (tmp_path / "scripts" / "tools.py").read_text()
    assert text.splitlines()[:4] == [
        "# keep this comment",
        "from monai.networks.nets import PatchDiscriminator",
        "from monai.config import KeysCollection",
        "from monai.utils import IgniteInfo",
    ]
    assert "import generative\n" in text, "a bare module import is not guessed at"
    assert [str(change) for change in report.changes][0] == (
        "scripts/tools.py : line 2: from generative.networks.nets import PatchDiscriminator  # noqa -> "
        "from monai.networks.nets import PatchDiscriminator"
    )
    # changes name the legacy file's lines; what is left, the migrated file's (one import became two)
    assert report.problems == [
        "scripts/tools.py : line 5: uses of the module name 'generative' in this file must be renamed by hand",
        "scripts/tools.py : line 8: set_timesteps(...): MONAI 1.6 spaces DDIM/DDPM timesteps differently: use "
        "monai_ext.legacy.set_legacy_timesteps",
        "scripts/tools.py : line 9: PatchDiscriminator(...) argument num_channels -> channels",
    ]


def test_a_0_1_scheduler_gets_monais_argument_and_schedule_names(tmp_path):
    (tmp_path / "configs").mkdir()
    scheduler = {"_target_": "generative.networks.schedulers.DDPMScheduler", "beta_schedule": "scaled_linear"}
    (tmp_path / "configs" / "train.json").write_text(json.dumps({"scheduler": scheduler}))
    configs = BundleConfigs(tmp_path)
    changes = [str(change) for change in configs.rewrite(None).changes]
    assert configs.files["configs/train.json"]["scheduler"] == {
        "_target_": "monai.networks.schedulers.DDPMScheduler",
        "schedule": "scaled_linear_beta",
    }
    assert "configs/train.json : scheduler#schedule: scaled_linear -> scaled_linear_beta" in changes
    from monai.networks.schedulers import DDPMScheduler

    migrated = configs.files["configs/train.json"]["scheduler"]
    assert DDPMScheduler(schedule=migrated["schedule"]).betas[-1] > 0


def test_config_paths_resolve_statically_and_expressions_are_not_run(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text(json.dumps({
        "bundle_root": "/somewhere/else",
        "model_dir": "$@bundle_root + '/models'",
        "path": "$os.path.join(@model_dir, 'net.pt')",
        "computed": "$__import__('os').getcwd() + '/net.pt'",
    }))  # fmt: skip
    configs = BundleConfigs(tmp_path)
    path, constants = configs.path("@path", "configs/inference.json")
    assert path == tmp_path.resolve() / "models" / "net.pt"
    assert ("configs/inference.json", "path", "net.pt") in constants
    with pytest.raises(ValueError, match="computed when the bundle runs"):
        configs.path("@computed", "configs/inference.json")
