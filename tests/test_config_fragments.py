"""The reusable fragments in configs/ and the copies each bundle carries of them stay equal.

A bundle folder is complete on its own, so it holds its own copy of every fragment it uses. A fragment key may be an
id (``train#handlers``): an override layer holds it as is at its top level, a full config at that nested place.
"""

import json

import pytest
from bundle_cli import REPO_ROOT
from monai.bundle import ConfigParser

FRAGMENTS_DIR = REPO_ROOT / "configs"
# bundle config -> the fragments it carries a copy of
USES = {
    "medt_segmentation_3d/configs/train.json": [
        "common", "data_msd", "data_fingerprint", "data_msd_training", "training_state", "model_loading",
        "handlers_segmentation", "network_hybrid_axial_unet_3d",
    ],
    "medt_segmentation_3d/configs/evaluate.json": ["trained_configuration", "evaluate"],
    "medt_segmentation_3d/configs/multi_gpu_train.json": ["multi_gpu_train"],
    "medt_segmentation_3d/configs/inference.json": [
        "common", "data_msd", "data_fingerprint", "trained_configuration", "data_msd_inference", "model_loading",
        "network_hybrid_axial_unet_3d",
    ],
    "autoencoderkl_3d/configs/train.json": [
        "common", "data_msd", "data_msd_scaled", "data_msd_training", "training_state", "model_loading",
        "network_autoencoderkl_3d",
    ],
    "autoencoderkl_3d/configs/evaluate.json": ["evaluate"],
    "autoencoderkl_3d/configs/multi_gpu_train.json": ["multi_gpu_train"],
    "autoencoderkl_3d/configs/inference.json": [
        "common", "data_msd", "data_msd_scaled", "data_msd_inference", "model_loading", "network_autoencoderkl_3d",
    ],
    "autoencoderkl_3d/configs/convert_legacy.json": ["convert_legacy_autoencoderkl"],
}  # fmt: skip
PAIRS = [(config, fragment) for config, fragments in USES.items() for fragment in fragments]


def _fragment(name):
    content = json.loads((FRAGMENTS_DIR / f"{name}.json").read_text())
    return {key: value for key, value in content.items() if key != "_desc_"}


@pytest.mark.parametrize(("config", "fragment"), PAIRS, ids=[f"{c}<-{f}" for c, f in PAIRS])
def test_bundle_config_carries_an_equal_copy_of_the_fragment(config, fragment):
    raw = json.loads((REPO_ROOT / "bundles" / config).read_text())
    nested = ConfigParser(raw)
    for key, value in _fragment(fragment).items():
        assert key in raw or key in nested, f"{config} lacks '{key}' of configs/{fragment}.json"
        copy = raw[key] if key in raw else nested[key]
        assert copy == value, f"{config}: '{key}' differs from configs/{fragment}.json"


def test_every_fragment_is_documented_and_used_by_a_bundle():
    names = sorted(path.stem for path in FRAGMENTS_DIR.glob("*.json"))
    used = sorted({fragment for _, fragment in PAIRS})
    assert names == used
    for name in names:
        assert json.loads((FRAGMENTS_DIR / f"{name}.json").read_text())["_desc_"].strip(), name


def test_a_changed_copy_is_caught(tmp_path):
    bundle_config = json.loads((REPO_ROOT / "bundles" / "medt_segmentation_3d/configs/train.json").read_text())
    bundle_config["train"]["handlers"][1]["print_lr"] = True
    parsed = ConfigParser(bundle_config)
    assert parsed["train#handlers"] != _fragment("handlers_segmentation")["train#handlers"]


@pytest.mark.parametrize(
    "config", [c for c in USES if c.endswith(("train.json", "inference.json")) and "multi" not in c]
)
def test_amp_is_on_exactly_with_cuda_and_reaches_every_engine(config):
    import torch

    raw = json.loads((REPO_ROOT / "bundles" / config).read_text())
    parser = ConfigParser(raw)
    assert parser.get_parsed_content("amp") is torch.cuda.is_available()
    engines = [key for key in ("train#trainer", "validate#evaluator", "evaluator") if key in parser]
    assert engines, config
    for key in engines:
        assert parser[f"{key}#amp"] == "@amp", f"{config}: {key} does not take the amp switch"
