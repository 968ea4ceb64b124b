import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from monai_ext.bundle.resume import BestMetricState, ResumableCheckpointer, find_latest_checkpoint
from monai_ext.sharing.checkpoint import load_checkpoint, read_manifest
from monai_ext.sharing.hashes import CheckpointIntegrityError

sys.path.insert(0, str(Path(__file__).parent))
import tiny_training  # noqa: E402

SCRIPT = Path(__file__).parent / "tiny_training.py"
EPOCHS = 6


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    summary = tiny_training.train(out_dir, EPOCHS)
    return out_dir, summary


def _same_weights(dir_a, dir_b, name):
    a, b = load_checkpoint(dir_a / name), load_checkpoint(dir_b / name)
    a, b = a.get("network", a), b.get("network", b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reference_run_has_its_best_epoch_mid_run(uninterrupted):
    _, summary = uninterrupted
    # The resume tests below are only meaningful when later epochs are worse than the best one.
    assert summary["epochs_run"] == list(range(1, EPOCHS + 1))
    assert 1 < summary["best_metric_epoch"] < EPOCHS - 1
    assert summary["lr"] == pytest.approx(tiny_training.LR * tiny_training.LR_GAMMA**EPOCHS)


def test_resume_continues_epochs_lr_and_best_model(tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    stop_after = reference["best_metric_epoch"] + 1
    tiny_training.train(tmp_path, stop_after)
    resumed = tiny_training.train(tmp_path, EPOCHS, resume=True)
    assert resumed["resumed_from"] == f"checkpoint_epoch={stop_after}.pt"
    assert resumed["epochs_run"] == list(range(stop_after + 1, EPOCHS + 1))
    for key in ("final_epoch", "lr", "best_metric", "best_metric_epoch"):
        assert resumed[key] == reference[key], key
    assert _same_weights(tmp_path, reference_dir, "model.pt")
    assert _same_weights(tmp_path, reference_dir, f"checkpoint_epoch={EPOCHS}.pt")
    assert [p.name for p in tmp_path.glob("checkpoint_*.pt")] == [f"checkpoint_epoch={EPOCHS}.pt"]


def test_resuming_only_what_monai_loader_restores_loses_the_best_model(tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    stop_after = reference["best_metric_epoch"] + 1
    tiny_training.train(tmp_path, stop_after, carry_best=False)
    resumed = tiny_training.train(tmp_path, EPOCHS, resume=True, carry_best=False)
    # Network, optimizer, scheduler and trainer alone carry the epochs and the learning rate...
    assert resumed["final_epoch"] == EPOCHS and resumed["lr"] == reference["lr"]
    # ...but the best-model saver starts afresh and overwrites the best model with a worse, later one.
    assert resumed["best_metric_epoch"] == stop_after + 1 != reference["best_metric_epoch"]
    assert not _same_weights(tmp_path, reference_dir, "model.pt")


def test_without_resume_switch_training_starts_afresh(tmp_path):
    tiny_training.train(tmp_path, 2)
    again = tiny_training.train(tmp_path, 2)
    assert again["resumed_from"] is None and again["epochs_run"] == [1, 2]


def test_checkpoint_beyond_max_epochs_is_a_clear_error(tmp_path):
    tiny_training.train(tmp_path, 3)
    with pytest.raises(ValueError, match=r"checkpoint_epoch=3\.pt: the checkpoint has finished epoch 3, beyond"):
        tiny_training.train(tmp_path, 2, resume=True)


def test_latest_checkpoint_must_hold_every_key(tmp_path):
    tiny_training.train(tmp_path, 1)
    assert find_latest_checkpoint(tmp_path, ["network", "trainer"]) == tmp_path / "checkpoint_epoch=1.pt"
    assert find_latest_checkpoint(tmp_path, ["network", "ema"]) is None
    assert "keys" not in read_manifest(tmp_path)["model.pt"]


def test_argument_validation():
    with pytest.raises(ValueError, match="at least one object"):
        ResumableCheckpointer("unused", {})
    with pytest.raises(ValueError, match=r"\['lr'\] have no state_dict"):
        ResumableCheckpointer("unused", {"lr": 0.1})
    with pytest.raises(TypeError, match="must be an Ignite engine"):
        BestMetricState(object())
    engine = Engine(lambda engine, batch: None)
    engine.state.best_metric, engine.state.best_metric_epoch = 0.5, 3
    restored = Engine(lambda engine, batch: None)
    BestMetricState(restored).load_state_dict(BestMetricState(engine).state_dict())
    assert (restored.state.best_metric, restored.state.best_metric_epoch) == (0.5, 3)


def _epoch_of(checkpoint):
    trainer = load_checkpoint(checkpoint)["trainer"]
    return trainer["iteration"] // trainer["epoch_length"]


def _saved_epoch(out_dir):
    """The epoch of the newest complete training checkpoint."""
    return _epoch_of(find_latest_checkpoint(out_dir, ["trainer"]))


def _saved_epoch_while_training(out_dir):
    """:func:`_saved_epoch`, or 0 while there is none yet or the one found is being replaced.

    A superseded checkpoint loses its manifest record just before its file is deleted, so a reader between the two
    finds a file with no record (``CheckpointIntegrityError``) or, a moment later, no file.
    """
    latest = find_latest_checkpoint(out_dir, ["trainer"])
    if latest is None:
        return 0
    try:
        return _epoch_of(latest)
    except (CheckpointIntegrityError, FileNotFoundError):
        return 0


def _wait_for(predicate, process, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.02)


@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_and_finishes(tmp_path, uninterrupted):
    reference_dir, reference = uninterrupted
    kill_after = reference["best_metric_epoch"]
    # The same thread count as the in-process reference run: float results depend on it.
    options = ["--max_epochs", str(EPOCHS), "--iteration_delay_s", "0.1", "--threads", str(torch.get_num_threads())]
    command = [sys.executable, str(SCRIPT), str(tmp_path), *options]
    process = subprocess.Popen(command)
    try:
        _wait_for(lambda: _saved_epoch_while_training(tmp_path) >= kill_after, process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists(), "the run finished before it was killed"
    latest = _saved_epoch(tmp_path)

    subprocess.run([*command, "--resume"], check=True, timeout=300)
    resumed = json.loads((tmp_path / "summary.json").read_text())
    # At most the epoch in progress is lost: the resumed run starts right after the latest saved epoch.
    assert resumed["resumed_from"] == f"checkpoint_epoch={latest}.pt"
    assert resumed["epochs_run"] == list(range(latest + 1, EPOCHS + 1))
    for key in ("final_epoch", "lr", "best_metric", "best_metric_epoch"):
        assert resumed[key] == reference[key], key
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    net.load_state_dict(load_checkpoint(tmp_path / "model.pt"))
    assert _same_weights(tmp_path, reference_dir, "model.pt")


def test_same_seed_gives_bitwise_identical_weights(tmp_path):
    runs = [tiny_training.train(tmp_path / name, 2, seed=seed, shuffle=True) for name, seed in (("a", 0), ("b", 0))]
    assert runs[0] == runs[1]
    assert _same_weights(tmp_path / "a", tmp_path / "b", "checkpoint_epoch=2.pt")
    tiny_training.train(tmp_path / "c", 2, seed=1, shuffle=True)
    assert not _same_weights(tmp_path / "a", tmp_path / "c", "checkpoint_epoch=2.pt")
