"""SHA-256 records of the files a bundle writes, and atomic writes: what ``pack``, ``unpack`` and the model record need,
without torch (:mod:`.checkpoint` saves and loads the checkpoints themselves).

Every file written through :func:`record_sha256` gets its SHA-256 in ``sha256_manifest.json`` next to it, with a
sequence number that grows with every write in the folder; :func:`verify_sha256` checks a file against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "SHA256_MANIFEST", "TEMP_PREFIX", "CheckpointIntegrityError", "atomic_write", "file_sha256", "manifest_bytes",
    "read_manifest", "record_sha256", "update_manifest", "verify_sha256",
]  # fmt: skip

SHA256_MANIFEST = "sha256_manifest.json"
# Temporary files start with this, so a saver can recognise (and clear) the leftovers of a killed save.
TEMP_PREFIX = ".partial-"


class CheckpointIntegrityError(ValueError):
    """A checkpoint's SHA-256 does not match its record, or it has no record."""


def _fsync_dir(directory: Path) -> None:
    # Directory fsync makes the rename itself durable; some filesystems (and Windows) do not support it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it, and rename it onto ``path``.

    A reader (or a process started after a kill or power loss) sees either the old file or the complete new one.
    """
    fd, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would have under the current umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_name)
        raise
    _fsync_dir(path.parent)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | os.PathLike) -> dict[str, dict]:
    """Return ``{file name: record}`` from the ``sha256_manifest.json`` of ``directory`` (empty when absent).

    Each record has ``sha256``, ``sequence`` (a counter that grows with every write in the directory) and, for
    checkpoints of several objects, ``keys`` (their names).
    """
    path = Path(directory) / SHA256_MANIFEST
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointIntegrityError(f"{path}: not a valid SHA-256 manifest: {err}") from err
    return dict(files)


def manifest_bytes(files: Mapping[str, dict]) -> bytes:
    """The ``sha256_manifest.json`` that holds ``{file name: record}``."""
    return json.dumps({"files": dict(sorted(files.items()))}, indent=1).encode()


def _write_manifest(directory: Path, files: Mapping[str, dict]) -> None:
    text = manifest_bytes(files)
    atomic_write(directory / SHA256_MANIFEST, lambda f: f.write(text))


def update_manifest(directory: Path, added: Mapping[str, dict], removed: tuple[str, ...] = ()) -> None:
    files = read_manifest(directory)
    sequence = max((record.get("sequence", 0) for record in files.values()), default=0)
    for name in removed:
        files.pop(name, None)
    for name, record in added.items():
        sequence += 1
        files[name] = {**record, "sequence": sequence}
    _write_manifest(directory, files)


def record_sha256(path: str | os.PathLike, keys: list[str] | None = None) -> str:
    """Compute the SHA-256 of ``path`` and record it in the manifest next to it.

    Args:
        path: the file (e.g. ``models/model.pt``).
        keys: names of the objects the checkpoint holds, recorded so that a resume can find a full training state.

    Returns:
        The hex digest.
    """
    path = Path(path)
    digest = file_sha256(path)
    record: dict[str, Any] = {"sha256": digest}
    if keys is not None:
        record["keys"] = sorted(keys)
    update_manifest(path.parent, {path.name: record})
    return digest


def verify_sha256(path: str | os.PathLike) -> str:
    """Check ``path`` against the SHA-256 recorded in the manifest next to it.

    Returns:
        The hex digest.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointIntegrityError: no record for the file, or the file's SHA-256 differs from its record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    record = read_manifest(path.parent).get(path.name)
    if record is None:
        raise CheckpointIntegrityError(
            f"{path}: no SHA-256 recorded in {path.parent / SHA256_MANIFEST}; if you trust this file, record it with "
            f"monai_ext.sharing.hashes.record_sha256('{path}')"
        )
    digest = file_sha256(path)
    if digest != record["sha256"]:
        raise CheckpointIntegrityError(
            f"{path}: SHA-256 mismatch, the file changed after it was recorded (corrupt or replaced): "
            f"recorded {record['sha256']}, found {digest}"
        )
    return digest
