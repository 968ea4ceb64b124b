"""Packing a bundle into a zip another lab can verify, and unpacking one safely.

The archive holds what a bundle needs to run (configs, docs, license, model files and any bundle scripts) and a
manifest with the SHA-256 of every file and the package versions it was made with. Run outputs, training
checkpoints, caches, logs, TensorBoard runs and datasets are left out. Unpacking refuses path traversal (``..``,
absolute paths), links and any file whose hash differs, extracts into a fresh directory only once everything checks
out, audits the configs (:mod:`monai_ext.sharing.audit`) and says what to install and how to run it. A bundle folder
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
from collections.abc import Callable
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from monai_ext.sharing import signing
from monai_ext.sharing.hashes import (
    SHA256_MANIFEST,
    atomic_write,
    manifest_bytes,
    read_manifest,
    verify_sha256,
)
from monai_ext.sharing.sandbox.layout import DEFINITION_FOLDERS
from monai_ext.sharing.signing import SIGNATURE_FILE

__all__ = [
    "PACKAGE_MANIFEST",
    "PackageError",
    "install_instructions",
    "pack_bundle",
    "unpack_bundle",
]

PACKAGE_MANIFEST = "MONAI_EXT_PACKAGE.json"
FORMAT = "monai_ext-bundle-package/1"
INCLUDED_DIRS = (*DEFINITION_FOLDERS, "models")
INCLUDED_ROOT_FILES = ("LICENSE*", "README*", "NOTICE*", "CHANGELOG*", "requirements*.txt")
# Left out even inside the included directories: caches, logs, TensorBoard runs, resume checkpoints, temp files.
EXCLUDED_NAMES = (
    "__pycache__", "*.pyc", ".*", "*.log", "events.out.tfevents.*", "checkpoint*.pt", "*.partial-*", "*.tmp",
)  # fmt: skip
# Distribution name -> what a receiving lab installs (names as pip knows them).
PACKAGES = ("monai-ext", "monai", "torch", "pytorch-ignite", "numpy", "nibabel")
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can store; fixed so the same bundle gives the same archive
# What unpack accepts by default; each is an argument. A bundle is configs, docs and a few model files.
MAX_TOTAL_BYTES = 8 << 30
MAX_FILE_BYTES = 4 << 30
MAX_FILES = 10_000
MAX_RATIO = 200  # uncompressed / compressed size of one entry; zip bombs reach 1000 and more


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


def pack_bundle(
    bundle_dir: str | os.PathLike, out_zip: str | os.PathLike, sign: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Write ``out_zip`` holding the bundle's configs, docs, license, models and scripts plus a hash manifest.

    Model files with a SHA-256 record (``models/sha256_manifest.json``) are verified first, so a corrupt or replaced
    model is never shipped.

    Args:
        bundle_dir: the bundle root (holding ``configs/``).
        out_zip: the archive to write (atomically; an existing file is replaced).
        sign: an Ed25519 private key (PEM) to sign the manifest with (see :mod:`monai_ext.sharing.signing`).

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
    for relative in files:  # each SHA-256 manifest lists exactly the files that ship beside it
        if relative.name == SHA256_MANIFEST:
            shipped = {other.name for other in files if other.parent == relative.parent}
            records = read_manifest((root / relative).parent)
            contents[relative] = manifest_bytes({name: record for name, record in records.items() if name in shipped})
    manifest = {
        "format": FORMAT,
        "bundle": root.name,
        "versions": _versions(),
        "files": {str(relative): _sha256_bytes(data) for relative, data in contents.items()},
    }

    package_manifest = json.dumps(manifest, indent=1).encode()
    header = [(PACKAGE_MANIFEST, package_manifest)]
    if sign is not None:
        header.append((SIGNATURE_FILE, signing.sign(package_manifest, sign)))

    def write(f: Any) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in header + [(str(relative), data) for relative, data in contents.items()]:
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


def archive_signature(archive: zipfile.ZipFile) -> bytes | None:
    try:
        return archive.read(SIGNATURE_FILE)
    except KeyError:
        return None


def read_package_manifest(archive: zipfile.ZipFile, zip_path: Path) -> dict[str, Any]:
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


def _check_sizes(entries: dict[str, zipfile.ZipInfo], limits: dict[str, int], zip_path: Path) -> None:
    if len(entries) > limits["max_files"]:
        raise PackageError(f"{zip_path}: {len(entries)} files, more than max_files={limits['max_files']}")
    total = 0
    for name, info in entries.items():
        if info.file_size > limits["max_file_bytes"]:
            limit = limits["max_file_bytes"]
            raise PackageError(f"entry {name!r}: {info.file_size:,} bytes unpacked, more than max_file_bytes={limit:,}")
        if info.file_size > limits["max_ratio"] * max(info.compress_size, 1):
            raise PackageError(
                f"entry {name!r}: unpacks to {info.file_size / max(info.compress_size, 1):.0f} times its packed size, "
                f"more than max_ratio={limits['max_ratio']} (a zip bomb?)"
            )
        total += info.file_size
    if total > limits["max_total_bytes"]:
        raise PackageError(
            f"{zip_path}: {total:,} bytes unpacked in all, more than max_total_bytes={limits['max_total_bytes']:,}"
        )


def unpack_bundle(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    inspect: Callable[[Path], Any] | None = None,
    trust: str | os.PathLike | None = None,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_files: int = MAX_FILES,
    max_ratio: float = MAX_RATIO,
) -> dict[str, Any]:
    """Verify and extract an archive made by :func:`pack_bundle` into ``dest``.

    Everything is checked before ``dest`` exists: the names, sizes and counts from the archive's directory, then
    each file's SHA-256 while it is extracted into a temporary directory next to ``dest``, then the hashes recorded
    in the bundle's own ``sha256_manifest.json`` files, then ``inspect``. Only then is the directory moved into place,
    so a refused archive leaves no ``dest``.

    Args:
        zip_path: the archive.
        dest: the new bundle root; it must not exist, or be an empty directory.
        inspect: called with the extracted (not yet moved) bundle; raising refuses the archive.
        trust: an Ed25519 public key (PEM); the archive must carry a valid signature by it.
        max_total_bytes: refuse archives that unpack to more bytes in all.
        max_file_bytes: refuse any file that unpacks to more bytes.
        max_files: refuse archives with more files.
        max_ratio: refuse any file that unpacks to more than this many times its packed size.

    Returns:
        The archive's manifest.

    Raises:
        PackageError: an absolute or ``..`` entry, a link, a file missing from or absent in the manifest, a hash
            mismatch, a size, count or ratio above its limit, or a missing/invalid manifest. The message names the
            entry.
        monai_ext.sharing.signing.SignatureError: ``trust`` is given and the archive is unsigned, signed by another
            key, or altered after signing.
        CheckpointIntegrityError: a model file differs from the hash recorded in the bundle.
        FileExistsError: ``dest`` exists and is not empty.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    limits = {
        "max_total_bytes": max_total_bytes, "max_file_bytes": max_file_bytes, "max_files": max_files,
        "max_ratio": max_ratio,
    }  # fmt: skip
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: exists and is not empty; unpack into a new directory")
    with zipfile.ZipFile(zip_path) as archive:
        manifest = read_package_manifest(archive, zip_path)
        if trust is not None:
            signing.verify(archive.read(PACKAGE_MANIFEST), archive_signature(archive), trust)
        else:
            signing.verify_present(archive.read(PACKAGE_MANIFEST), archive_signature(archive))
        for name in manifest["files"]:
            _check_name(name)
        entries = {}
        for info in archive.infolist():
            _check_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PackageError(f"entry {info.filename!r}: links are refused (they may point outside the bundle)")
            if info.is_dir() or info.filename in (PACKAGE_MANIFEST, SIGNATURE_FILE):
                continue
            if info.filename in entries:
                raise PackageError(f"entry {info.filename!r}: appears twice in {zip_path}")
            if info.filename not in manifest["files"]:
                raise PackageError(f"entry {info.filename!r}: not listed in {PACKAGE_MANIFEST}")
            entries[info.filename] = info
        missing = sorted(set(manifest["files"]) - set(entries))
        if missing:
            raise PackageError(f"{zip_path}: files listed in {PACKAGE_MANIFEST} are missing: {missing}")
        _check_sizes(entries, limits, zip_path)

        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".unpack-{dest.name}-", dir=dest.parent))
        try:
            for name, info in entries.items():
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                written = 0
                with archive.open(info) as source, open(target, "wb") as sink:
                    for block in iter(lambda source=source: source.read(1 << 20), b""):
                        written += len(block)
                        if written > info.file_size:  # the directory's size is what the limits were checked on
                            raise PackageError(f"entry {name!r}: holds more bytes than the archive declares")
                        digest.update(block)
                        sink.write(block)
                if digest.hexdigest() != manifest["files"][name]:
                    raise PackageError(
                        f"entry {name!r}: SHA-256 mismatch, recorded {manifest['files'][name]}, "
                        f"found {digest.hexdigest()}"
                    )
            for directory in sorted({(staging / name).parent for name in entries}):
                if (directory / SHA256_MANIFEST).is_file():
                    for recorded in read_manifest(directory):
                        if (directory / recorded).is_file():
                            verify_sha256(directory / recorded)
            if inspect is not None:
                inspect(staging)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return manifest


