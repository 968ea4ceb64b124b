"""Ed25519 signatures for bundle archives: who made a bundle, not only that it arrived intact.

``pack --sign KEY`` signs the archive's manifest, which holds the SHA-256 of every file, so the signature covers
every byte that ``unpack`` extracts. ``unpack --trust PUBKEY`` then refuses an archive unless that key signed it.
Keys are PEM files: the private key in PKCS#8, the public key as SubjectPublicKeyInfo. Needs the ``cryptography``
package (``pip install monai-ext[sharing]``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SIGNATURE_FILE", "SignatureError", "fingerprint", "keygen", "sign", "signer_fingerprint", "verify"]

SIGNATURE_FILE = "MONAI_EXT_PACKAGE.sig"
ALGORITHM = "ed25519"


class SignatureError(ValueError):
    """A signature is missing, malformed, made by another key, or does not match the signed bytes."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise ImportError(
            "signing needs the 'cryptography' package: pip install 'monai-ext[sharing]' (or cryptography)"
        ) from err
    return serialization, ed25519


def _raw_public(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(raw_public_key: bytes) -> str:
    """A short name for a public key: the first 16 bytes of its SHA-256, in hex, in groups of four."""
    digest = hashlib.sha256(raw_public_key).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _load_private(path: str | os.PathLike) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not an unencrypted PEM private key: {err}") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def _load_public(path: str | os.PathLike) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except ValueError as err:
        raise SignatureError(f"{path}: not a PEM public key: {err}") from err
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def sign(data: bytes, private_key_path: str | os.PathLike) -> bytes:
    """Return the signature document (JSON bytes) of ``data`` with the Ed25519 key in ``private_key_path``."""
    key = _load_private(private_key_path)
    raw_public = _raw_public(key.public_key())
    document = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(raw_public).decode(),
        "fingerprint": fingerprint(raw_public),
        "signature": base64.b64encode(key.sign(data)).decode(),
    }
    return json.dumps(document, indent=1).encode()


def _signed_by(data: bytes, document: bytes) -> bytes:
    """The raw public key a signature document names, once its signature of ``data`` checks with that key.

    Raises:
        SignatureError: a malformed document, another algorithm, or a signature that does not match ``data``.
    """
    _, ed25519 = _crypto()
    try:
        content = json.loads(document)
        signer = base64.b64decode(content["public_key"], validate=True)
        signature = base64.b64decode(content["signature"], validate=True)
        algorithm = content["algorithm"]
    except (ValueError, KeyError, TypeError) as err:
        raise SignatureError(f"{SIGNATURE_FILE} is malformed: {err}") from err
    if algorithm != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_FILE}: unsupported algorithm {algorithm!r}, expected {ALGORITHM}")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(signer).verify(signature, data)
    except Exception as err:  # cryptography raises InvalidSignature, which names nothing
        raise SignatureError(
            f"the signature by {fingerprint(signer)} does not match the archive's manifest (altered after signing)"
        ) from err
    return signer


def verify(data: bytes, document: bytes | None, trusted_public_key_path: str | os.PathLike) -> str:
    """Check that the key in ``trusted_public_key_path`` signed ``data``; return its fingerprint.

    Raises:
        SignatureError: no signature, a malformed one, one made with another key, or one that does not match.
    """
    trusted = _raw_public(_load_public(trusted_public_key_path))
    expected = fingerprint(trusted)
    if document is None:
        raise SignatureError(f"the archive is not signed, and {trusted_public_key_path} ({expected}) is required")
    signer = _signed_by(data, document)
    if signer != trusted:
        raise SignatureError(
            f"signed by key {fingerprint(signer)}, not by the trusted {trusted_public_key_path} ({expected})"
        )
    return expected


def verify_present(data: bytes, document: bytes | None) -> str | None:
    """Check a signature that is present, whoever made it; return its key's fingerprint (``None`` when unsigned).

    Without a trusted key this says nothing about who signed, but a signature that no longer matches means the
    archive was altered, re-signed badly or truncated after signing, and that is refused.

    Raises:
        SignatureError: as :func:`verify`, except for the signer's identity.
    """
    return None if document is None else fingerprint(_signed_by(data, document))


def signer_fingerprint(document: bytes | None) -> str | None:
    """The fingerprint a signature document claims, unchecked; ``None`` when unsigned or unreadable."""
    if document is None:
        return None
    try:
        return fingerprint(base64.b64decode(json.loads(document)["public_key"], validate=True))
    except (ValueError, KeyError, TypeError):
        return None


def keygen(private: str, public: str) -> str:
    """Make an Ed25519 key pair for signing bundles: keep PRIVATE secret, give PUBLIC to the labs you share with.

    Args:
        private: file for the private key (PEM, PKCS#8, unencrypted, readable by you only); must not exist.
        public: file for the public key (PEM); must not exist.
    """
    serialization, ed25519 = _crypto()
    for path in (private, public):
        if Path(path).exists():
            raise SystemExit(f"keygen: {path} exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(private_pem)
    public_key = key.public_key()
    Path(public).write_bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return f"keygen: wrote {private} (keep it secret) and {public}; key {fingerprint(_raw_public(public_key))}"
