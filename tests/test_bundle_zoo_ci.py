"""The Model Zoo's CI sequence on each bundle folder copied alone, with nothing around it (our own reproduction).

``verify_metadata`` against the schema; ``ConfigWorkflow`` with ``check_properties`` for train, then train +
evaluate, then inference; ``verify_net_in_out`` for the segmentation bundle (the Zoo skips generative bundles whose
network returns a tuple); ``ckpt_export`` to TorchScript, loaded where monai_ext cannot be imported; ``torchrun`` with
two processes on train.json + multi_gpu_train.json, merged and exported to one config file as the Zoo's runner does.
"""

import hashlib
import json
import re

import pytest
import torch
from bundle_cli import REPO_ROOT, copy_bundle, run_cli, run_export_without_monai_ext, tiny_msd
from conftest import SHARED
from monai.bundle import ConfigParser, verify_metadata

from monai_ext.sharing.checkpoint import verify_sha256

pytestmark = pytest.mark.slow

SCHEMA = REPO_ROOT / "tests" / "data" / "meta_schema_20240725.json"
# the schema file's hash, so that MONAI checks the copy it reads instead of warning that it cannot
SCHEMA_SHA256 = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
BUNDLES = ["medt_segmentation_3d", "autoencoderkl_3d"]
TINY = {
    "medt_segmentation_3d": {
        "roi_size": [16, 16, 16],
        "pixdim": [4.0, 4.0, 4.0],
        "num_samples": 1,
        "iterations_per_epoch": 2,
    },
    "autoencoderkl_3d": {"roi_size": [16, 16, 16], "pixdim": [4.0, 4.0, 4.0], "network_def#channels": [8, 8]},
}
ONE_EPOCH = {"train#trainer#max_epochs": 1, "val_interval": 1}
# what each bundle's TorchScript export returns on a 16^3 patch
EXPORT_SHAPES = {
    "medt_segmentation_3d": [(1, 3, 16, 16, 16)],
    "autoencoderkl_3d": [(1, 1, 16, 16, 16), (1, 3, 8, 8, 8), (1, 3, 8, 8, 8)],
}


@pytest.mark.parametrize("name", BUNDLES)
def test_metadata_verifies_against_the_shipped_schema(name):
    meta = REPO_ROOT / "bundles" / name / "configs" / "metadata.json"
    assert json.loads(meta.read_text())["schema"].endswith("/" + SCHEMA.name)
    verify_metadata(meta_file=str(meta), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256")


def test_metadata_schema_check_rejects_a_missing_required_field(tmp_path):
    meta = json.loads((REPO_ROOT / "bundles" / BUNDLES[0] / "configs" / "metadata.json").read_text())
    del meta["required_packages_version"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_metadata(
            meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256"
        )


def test_shipped_schema_is_the_shared_one():
    shared = SHARED / "schema" / SCHEMA.name
    if not shared.is_file():
        pytest.skip(f"{shared} not found: the shared folder sits beside the repository on our machines only")
    assert SCHEMA.read_bytes() == shared.read_bytes()


@pytest.mark.parametrize("name", BUNDLES)
def test_zoo_ci_sequence_on_the_bundle_copied_alone(name, tmp_path):
    bundle = copy_bundle(name, tmp_path)
    data = tiny_msd(tmp_path / "data", with_validation=False)
    overrides = {**TINY[name], **ONE_EPOCH, "dataset_dir": str(data), "bundle_root": str(bundle)}
    steps = {**overrides, "skip_verify_net": name == "autoencoderkl_3d"}

    done = run_cli([bundle, json.dumps(steps)], tmp_path, module=(str(REPO_ROOT / "tests" / "zoo_ci.py"),))
    results = dict(re.findall(r"^STEP ([\w_]+): (.*)$", done.stdout, re.M))
    expected = {"train": "[]", "evaluate": "[]", "infer": "[]", "ckpt_export": "ok"}
    if name == "medt_segmentation_3d":
        expected["verify_net_in_out"] = "ok"
    assert results == expected, done.stdout[-3000:]
    assert "Not all config files" not in done.stdout + done.stderr
    verify_sha256(bundle / "models" / "model.pt")

    x = torch.rand(1, 1, 16, 16, 16)
    exported = run_export_without_monai_ext(bundle / "models" / "model.ts", x, tmp_path, b'"version"')
    exported = list(exported) if isinstance(exported, tuple) else [exported]
    assert [tuple(t.shape) for t in exported] == EXPORT_SHAPES[name]

    # The Zoo's multi-GPU step: merge train.json + multi_gpu_train.json with the overrides into one exported config
    # inside configs/, then run it under torchrun (two CPU processes with Gloo here).
    (bundle / "models").rename(tmp_path / "single_process_models")
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    parser.update(pairs=overrides)
    merged = bundle / "configs" / "train_override.json"
    ConfigParser.export_config_file(parser.config, str(merged), indent=4)
    run_cli(
        ["--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", merged,
         "--logging_file", bundle / "configs" / "logging.conf", "--meta_file", bundle / "configs" / "metadata.json"],
        tmp_path,
        module=("-m", "torch.distributed.run"),
    )  # fmt: skip
    verify_sha256(bundle / "models" / "model.pt")
    assert (bundle / "models" / "checkpoint_epoch=1.pt").is_file()
