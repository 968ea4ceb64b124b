"""Checkpoints that survive a kill, carry a SHA-256 record, and cannot run code when loaded.

What MONAI and Ignite leave open, and what this module adds:

- MONAI's ``CheckpointSaver`` writes with ``DiskSaver(atomic=False)``: a kill during ``torch.save`` leaves a truncated
  file. Ignite's ``atomic=True`` writes a temporary file and renames it, but never fsyncs, so after a power loss the
  rename may be on disk while the data is not. :func:`atomic_torch_save` fsyncs the file and its directory.
- Ignite's ``Checkpoint`` removes the previous file *before* writing the next one, so a kill in between leaves no
  checkpoint at all. :class:`AtomicDiskSaver` postpones removals until the new file is safely written.
- Every file written here gets its SHA-256 recorded in ``sha256_manifest.json`` next to it; :func:`load_checkpoint`
  and :class:`CheckedCheckpointLoader` verify it and load with ``weights_only=True``, refusing pickled objects with a
  clear error instead of a raw unpickling traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pickle
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite import distributed as idist
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_ext.legacy.checkpoint import load_weights_only, only_builtin_safe_globals
from monai_ext.sharing.hashes import (
    SHA256_MANIFEST,
    TEMP_PREFIX,
    CheckpointIntegrityError,
    atomic_write,
    file_sha256,
    manifest_bytes,
    read_manifest,
    record_sha256,
    update_manifest,
    verify_sha256,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SHA256_MANIFEST",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "CheckedCheckpointLoader",
    "CheckpointIntegrityError",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "atomic_write",
    "file_sha256",
    "load_checkpoint",
    "manifest_bytes",
    "read_manifest",
    "record_sha256",
    "save_checkpoint",
    "verified",
    "verify_sha256",
]


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled Python objects, which ``weights_only=True`` refuses to load."""


def atomic_torch_save(obj: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``torch.save`` that never leaves a partial file at ``path``, even when the process is killed mid-write.

    Args:
        obj: what to save.
        path: destination; its directory must exist. An existing file is replaced only once the new one is on disk.
        kwargs: passed to ``torch.save``.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save(obj, f, **kwargs))
    return path


def save_checkpoint(obj: Any, path: str | os.PathLike, **kwargs: Any) -> str:
    """Save atomically (:func:`atomic_torch_save`) and record the SHA-256 next to the file, for loaders to verify.

    Args:
        obj: what to save, e.g. a state dict.
        path: destination file; its directory must exist.
        kwargs: passed to ``torch.save``.

    Returns:
        The hex SHA-256 of the written file.
    """
    path = atomic_torch_save(obj, path, **kwargs)
    return record_sha256(path, keys=_checkpoint_keys(obj))


def verified(obj: Any, path: str | os.PathLike) -> Any:
    """Return ``obj`` once ``path`` matches its recorded SHA-256; for configs, e.g. the network that
    ``python -m monai.bundle ckpt_export`` loads ``path`` into, which MONAI loads without any hash check.

    Raises:
        FileNotFoundError, CheckpointIntegrityError: as :func:`verify_sha256`.
    """
    verify_sha256(path)
    return obj


def _unsafe(path: str | os.PathLike, err: Exception) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused to load, it holds pickled Python objects besides tensors and plain containers, and "
        f"loading them could run arbitrary code. Save state dicts only (module.state_dict(), "
        f"optimizer.state_dict()). Details: {str(err).splitlines()[0]}"
    )


def _refuse_unverified(verify: Any) -> None:
    if verify is not True:
        raise ValueError(
            "checkpoint verification cannot be switched off (verify must be True): if you trust a file that has no "
            "SHA-256 record, record one with `python -m monai_ext record_sha256 PATH` after checking it yourself."
        )


