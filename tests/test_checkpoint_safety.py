import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_ext.sharing.checkpoint import (
    SHA256_MANIFEST,
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    CheckedCheckpointLoader,
    CheckpointIntegrityError,
    UnsafeCheckpointError,
    atomic_torch_save,
    file_sha256,
    load_checkpoint,
    read_manifest,
    record_sha256,
    save_checkpoint,
    verify_sha256,
)


class FailsOnSecondSave:
    """A state holder whose second state dict cannot be pickled, so the second ``torch.save`` fails midway."""

    def __init__(self):
        self.calls = 0

    def state_dict(self):
        self.calls += 1
        return {"ok": torch.ones(3)} if self.calls == 1 else {"unpicklable": lambda: None}

    def load_state_dict(self, state_dict):
        pass


def _run_two_epochs(handler_attach):
    engine = Engine(lambda engine, batch: None)
    handler_attach(engine)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        engine.run(range(2), max_epochs=2)


def test_atomic_save_round_trip_has_plain_permissions_and_no_leftovers(tmp_path):
    path = atomic_torch_save({"w": torch.arange(4.0)}, tmp_path / "a.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_failed_save_keeps_previous_checkpoint_unlike_ignite(tmp_path):
    ignite_dir, ours_dir = tmp_path / "ignite", tmp_path / "ours"
    for directory, saver in ((ignite_dir, DiskSaver), (ours_dir, AtomicDiskSaver)):
        checkpoint = Checkpoint({"model": FailsOnSecondSave()}, saver(directory), n_saved=1)
        _run_two_epochs(
            lambda engine, checkpoint=checkpoint: engine.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
        )
    # Ignite (atomic=True) deletes the previous file before writing the next: nothing is left.
    assert list(ignite_dir.glob("*.pt")) == []
    # Ours keeps it until a new one is safely written.
    kept = list(ours_dir.glob("*.pt"))
    assert [p.name for p in kept] == ["model_2.pt"]  # named after iteration 2, the end of epoch 1
    assert torch.equal(load_checkpoint(kept[0])["ok"], torch.ones(3))


def test_failed_save_keeps_previous_checkpoint_unlike_monai(tmp_path):
    monai_dir, ours_dir = tmp_path / "monai", tmp_path / "ours"
    for directory, saver_class in ((monai_dir, CheckpointSaver), (ours_dir, AtomicCheckpointSaver)):
        saver = saver_class(str(directory), {"model": FailsOnSecondSave()}, save_interval=1, n_saved=1)
        _run_two_epochs(saver.attach)
    # MONAI (DiskSaver atomic=False) removes the old file, then leaves a half-written new one.
    assert [p.name for p in monai_dir.glob("*.pt")] == ["model_epoch=2.pt"]
    with pytest.raises(RuntimeError, match="corrupted"):
        torch.load(monai_dir / "model_epoch=2.pt", weights_only=True)
    assert [p.name for p in ours_dir.glob("*.pt")] == ["model_epoch=1.pt"]
    verify_sha256(ours_dir / "model_epoch=1.pt")


def test_fixed_filename_is_replaced_in_place_and_manifest_follows(tmp_path):
    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"w": torch.zeros(2)}, "ignored_name_1.pt")
    first = file_sha256(tmp_path / "model.pt")
    saver.remove("ignored_name_1.pt")
    saver({"w": torch.ones(2)}, "ignored_name_2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", SHA256_MANIFEST]
    record = read_manifest(tmp_path)["model.pt"]
    assert record["sha256"] == file_sha256(tmp_path / "model.pt") != first
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["w"], torch.ones(2))


