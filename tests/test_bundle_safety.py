"""The real bundles' safety features, through ``python -m monai.bundle`` on copies of the bundle folders alone.

Data checked before the first epoch (``skip_bad``), the best model saved with its SHA-256 and verified by evaluate
and export, the ``resume`` switch, and a pack/unpack round trip that reproduces the original's results.
"""

import csv
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from bundle_cli import config_files, copy_bundle, run_cli, tiny_msd

from monai_ext.bundle.synthetic import write_synthetic_msd
from monai_ext.sharing.audit import audit_bundle
from monai_ext.sharing.checkpoint import load_checkpoint, read_manifest, verify_sha256
from monai_ext.sharing.exchange import run_command, unpack
from monai_ext.sharing.packaging import pack_bundle, unpack_bundle

pytestmark = pytest.mark.slow

NAME = "medt_segmentation_3d"
TINY = ["--roi_size", "[16,16,16]", "--pixdim", "[4.0,4.0,4.0]"]
TRAIN_2 = TINY + ["--train#trainer#max_epochs", "2", "--val_interval", "1", "--num_samples", "1",
                  "--iterations_per_epoch", "2"]  # fmt: skip


def _fails(args, cwd):
    done = run_cli(args, cwd, check=False)
    assert done.returncode != 0, done.stdout[-2000:]
    return done.stdout + done.stderr


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _mean_dice(bundle):
    with open(bundle / "eval" / "val_mean_dice_raw.csv") as f:
        return [row["mean"] for row in csv.DictReader(f)]