def _pin(name: Any, version: Any, origin: str) -> str:
    """``name==version`` when that is a plain PEP 508 requirement on a registry package; refuse anything else."""
    text = f"{name}=={version}"
    try:
        requirement = Requirement(text)
    except InvalidRequirement as err:
        raise PackageError(f"{origin}: {text!r} is not a PEP 508 requirement ({err}); refusing to print it") from None
    if (
        requirement.url
        or requirement.marker
        or requirement.extras
        or str(requirement) != text
        or not isinstance(name, str)
        or not isinstance(version, str)
    ):
        raise PackageError(f"{origin}: {text!r} is not a plain name==version pin; refusing to print it")
    return text


def install_instructions(manifest: dict[str, Any], bundle_metadata: dict[str, Any] | None = None) -> str:
    """Return the pip command that installs the package versions an archive was made with.

    Every pin is checked to be a plain ``name==version`` PEP 508 requirement first, so text from another lab's
    archive (an ``--index-url``, a URL requirement, shell syntax) never reaches the printed command.

    Args:
        manifest: the archive's manifest (its ``versions``).
        bundle_metadata: the bundle's ``configs/metadata.json``; its ``required_packages_version`` and
            ``optional_packages_version`` pins are added.

    Raises:
        PackageError: a pin is not a plain PEP 508 ``name==version`` requirement; the message names where it came from.
    """
    versions = manifest.get("versions", {})
    if not isinstance(versions, dict):
        raise PackageError(f"{PACKAGE_MANIFEST}: 'versions' must be an object of package name to version")
    pins = {name: _pin(name, versions[name], f"{PACKAGE_MANIFEST} versions") for name in PACKAGES if name in versions}
    for field in ("required_packages_version", "optional_packages_version"):
        declared = (bundle_metadata or {}).get(field) or {}
        if not isinstance(declared, dict):
            raise PackageError(f"configs/metadata.json: '{field}' must be an object of package name to version")
        checked = {name: _pin(name, version, f"configs/metadata.json {field}") for name, version in declared.items()}
        pins.update({name: pin for name, pin in sorted(checked.items()) if name not in pins})
    python = versions.get("python", "unknown")
    if not isinstance(python, str) or not all(part.isdigit() for part in python.split(".")):
        raise PackageError(f"{PACKAGE_MANIFEST}: the Python version {python!r} is not a version number")
    lines = [f"made with Python {python}; install the same versions with:"]
    monai_ext_pin = pins.pop("monai-ext", None)
    # a local version tag (2.13.0+cpu) names one build that pip finds only on that build's own index
    public = [pin.split("+", 1)[0] for pin in pins.values()]
    lines.append(f"  pip install {' '.join(public)}")
    local = [pin for pin in pins.values() if "+" in pin]
    if local:
        lines.append(f"  (made with {', '.join(local)}: install the CPU or CUDA build of it that suits your machine)")
    if monai_ext_pin:
        version = monai_ext_pin.split("==", 1)[1]
        lines.append(f"  monai-ext {version} is not on PyPI: install that version from the monai_ext repository the "
                     "sending lab uses (pip install PATH_OR_GIT_URL_OF_MONAI_EXT)")  # fmt: skip
    return "\n".join(lines)