def load_checkpoint(path: str | os.PathLike, verify: bool = True, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running code: SHA-256 checked, then a weights-only load.

    The load takes only PyTorch's built-in allow-list of types, whatever ``torch.serialization.add_safe_globals``
    registered (see :func:`monai_ext.legacy.checkpoint.load_weights_only`).

    Args:
        path: the checkpoint file.
        verify: must be ``True``; kept so that a config asking for ``False`` gets a clear refusal.
        map_location: passed to ``torch.load``.

    Returns:
        What the file holds (tensors and plain containers only).

    Raises:
        ValueError: ``verify`` is not ``True``.
        FileNotFoundError: the file does not exist.
        CheckpointIntegrityError: the hash is unrecorded or differs.
        UnsafeCheckpointError: the file holds pickled objects besides tensors and plain containers.
    """
    _refuse_unverified(verify)
    path = Path(path)
    verify_sha256(path)
    try:
        return load_weights_only(path, map_location=map_location)
    except pickle.UnpicklingError as err:
        raise _unsafe(path, err) from err


def _checkpoint_keys(checkpoint: Any) -> list[str] | None:
    # Ignite saves several objects as {name: state_dict}; a single object is saved as its bare state dict.
    if isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, Mapping) for v in checkpoint.values()):
        return sorted(map(str, checkpoint))
    return None


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block is done, then act on it as before: a file renamed into place but not
    yet recorded would be refused on resume, with the checkpoint before it already marked for removal."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    elif received and previous != signal.SIG_IGN:
        os.kill(os.getpid(), signal.SIGINT)


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that fsyncs, keeps the previous file until the next is written, and records SHA-256.

    Usable wherever Ignite takes a save handler (``Checkpoint(to_save, AtomicDiskSaver(dirname))``).

    Args:
        dirname: directory to write to (created if missing).
        filename: a fixed file name to use instead of the one Ignite generates (as MONAI's ``CheckpointSaver`` does
            for ``key_metric_filename``); rewriting it replaces the file atomically.
        create_dir: create ``dirname`` if it does not exist.
        require_empty: refuse a directory that already holds ``.pt`` files.
        save_on_rank: the distributed rank that writes.
        record: more fields for the file's manifest record (JSON values), e.g. the model's configuration.
        kwargs: passed to ``torch.save``.
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        filename: str | None = None,
        create_dir: bool = True,
        require_empty: bool = False,
        save_on_rank: int = 0,
        record: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirname,
            atomic=True,
            create_dir=create_dir,
            require_empty=require_empty,
            save_on_rank=save_on_rank,
            **kwargs,
        )
        self.filename = filename
        self.record = dict(record or {})
        self._pending_removal: list[str] = []
        if idist.get_rank() == save_on_rank:
            for leftover in self.dirname.glob(f"{TEMP_PREFIX}*"):
                leftover.unlink(missing_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        with _ctrl_c_after():
            self._save(checkpoint, self.filename or filename, metadata)

    def _save(self, checkpoint: Mapping, filename: str, metadata: Mapping | None) -> None:
        atomic_torch_save(checkpoint, self.dirname / filename, **self.kwargs)
        stale = tuple(name for name in self._pending_removal if name != filename)
        self._pending_removal.clear()
        record: dict[str, Any] = {**self.record, "sha256": file_sha256(self.dirname / filename)}
        keys = _checkpoint_keys(checkpoint)
        if keys is not None:
            record["keys"] = keys
        score = ""
        if metadata and metadata.get("score_name") is not None and metadata.get("priority") is not None:
            record["score"] = {"name": str(metadata["score_name"]), "value": float(metadata["priority"])}
            score = f" ({metadata['score_name'].replace('_', ' ')} {float(metadata['priority']):.4f})"
        if self.filename:  # the best or final model: when, so that a later run can say what it would replace
            record["saved"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        update_manifest(self.dirname, {filename: record}, removed=stale)
        for name in stale:
            (self.dirname / name).unlink(missing_ok=True)
        # the fixed name is the file a user looks for (the best or final model); rolling checkpoints stay quiet
        level = logging.INFO if self.filename else logging.DEBUG
        logger.log(level, f"saved {(self.dirname / filename).resolve()}{score}, SHA-256 recorded")

    def remove(self, filename: str) -> None:
        # Ignite calls remove() just before writing the next file; deleting now would leave no checkpoint at all if
        # the process died in between, so the deletion happens after the next successful write.
        if idist.get_rank() == self.save_on_rank:
            self._pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) writing through :class:`AtomicDiskSaver`.

    It also has ``state_dict()``: the key-metric tracking list (scores and file names of the best models so far).
    Put this saver in a resumable training state (see :class:`monai_ext.bundle.resume.ResumableCheckpointer`) so
    that after a resume a worse model does not replace the best one.

    Args:
        save_dir, save_dict, kwargs: as for ``monai.handlers.CheckpointSaver``.
        configuration: recorded with the best and the final model in the SHA-256 manifest (JSON values: class count,
            channels, spacing, ROI, normalisation), where :mod:`monai_ext.bundle.model_record` reads it back.
    """

    def __init__(
        self, save_dir: str, save_dict: dict, configuration: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        record = {"configuration": json.loads(json.dumps(configuration))} if configuration is not None else {}
        fixed_names = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        # MONAI builds its Checkpoint objects in __init__ with a private non-atomic saver; swap in ours.
        for attribute, filename in fixed_names.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(
                    save_dir, filename=filename, record=record if filename else None
                )

    def state_dict(self) -> dict[str, list]:
        """Return the key-metric tracking list: ``{"_saved": [(score, file name), ...]}``."""
        if self._key_metric_checkpoint is None:
            return {"_saved": []}
        return dict(self._key_metric_checkpoint.state_dict())


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) that verifies the file's SHA-256 first.

    MONAI already loads with ``weights_only=True``; this adds the hash check, loads with only PyTorch's built-in
    allow-list of types (nothing that ``add_safe_globals`` registered), and turns the unpickling failure of a
    checkpoint that holds Python objects into :class:`UnsafeCheckpointError` naming the file. Neither check can be
    switched off from a config.

    Args:
        verify: must be ``True``; kept so that a config asking for ``False`` gets a clear refusal.
        args, kwargs: as for ``monai.handlers.CheckpointLoader``.

    Raises:
        ValueError: ``verify`` is not ``True``.
    """

    def __init__(self, *args: Any, verify: bool = True, **kwargs: Any) -> None:
        _refuse_unverified(verify)
        super().__init__(*args, **kwargs)

    def __call__(self, engine: Any) -> None:
        verify_sha256(self.load_path)
        try:
            with only_builtin_safe_globals():
                super().__call__(engine)
        except pickle.UnpicklingError as err:
            raise _unsafe(self.load_path, err) from err
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            raise ValueError(_shape_mismatch(self.load_path, err)) from None


def _shape_mismatch(path: str | os.PathLike, err: Exception) -> str:
    path = Path(path)
    mismatches = "; ".join(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
    configuration = read_manifest(path.parent).get(path.name, {}).get("configuration")
    if not configuration:
        return f"{path}: the network built from the config does not fit this model: {mismatches}"
    trained = ", ".join(
        f"{k}={configuration[k]}" for k in ("num_classes", "in_channels", "roi_size") if k in configuration
    )
    return (
        f"{path} was trained with {trained} (recorded in {path.parent / SHA256_MANIFEST}), and the network built from "
        f"the config differs: {mismatches}. The model's recorded values win: remove the overrides that change them."
    )
