"""Ed25519 keys of the audit checkpoints: a signing key with its id, and a keyring of public keys.

The private key lives in a PEM file (PKCS#8) that only the sealer reads; it is never logged,
stored in the database or put in an event. The keyring is a JSON file ``{"keys": {"<key id>":
"<base64 raw public key>"}}``: rotating adds a key id, and old checkpoints keep verifying with
the old public keys as long as they stay in the keyring.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvt_engine.errors import UsageError


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UsageError("audit signatures need the cryptography package",
                         details={"hint": "pip install 'dvt[audit]'"}) from None
    return ed25519


@dataclass(frozen=True)
class Signer:
    """A private key and its id; signs checkpoint payloads."""

    key_id: str
    _key: Any

    def sign(self, payload: bytes) -> str:
        """The base64 Ed25519 signature of ``payload``."""
        return base64.b64encode(self._key.sign(payload)).decode("ascii")

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


def load_signer(path: str | Path, key_id: str) -> Signer:
    """The signing key in a PEM file, under ``key_id``."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    ed25519 = _crypto()
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the audit signing key {str(path)!r}: {type(exc).__name__}"
                         ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"the audit signing key {str(path)!r} is not an Ed25519 key")
    if not key_id:
        raise UsageError("a signing key needs a key id (--key-id or DVT_AUDIT_KEY_ID)")
    return Signer(key_id, key)


class Keyring:
    """Public keys by key id; verifies checkpoint signatures."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = {k: _crypto().Ed25519PublicKey.from_public_bytes(v) for k, v in keys.items()}

    @property
    def key_ids(self) -> list[str]:
        """The key ids this keyring knows."""
        return sorted(self._keys)

    def verify(self, key_id: str, payload: bytes, signature: str) -> str | None:
        """None when the signature is good; else what is wrong (unknown key, bad signature)."""
        from cryptography.exceptions import InvalidSignature

        key = self._keys.get(key_id)
        if key is None:
            return f"unknown key id {key_id!r}"
        try:
            key.verify(base64.b64decode(signature, validate=True), payload)
        except (InvalidSignature, ValueError):
            return f"the signature does not verify with key {key_id!r}"
        return None


def load_keyring(path: str | Path) -> Keyring:
    """The keyring JSON file ``{"keys": {id: base64 public key}}``."""
    try:
        data = json.loads(Path(path).read_text())
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
        return Keyring(keys)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot read the audit keyring {str(path)!r}: {exc}") from None


def generate_key(key_id: str, private_path: str | Path, keyring_path: str | Path) -> str:
    """Write a new private key (mode 0600) and add its public key to the keyring; the public
    key in base64."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    private_path, keyring_path = Path(private_path), Path(keyring_path)
    if private_path.exists():
        raise UsageError(f"{str(private_path)!r} exists; a key file is never overwritten")
    ring: dict[str, Any] = {"keys": {}}
    if keyring_path.exists():
        ring = json.loads(keyring_path.read_text())
    if key_id in ring["keys"]:
        raise UsageError(f"key id {key_id!r} is already in the keyring; pick a new one")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode("ascii")
    ring["keys"][key_id] = public
    keyring_path.write_text(json.dumps(ring, indent=2, sort_keys=True) + "\n")
    return public
