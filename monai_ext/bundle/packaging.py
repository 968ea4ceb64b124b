"""Packing a bundle into a zip another lab can verify, and unpacking one safely.

The archive holds what a bundle needs to run (configs, docs, license, model files and any bundle scripts) and a
manifest with the SHA-256 of every file and the package versions it was made with. Run outputs, training
checkpoints, caches, logs, TensorBoard runs and datasets are left out. Unpacking refuses path traversal (``..``,
absolute paths), links and any file whose hash differs, extracts into a fresh directory only once everything checks
out, audits the configs (:mod:`monai_ext.bundle.audit`) and says what to install and how to run it. A bundle folder
is complete on its own, so the archive holds that folder and nothing from around it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import shutil
import stat
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from monai_ext.bundle.audit import audit_bundle, format_report
from monai_ext.bundle.checkpoint import SHA256_MANIFEST, atomic_write, read_manifest, verify_sha256

__all__ = [
    "PACKAGE_MANIFEST",
    "PackageError",
    "install_instructions",
    "pack",
    "pack_bundle",
    "run_command",
    "unpack",
    "unpack_bundle",
]

PACKAGE_MANIFEST = "MONAI_EXT_PACKAGE.json"
FORMAT = "monai_ext-bundle-package/1"
INCLUDED_DIRS = ("configs", "docs", "models", "scripts")
INCLUDED_ROOT_FILES = ("LICENSE*", "README*", "NOTICE*", "CHANGELOG*", "requirements*.txt")
# Left out even inside the included directories: caches, logs, TensorBoard runs, resume checkpoints, temp files.
EXCLUDED_NAMES = (
    "__pycache__", "*.pyc", ".*", "*.log", "events.out.tfevents.*", "checkpoint*.pt", "*.partial-*", "*.tmp",
)  # fmt: skip
# Distribution name -> what a receiving lab installs (names as pip knows them).
PACKAGES = ("monai-ext", "monai", "torch", "pytorch-ignite", "numpy", "nibabel")
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can store; fixed so the same bundle gives the same archive


class PackageError(ValueError):
    """A bundle archive is unsafe or does not match its manifest; the message names the offending entry."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _excluded(relative: PurePosixPath) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in EXCLUDED_NAMES)


def _bundle_files(root: Path) -> list[PurePosixPath]:
    files = []
    for path in sorted(root.rglob("*")):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        top = relative.parts[0]
        wanted = (top in INCLUDED_DIRS and len(relative.parts) > 1) or (
            len(relative.parts) == 1 and any(fnmatch.fnmatch(top, p) for p in INCLUDED_ROOT_FILES)
        )
        if not wanted or _excluded(relative):
            continue
        if path.is_symlink():
            raise PackageError(f"{path}: is a link; links are not packed (they may point outside the bundle)")
        if path.is_file():
            files.append(relative)
    return files


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def run_command(bundle_dir: str | os.PathLike) -> str:
    """Return the command that trains an unpacked bundle: MONAI's runner on its ``configs/train.json``."""
    return f"python -m monai.bundle run --config_file {Path(bundle_dir).resolve() / 'configs' / 'train.json'}"


def pack_bundle(bundle_dir: str | os.PathLike, out_zip: str | os.PathLike) -> dict[str, Any]:
    """Write ``out_zip`` holding the bundle's configs, docs, license, models and scripts plus a hash manifest.

    Model files with a SHA-256 record (``models/sha256_manifest.json``) are verified first, so a corrupt or replaced
    model is never shipped.

    Args:
        bundle_dir: the bundle root (holding ``configs/``).
        out_zip: the archive to write (atomically; an existing file is replaced).

    Returns:
        The manifest written into the archive: ``format``, ``bundle``, ``versions`` and ``files`` (path -> SHA-256).

    Raises:
        FileNotFoundError: ``bundle_dir/configs`` does not exist.
        PackageError: the bundle holds a link where files are packed.
        CheckpointIntegrityError: a model file differs from its recorded SHA-256.
    """
    root = Path(bundle_dir).resolve()
    if not (root / "configs").is_dir():
        raise FileNotFoundError(f"{root / 'configs'}: no configs directory, is {bundle_dir} a MONAI bundle?")
    files = _bundle_files(root)
    for relative in files:
        if relative.name in read_manifest((root / relative).parent) and relative.parts[0] == "models":
            verify_sha256(root / relative)
    contents = {relative: (root / relative).read_bytes() for relative in files}
    manifest = {
        "format": FORMAT,
        "bundle": root.name,
        "versions": _versions(),
        "files": {str(relative): _sha256_bytes(data) for relative, data in contents.items()},
    }

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in [(PACKAGE_MANIFEST, json.dumps(manifest, indent=1).encode())] + [
                (str(relative), data) for relative, data in contents.items()
            ]:
                info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)

    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_zip, write)
    return manifest


def _check_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or path.is_absolute():
        raise PackageError(f"entry {name!r}: absolute path refused")
    if ".." in path.parts or "\\" in name:
        raise PackageError(f"entry {name!r}: path traversal refused ('..' or backslash in the path)")
    return path