def test_training_stops_before_the_first_epoch_on_a_corrupt_case(tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    data = tiny_msd(tmp_path / "data", with_validation=True)
    _truncate(data / "labelsTr" / "lab_1.nii.gz")
    (data / "imagesTr" / "lab_2.nii.gz").unlink()
    files = config_files(bundle, ["train.json"])
    log = _fails(["run", "--config_file", files, *TRAIN_2, "--dataset_dir", data], tmp_path)
    # both problems in one report, each naming its file
    assert f"{data / 'labelsTr' / 'lab_1.nii.gz'}: label is not a readable NIfTI file" in log
    assert str(data / "imagesTr" / "lab_2.nii.gz") in log and "2 of 4 cases have problems" in log
    assert "Epoch[1]" not in log
    assert not (bundle / "models").exists() or not list((bundle / "models").iterdir())


def test_round_trip_resume_and_hash_checks_on_the_real_bundle(tmp_path):
    data = tiny_msd(tmp_path / "data", with_validation=True)
    _truncate(data / "imagesTr" / "lab_0.nii.gz")
    train = ["run", "--config_file", None, *TRAIN_2, "--dataset_dir", data, "--skip_bad", "True"]
    original = copy_bundle(NAME, tmp_path / "lab_a")

    train[2] = config_files(original, ["train.json"])
    done = run_cli(train, tmp_path)
    log = done.stdout + done.stderr
    assert "skipping bad cases, training on 3 of 4" in log and str(data / "imagesTr" / "lab_0.nii.gz") in log
    verify_sha256(original / "models" / "model.pt")
    evaluate = ["run", "--config_file", None, *TINY, "--dataset_dir", data, "--skip_bad", "True"]
    evaluate[2] = config_files(original, ["train.json", "evaluate.json"])
    run_cli(evaluate, tmp_path)

    # The receiving lab unpacks into a plain folder and runs the printed command.
    pack_bundle(original, tmp_path / "medt.zip")
    received = tmp_path / "lab_b" / NAME
    report = unpack(str(tmp_path / "medt.zip"), str(received))
    command = run_command(received)
    assert command in report and command == f"python -m monai_ext run {received} --config_file configs/train.json"
    assert [item for item in audit_bundle(received) if item.flags] == []
    received_files = config_files(received, ["train.json"])
    received_eval = config_files(received, ["train.json", "evaluate.json"])

    evaluate[2] = received_eval
    run_cli(evaluate, tmp_path)
    assert _mean_dice(received) == _mean_dice(original)

    model = received / "models" / "model.pt"
    # from the model alone: no dataset, no overrides; the network is built from the model's recorded configuration
    export = ["ckpt_export", "export_network_def", "--filepath", tmp_path / "model.ts", "--ckpt_file", model,
              "--config_file", config_files(received, ["inference.json"])]  # fmt: skip
    run_cli(export, tmp_path)
    exported = torch.jit.load(tmp_path / "model.ts").state_dict()
    packed = load_checkpoint(original / "models" / "model.pt")
    assert all(torch.equal(exported[key], packed[key]) for key in packed)

    # Trained afresh with the same seed and threads, the copy reaches the same best metric and weights bitwise.
    model.unlink()
    train[2] = received_files
    run_cli(train, tmp_path)
    ours, theirs = (load_checkpoint(b / "models" / "checkpoint_epoch=2.pt") for b in (original, received))
    assert theirs["best_metric"] == ours["best_metric"]
    for key, value in load_checkpoint(original / "models" / "model.pt").items():
        assert torch.equal(value, load_checkpoint(received / "models" / "model.pt")[key]), key

    # The resume switch continues from epoch 2 with the schedule and best metric carried on.
    done = run_cli([*train, "--train#trainer#max_epochs", "3", "--resume", "True"], tmp_path)
    log = done.stdout + done.stderr
    assert "resume: restored" in log and "checkpoint_epoch=2.pt (epoch 2)" in log
    resumed = load_checkpoint(received / "models" / "checkpoint_epoch=3.pt")
    assert resumed["lr_scheduler"]["last_epoch"] == 3 and resumed["trainer"]["max_epochs"] == 3
    assert resumed["best_metric"]["best_metric"] >= ours["best_metric"]["best_metric"]

    # A model file changed after it was recorded is refused by evaluate and by export.
    model.write_bytes(model.read_bytes() + b"\0")
    evaluate[2] = received_eval
    assert f"{model}: SHA-256 mismatch" in _fails(evaluate, tmp_path)
    assert f"{model}: SHA-256 mismatch" in _fails(export, tmp_path)


def test_pack_ships_exactly_the_bundle_folder(tmp_path):
    bundle = copy_bundle(NAME, tmp_path / "repo")
    (tmp_path / "repo" / "configs").mkdir()
    (tmp_path / "repo" / "configs" / "common.json").write_text("{}")  # a folder beside the bundle is not shipped
    manifest = pack_bundle(bundle, tmp_path / "b.zip")
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk
    unpack_bundle(tmp_path / "b.zip", tmp_path / "dest")
    for name in on_disk:
        assert (tmp_path / "dest" / name).read_bytes() == (bundle / name).read_bytes()


def test_ctrl_c_prints_the_resume_command_and_another_dataset_is_never_offered_resume(tmp_path):
    bundle = copy_bundle(NAME, tmp_path)
    data = tiny_msd(tmp_path / "data", with_validation=True)
    args = ["run", "--config_file", config_files(bundle, ["train.json"]), *TINY, "--num_samples", "1",
            "--iterations_per_epoch", "2", "--dataset_dir", str(data), "--train#trainer#max_epochs", "500"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        # Ctrl-C as from a terminal: a CI job may start the tests with SIGINT ignored, which children inherit
        training = subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=tmp_path, env=env,
                                    stdout=stdout, stderr=stderr,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        try:
            while "checkpoint_epoch=1.pt" not in read_manifest(bundle / "models") and training.poll() is None:
                time.sleep(0.2)
            training.send_signal(signal.SIGINT)
            training.wait(timeout=120)
        finally:
            training.kill()  # a failed wait must not leave it training for 500 epochs
    stdout, stderr = out.read_text(), err.read_text()
    resume = shlex.join([sys.executable, "-m", "monai.bundle", *args, "--resume", "True"])
    output = f"training's stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    interrupted = f"Interrupted; the last finished epoch is kept. Resume with: {resume}"
    assert stderr.strip().splitlines()[-1] == interrupted, output
    assert "Traceback" not in stdout + stderr and "terminating due to exception" not in stdout + stderr, output
    # the printed command, with 2 epochs in all instead of 500
    done = subprocess.run([*shlex.split(resume)[:-4], "--train#trainer#max_epochs", "2", "--resume", "True"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and "resume: restored" in done.stdout + done.stderr, done.stderr[-3000:]

    # a new dataset: the refusal offers no resume, and --resume True says why instead of a state_dict traceback
    other = write_synthetic_msd(tmp_path / "other")
    train_other = ["run", "--config_file", config_files(bundle, ["train.json"]), *TRAIN_2, "--dataset_dir", other]
    last = _fails(train_other, tmp_path).strip().splitlines()[-1]
    model = bundle / "models" / "model.pt"
    assert last.startswith(f"ModelExistsError: {model} already holds a trained model") and "--resume" not in last
    assert "It was trained with another configuration (num_classes 3 there, 4 here; class_names" in last
    last = _fails([*train_other, "--resume", "True"], tmp_path).strip().splitlines()[-1]
    assert last.startswith(f"ModelExistsError: {model} was trained with another configuration (num_classes 3 there")
    assert last.endswith("so this run cannot resume it. Pass --ckpt_dir OTHER_FOLDER to train anew beside it, or "
                         "--overwrite True without --resume to replace it.")  # fmt: skip