def test_leftover_partial_files_are_cleared(tmp_path):
    (tmp_path / ".partial-model.pt.abc123").write_bytes(b"half a checkpoint")
    AtomicDiskSaver(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_hash_mismatch_and_unrecorded_file_are_clear_errors(tmp_path):
    path = atomic_torch_save({"w": torch.ones(3)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointIntegrityError, match=r"model\.pt: no SHA-256 recorded"):
        load_checkpoint(path)
    digest = record_sha256(path)
    assert json.loads((tmp_path / SHA256_MANIFEST).read_text())["files"]["model.pt"]["sha256"] == digest
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    torch.save({"w": torch.zeros(3)}, path)  # replaced behind the manifest's back
    with pytest.raises(CheckpointIntegrityError, match=rf"{path}: SHA-256 mismatch.*recorded {digest}"):
        load_checkpoint(path)


def test_tampered_file_loads_silently_in_monai_and_is_refused_by_ours(tmp_path):
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    atomic_torch_save(net.state_dict(), path)
    record_sha256(path)
    tampered = {k: torch.full_like(v, 7.0) for k, v in net.state_dict().items()}
    torch.save(tampered, path)
    engine = Engine(lambda engine, batch: None)
    CheckpointLoader(str(path), {"net": net})(engine)
    assert torch.all(net.weight == 7.0), "MONAI's loader takes the tampered weights"
    with pytest.raises(CheckpointIntegrityError, match="SHA-256 mismatch"):
        CheckedCheckpointLoader(str(path), {"net": torch.nn.Linear(2, 2)})(engine)


class Payload:
    """Stands for an object a malicious checkpoint would carry; unpickling it could run code."""


def test_pickled_objects_are_refused_with_a_clear_error(tmp_path):
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    torch.save({"net": net.state_dict(), "extra": Payload()}, path)
    record_sha256(path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: refused to load, it holds pickled Python objects"):
        load_checkpoint(path)
    engine = Engine(lambda engine, batch: None)
    # MONAI also refuses (weights_only=True) but with torch's raw unpickling error.
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader(str(path), {"net": net})(engine)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        CheckedCheckpointLoader(str(path), {"net": net})(engine)


def test_save_checkpoint_records_what_load_checkpoint_verifies(tmp_path):
    state = {"network": {"w": torch.ones(2)}, "optimizer": {"lr": torch.tensor(0.1)}}
    digest = save_checkpoint(state, tmp_path / "model.pt")
    assert digest == file_sha256(tmp_path / "model.pt")
    assert read_manifest(tmp_path)["model.pt"]["keys"] == ["network", "optimizer"]
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["network"]["w"], torch.ones(2))


def test_checked_loader_loads_a_recorded_checkpoint(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver(source.state_dict(), "model.pt")
    CheckedCheckpointLoader(str(tmp_path / "model.pt"), {"net": target})(Engine(lambda engine, batch: None))
    assert torch.equal(target.weight, source.weight)


WRITER = """
import sys, torch
from monai_ext.sharing.checkpoint import atomic_torch_save
step = 0
while True:
    step += 1
    atomic_torch_save({"step": torch.tensor(step), "data": torch.full((1 << 21,), float(step))}, sys.argv[1])
    print(step, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_repeated_saves_never_leaves_a_corrupt_file(tmp_path):
    path = tmp_path / "latest.pt"
    for delay in (0.05, 0.23):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        process.stdout.readline()  # at least one save finished
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        loaded = torch.load(path, weights_only=True)
        assert torch.all(loaded["data"] == loaded["step"].float())


def test_verification_cannot_be_switched_off_from_a_config(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="verification cannot be switched off"):
        CheckedCheckpointLoader(load_path=str(tmp_path / "model.pt"), load_dict={"model": model}, verify=False)
    with pytest.raises(ValueError, match="record_sha256 PATH"):
        load_checkpoint(tmp_path / "model.pt", verify=False)


class _WritesMarker:
    """Unpickles into a call of numpy.save(marker, 0): harmless, but proof that the file ran code.

    (PyTorch refuses globals of some modules, such as os, even when registered; numpy's are not among them.)
    """

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return numpy.save, (self.marker, 0)


@pytest.fixture
def safe_globals_restored():
    registered = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(registered)


def test_add_safe_globals_cannot_open_our_loaders_to_code(tmp_path, safe_globals_restored):
    crafted = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "payload": _WritesMarker(tmp_path / "RAN")}, crafted)
    record_sha256(crafted)  # the author recorded the hash: the file is intact, only hostile
    torch.serialization.add_safe_globals([numpy.save])  # what a hostile config can run before loading

    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_checkpoint(crafted)
    model = torch.nn.Module()
    engine = Engine(lambda engine, batch: None)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        CheckedCheckpointLoader(load_path=str(crafted), load_dict={"model": model}, strict=False)(engine)
    assert not (tmp_path / "RAN.npy").exists()
    assert numpy.save in torch.serialization.get_safe_globals(), "the caller's registry is restored"

    torch.load(crafted, weights_only=True)  # PyTorch's own weights-only load, side by side: the payload runs
    assert (tmp_path / "RAN.npy").is_file()


def test_a_ctrl_c_during_a_save_waits_until_the_checkpoint_is_recorded(tmp_path):
    """SIGINT between the file's rename and its SHA-256 record left a checkpoint that resume refuses; it is now held
    until the save is complete, then raised."""
    import hashlib
    import signal

    from monai_ext.sharing.checkpoint import AtomicDiskSaver, read_manifest

    saver = AtomicDiskSaver(tmp_path)
    interrupt_while_writing = {"model": _InterruptsWhenPickled(), "weights": torch.zeros(2)}
    # Ctrl-C as in a Python started from a terminal: a CI job may start the tests with SIGINT ignored
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            saver(interrupt_while_writing, "checkpoint_epoch=1.pt")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C acts at once again"
    finally:
        signal.signal(signal.SIGINT, inherited)
    recorded = read_manifest(tmp_path)["checkpoint_epoch=1.pt"]["sha256"]
    assert recorded == hashlib.sha256((tmp_path / "checkpoint_epoch=1.pt").read_bytes()).hexdigest()


class _InterruptsWhenPickled:
    """Sends this process SIGINT while torch.save writes it, as a Ctrl-C in the middle of a save would."""

    def __reduce__(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGINT)
        return (dict, ())