def _read_manifest(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(archive.read(PACKAGE_MANIFEST))
    except KeyError:
        raise PackageError(f"{zip_path}: no {PACKAGE_MANIFEST}; not made by `monai_ext pack`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackageError(f"{zip_path}: {PACKAGE_MANIFEST} is not valid JSON: {err}") from err
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise PackageError(f"{zip_path}: {PACKAGE_MANIFEST} is not a {FORMAT} manifest")
    return manifest


def unpack_bundle(zip_path: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Verify and extract an archive made by :func:`pack_bundle` into ``dest``.

    Every entry is checked before anything lands in ``dest``: files are extracted into a temporary directory next to
    it and moved into place only when all names are safe and all hashes match.

    Args:
        zip_path: the archive.
        dest: the new bundle root; it must not exist, or be an empty directory.

    Returns:
        The archive's manifest.

    Raises:
        PackageError: an absolute or ``..`` entry, a link, a file missing from or absent in the manifest, a hash
            mismatch, or a missing/invalid manifest. The message names the entry.
        FileExistsError: ``dest`` exists and is not empty.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: exists and is not empty; unpack into a new directory")
    with zipfile.ZipFile(zip_path) as archive:
        manifest = _read_manifest(archive, zip_path)
        for name in manifest["files"]:
            _check_name(name)
        entries = {}
        for info in archive.infolist():
            _check_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PackageError(f"entry {info.filename!r}: links are refused (they may point outside the bundle)")
            if info.is_dir() or info.filename == PACKAGE_MANIFEST:
                continue
            if info.filename in entries:
                raise PackageError(f"entry {info.filename!r}: appears twice in {zip_path}")
            if info.filename not in manifest["files"]:
                raise PackageError(f"entry {info.filename!r}: not listed in {PACKAGE_MANIFEST}")
            entries[info.filename] = info
        missing = sorted(set(manifest["files"]) - set(entries))
        if missing:
            raise PackageError(f"{zip_path}: files listed in {PACKAGE_MANIFEST} are missing: {missing}")

        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".unpack-{dest.name}-", dir=dest.parent))
        try:
            for name, info in entries.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with archive.open(info) as source, open(target, "wb") as sink:
                    for block in iter(lambda source=source: source.read(1 << 20), b""):
                        digest.update(block)
                        sink.write(block)
                if digest.hexdigest() != manifest["files"][name]:
                    raise PackageError(
                        f"entry {name!r}: SHA-256 mismatch, recorded {manifest['files'][name]}, "
                        f"found {digest.hexdigest()}"
                    )
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    for directory in {(dest / name).parent for name in entries}:
        if (directory / SHA256_MANIFEST).is_file():
            for name in read_manifest(directory):
                if (directory / name).is_file():
                    verify_sha256(directory / name)
    return manifest


def install_instructions(manifest: dict[str, Any], bundle_metadata: dict[str, Any] | None = None) -> str:
    """Return the pip command that installs the package versions an archive was made with.

    Args:
        manifest: the archive's manifest (its ``versions``).
        bundle_metadata: the bundle's ``configs/metadata.json``; its ``required_packages_version`` and
            ``optional_packages_version`` pins are added.
    """
    versions = manifest.get("versions", {})
    pins = [f"{name}=={versions[name]}" for name in PACKAGES if name in versions]
    declared = {}
    for field in ("required_packages_version", "optional_packages_version"):
        declared.update((bundle_metadata or {}).get(field) or {})
    pins += [f"{name}=={version}" for name, version in sorted(declared.items()) if name not in versions]
    python = versions.get("python", "unknown")
    return f"made with Python {python}; install the same versions with:\n  pip install {' '.join(pins)}"


def pack(bundle_dir: str, out_zip: str) -> str:
    """Pack a bundle folder (configs, docs, license, models, scripts) into a zip with SHA-256 hashes and versions.

    Args:
        bundle_dir: the bundle root, holding configs/.
        out_zip: the archive to write.
    """
    manifest = pack_bundle(bundle_dir, out_zip)
    listing = "\n".join(f"  {name}" for name in manifest["files"])
    return f"pack: wrote {out_zip} with {len(manifest['files'])} files:\n{listing}"


def unpack(zip_path: str, dest: str, strict: bool = False) -> str:
    """Verify a bundle zip (hashes, no traversal or links), extract it, audit its configs and say what to install.

    Args:
        zip_path: an archive written by `monai_ext pack`.
        dest: a new directory to unpack into.
        strict: exit with status 1 when the audit flags anything (the files stay unpacked for inspection).
    """
    try:
        manifest = unpack_bundle(zip_path, dest)
    except (PackageError, FileExistsError, zipfile.BadZipFile) as err:
        print(f"unpack: refused {zip_path}: {err}")
        raise SystemExit(1) from None
    items = audit_bundle(dest)
    metadata_path = Path(dest) / "configs" / "metadata.json"
    try:
        bundle_metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else None
    except json.JSONDecodeError:
        bundle_metadata = None
    report = "\n".join(
        [
            f"unpack: {len(manifest['files'])} files verified into {dest}",
            format_report(items),
            install_instructions(manifest, bundle_metadata if isinstance(bundle_metadata, dict) else None),
            f"train it with:\n  {run_command(dest)}",
        ]
    )
    if strict and any(item.flags for item in items):
        print(report)
        raise SystemExit(1)
    return report
