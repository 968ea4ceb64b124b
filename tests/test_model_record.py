"""A trained model's configuration recorded with its SHA-256, and read back instead of the dataset's."""

import json
import logging

import pytest
import torch
from bundle_cli import REPO_ROOT
from ignite.engine import Engine

from monai_ext.bundle import model_record, standins
from monai_ext.bundle.planning import fingerprint
from monai_ext.sharing.checkpoint import AtomicCheckpointSaver, AtomicDiskSaver, CheckedCheckpointLoader, read_manifest

CONFIGURATION = {
    "num_classes": 3,
    "class_names": ["background", "PZ", "TZ"],
    "in_channels": 2,
    "channel_names": ["T2", "ADC"],
    "pixdim": [0.6, 0.6, 3.3],
    "roi_size": [64, 64, 16],
    "normalization": [{"channel": "T2", "scheme": "zscore_nonzero"}, {"channel": "ADC", "scheme": "zscore_nonzero"}],
}


def _save_model(models, configuration=CONFIGURATION, out_channels=3):
    models.mkdir(parents=True, exist_ok=True)
    network = torch.nn.Conv3d(2, out_channels, 1)
    AtomicDiskSaver(models, filename="model.pt", record={"configuration": configuration})(
        {"model": network.state_dict()}, "ignored.pt"
    )
    return models / "model.pt"


def test_the_best_model_saver_records_the_configuration_next_to_the_hash(tmp_path):
    model_file = _save_model(tmp_path / "models")
    record = read_manifest(tmp_path / "models")["model.pt"]
    assert record["configuration"] == CONFIGURATION and len(record["sha256"]) == 64
    assert model_record.recorded_configuration(model_file) == CONFIGURATION
    assert model_record.recorded_configuration(tmp_path / "missing.pt") == {}
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(1, 1)}, configuration=CONFIGURATION,
                                  save_key_metric=True, key_metric_filename="model.pt", save_interval=1)  # fmt: skip
    assert saver._key_metric_checkpoint.save_handler.record == {"configuration": CONFIGURATION}
    assert saver._interval_checkpoint.save_handler.record == {}  # rolling training states carry none


def test_without_a_record_the_configuration_comes_from_the_dataset(tmp_path):
    data = standins.write_standin("Prostate", tmp_path / "prostate")
    settled = model_record.settled_configuration(tmp_path / "models" / "model.pt", tmp_path / "none.json", data)
    assert settled == fingerprint.model_configuration(fingerprint.compute_fingerprint(data))


def test_the_record_wins_and_a_disagreeing_fingerprint_is_named(tmp_path, caplog):
    model_file = _save_model(tmp_path / "models")
    data = standins.write_standin("Spleen", tmp_path / "spleen")  # 1 CT channel, 2 classes
    fingerprint_file = tmp_path / "fingerprint.json"
    fingerprint_file.write_text(json.dumps(fingerprint.compute_fingerprint(data)))
    with caplog.at_level(logging.WARNING):
        settled = model_record.settled_configuration(model_file, fingerprint_file, data)
    assert settled == CONFIGURATION
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("num_classes"))
    assert f"{model_file} was trained with 3 (recorded in {tmp_path / 'models' / 'sha256_manifest.json'})" in warning
    assert f"{fingerprint_file} gives 2 for {data}; the model's value is used" in warning


def test_metadata_follows_the_trained_model_and_keeps_everything_else(tmp_path):
    model_file = _save_model(tmp_path / "models")
    meta_file = tmp_path / "metadata.json"
    shipped = json.loads((REPO_ROOT / "bundles" / "medt_segmentation_3d" / "configs" / "metadata.json").read_text())
    meta_file.write_text(json.dumps(shipped))
    assert model_record.describe_in_metadata(meta_file, model_file)
    meta = json.loads(meta_file.read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], image["spatial_shape"], image["channel_def"]) == (
        2,
        [64, 64, 16],
        {"0": "T2", "1": "ADC"},
    )
    assert (pred["num_channels"], pred["channel_def"]) == (3, {"0": "background", "1": "PZ", "2": "TZ"})
    for key in ("version", "changelog", "required_packages_version", "description"):
        assert meta[key] == shipped[key]
    assert not model_record.describe_in_metadata(meta_file, model_file), "nothing changed, nothing written"
    assert not model_record.describe_in_metadata(meta_file, tmp_path / "untrained.pt")


def test_loading_into_a_network_built_with_other_values_names_the_record_and_what_wins(tmp_path):
    model_file = _save_model(tmp_path / "models")
    loader = CheckedCheckpointLoader(load_path=str(model_file), load_dict={"model": torch.nn.Conv3d(2, 5, 1)})
    with pytest.raises(ValueError) as raised:
        loader(Engine(lambda engine, batch: None))
    message = str(raised.value)
    assert f"{model_file} was trained with num_classes=3, in_channels=2, roi_size=[64, 64, 16]" in message
    assert "size mismatch for weight" in message
    assert "The model's recorded values win: remove the overrides that change them." in message


def test_a_trained_model_is_never_replaced_without_being_asked(tmp_path, caplog):
    models = tmp_path / "models"
    models.mkdir()
    saver = AtomicDiskSaver(models, filename="model.pt")
    saver({"model": torch.nn.Conv3d(2, 3, 1).state_dict()}, "x.pt", {"score_name": "val_mean_dice", "priority": 0.9663})
    record = read_manifest(models)["model.pt"]
    assert record["score"] == {"name": "val_mean_dice", "value": 0.9663} and record["saved"].endswith("+00:00")
    model_record.keep_trained_model(tmp_path / "elsewhere" / "model.pt")  # nothing to replace

    with pytest.raises(model_record.ModelExistsError) as refused:
        model_record.keep_trained_model(models / "model.pt")
    message = str(refused.value)
    saved = record["saved"].replace("T", " ").replace("+00:00", " UTC")
    assert message.startswith(
        f"{models / 'model.pt'} already holds a trained model (val mean dice 0.9663, saved {saved})"
    )
    assert "--overwrite True" in message and "--ckpt_dir OTHER_FOLDER" in message and "--resume True" in message
    model_record.keep_trained_model(models / "model.pt", resume=True)
    with caplog.at_level(logging.WARNING):
        model_record.keep_trained_model(models / "model.pt", overwrite=True)
    assert "will be replaced by this run's best model, as --overwrite asks" in caplog.text
    # a model without a record (copied in by hand) is described by its file time
    torch.save({}, tmp_path / "model.pt")
    with pytest.raises(model_record.ModelExistsError, match=r"\(saved \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"):
        model_record.keep_trained_model(tmp_path / "model.pt")


def test_evaluation_without_a_model_stops_with_one_line(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        model_record.require_model(tmp_path / "models" / "model.pt", tmp_path / "configs" / "train.json")
    assert str(stopped.value) == (
        f"No trained model at {tmp_path / 'models' / 'model.pt'}. Train one first: python -m monai.bundle run "
        f"--config_file {tmp_path / 'configs' / 'train.json'} (or pass --model_file PATH)."
    )
