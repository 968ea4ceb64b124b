"""``monai_ext pack`` and ``monai_ext unpack``: the archive (:mod:`.packaging`) and the review a receiving lab
does before anything is installed: every finding of the audit that needs a person's word is accepted by a name of
its own, and what to run next is printed, all confined."""

from __future__ import annotations

import collections
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_ext.sharing import signing
from monai_ext.sharing.audit import AuditItem, audit_bundle, format_report
from monai_ext.sharing.hashes import CheckpointIntegrityError
from monai_ext.sharing.packaging import (
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    PackageError,
    archive_signature,
    install_instructions,
    pack_bundle,
    read_package_manifest,
    unpack_bundle,
)

__all__ = ["acceptance_names", "pack", "run_command", "unpack"]


def run_command(bundle_dir: str | os.PathLike) -> str:
    """Return the command that trains an unpacked bundle: the confined runner on its ``configs/train.json``."""
    return f"python -m monai_ext run {Path(bundle_dir).resolve()} --config_file configs/train.json"


def _next_commands(dest: str | os.PathLike, has_model: bool) -> list[str]:
    """What to run next: a received trained model is used as it is, and training anew keeps it (training refuses to
    replace a model it did not start from)."""
    if not has_model:
        return [f"train it with:\n  {run_command(dest)}"]
    inference = run_command(dest).replace("configs/train.json", "configs/inference.json")
    return [f"run its trained model with:\n  {inference}",
            f"train it anew, keeping its model, with:\n  {run_command(dest)} --ckpt_dir NEW_FOLDER"]  # fmt: skip


def pack(bundle_dir: str, out_zip: str, sign: str | None = None) -> str:
    """Pack a bundle folder (configs, docs, license, models, scripts) into a zip with SHA-256 hashes and versions.

    Args:
        bundle_dir: the bundle root, holding configs/.
        out_zip: the archive to write.
        sign: your Ed25519 private key (PEM, from `monai_ext keygen`): the receiving lab can then check with
            `unpack --trust YOUR_PUBLIC_KEY` that you made the archive.
    """
    manifest = pack_bundle(bundle_dir, out_zip, sign)
    listing = "\n".join(f"  {name}" for name in manifest["files"])
    signed = f", signed with {sign}" if sign else ""
    return f"pack: wrote {out_zip} with {len(manifest['files'])} files{signed}:\n{listing}"


def needs_acceptance(item: AuditItem) -> bool:
    """What the sandbox of ``monai_ext run`` does not contain, what tries what it stops (hostile intent, which runs
    unconfined under any other runner), and modules of the bundle that shadow an import name (run confined too, but
    in place of a library a reviewer thinks is running)."""
    return item.fails_strict or (item.group == "code" and bool(item.flags))


def acceptance_names(items: Sequence[AuditItem]) -> list[str]:
    """The name of each finding for ``--accept``: ``SOURCE:KEY``, with ``#2``, ``#3``... on later findings that
    share one, so that accepting a name accepts exactly one finding."""
    names, seen = [], collections.Counter()
    for item in items:
        name = f"{item.source}:{item.key}"
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def unpack(
    zip_path: str,
    dest: str,
    accept: str | Sequence[str] = (),
    trust: str | None = None,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_files: int = MAX_FILES,
    max_ratio: float = MAX_RATIO,
) -> str:
    """Verify a bundle zip (names, sizes, signature, hashes), audit it, print what to install; then extract it.

    Everything is checked before DEST is created, so a refused archive leaves nothing behind.

    Args:
        zip_path: an archive written by `monai_ext pack`.
        dest: a new directory to unpack into.
        accept: the findings of the audit you reviewed and accept, each named as the refusal lists it
            (``SOURCE:KEY``, comma-separated or a list). A bundle with a finding that the sandbox of `monai_ext run`
            does not contain, or with a module that shadows an import name, is not installed otherwise.
        trust: the sending lab's Ed25519 public key (PEM); refuse the archive unless that key signed it.
        max_total_bytes: refuse archives that unpack to more bytes in all (default 8 GiB).
        max_file_bytes: refuse any file that unpacks to more bytes (default 4 GiB).
        max_files: refuse archives with more files (default 10000).
        max_ratio: refuse any file that unpacks to more than this many times its packed size (default 200).
    """
    found: dict[str, Any] = {}
    accepted = set(accept.split(",") if isinstance(accept, str) else accept)

    def inspect(staging: Path) -> None:
        try:
            found["items"] = audit_bundle(staging)
        except ImportError as err:
            raise PackageError(f"a config cannot be read here: {err}") from err
        except ValueError as err:
            raise PackageError(str(err).replace(str(staging), str(dest))) from err
        metadata_path = staging / "configs" / "metadata.json"
        try:
            bundle_metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else None
        except json.JSONDecodeError as err:
            raise PackageError(f"configs/metadata.json: not valid JSON: {err}") from err
        found["install"] = install_instructions(
            found["manifest"], bundle_metadata if isinstance(bundle_metadata, dict) else None
        )
        review = [item for item in found["items"] if needs_acceptance(item)]
        unaccepted = [name for name in acceptance_names(review) if name not in accepted]
        if unaccepted:
            raise PackageError(
                "the audit has findings that need review, and nothing was installed:\n"
                + format_report(review)
                + "\nreview them, then accept each by name: --accept "
                + ",".join(unaccepted)
            )

    try:
        with zipfile.ZipFile(zip_path) as archive:
            found["manifest"] = read_package_manifest(archive, Path(zip_path))
            signer = signing.signer_fingerprint(archive_signature(archive))
        manifest = unpack_bundle(zip_path, dest, inspect, trust, max_total_bytes, max_file_bytes, max_files, max_ratio)
    except (
        PackageError,
        signing.SignatureError,
        FileExistsError,
        zipfile.BadZipFile,
        OSError,
        CheckpointIntegrityError,
    ) as err:
        print(f"unpack: refused {zip_path}: {err}")
        raise SystemExit(1) from None
    items = found["items"]
    if trust is not None:
        signature = f"signature: valid, signed by the trusted key {signer} ({trust})"
    elif signer is not None:
        signature = f"signature: valid, by key {signer}; pass --trust THEIR_PUBLIC_KEY to check whose key it is"
    else:
        signature = "signature: none (the archive is intact, but nothing says who made it)"
    report = "\n".join(
        [
            f"unpack: {len(manifest['files'])} files verified into {dest}",
            signature,
            format_report(items),
            *([f"findings you accepted: {', '.join(sorted(accepted))}"] if accepted else []),
            found["install"],
            *_next_commands(dest, has_model="models/model.pt" in manifest["files"]),
        ]
    )
    return report
