"""Encryption at rest for tenant secrets (storage credentials): AES-256-GCM under a master key from the
environment, with the owning resource's name as associated data — a sealed value copied to another row or
tenant does not open. Values are prefixed with the key's id, so the master key can be rotated."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deeplens_server.errors import FailedPrecondition

_NONCE = 12


class Sealer:
    """``keys`` is ``id:base64key[,id:base64key...]``; the first seals, all open."""

    def __init__(self, keys: str) -> None:
        self._keys: dict[bytes, AESGCM] = {}
        self._active: bytes | None = None
        for item in filter(None, (k.strip() for k in keys.split(","))):
            key_id, _, encoded = item.partition(":")
            raw = base64.b64decode(encoded)
            if len(raw) != 32 or not key_id or len(key_id) > 16:
                raise ValueError("master keys look like `id:<base64 of 32 bytes>`")
            self._keys[key_id.encode()] = AESGCM(raw)
            self._active = self._active or key_id.encode()

    @staticmethod
    def new_key(key_id: str = "k1") -> str:
        return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"

    def _require(self) -> bytes:
        if self._active is None:
            raise FailedPrecondition(
                "storing credentials needs a master key (DEEPLENS_MASTER_KEYS) on the server",
                reason="MASTER_KEY_MISSING",
            )
        return self._active

    def seal(self, plaintext: bytes, bound_to: str) -> bytes:
        key_id = self._require()
        nonce = os.urandom(_NONCE)
        sealed = self._keys[key_id].encrypt(nonce, plaintext, bound_to.encode())
        return key_id + b"$" + nonce + sealed

    def open(self, sealed: bytes, bound_to: str) -> bytes:
        key_id, _, rest = sealed.partition(b"$")
        aead = self._keys.get(key_id)
        if aead is None:
            raise FailedPrecondition(
                "the master key that sealed this value is not configured", reason="MASTER_KEY_UNKNOWN"
            )
        try:
            return aead.decrypt(rest[:_NONCE], rest[_NONCE:], bound_to.encode())
        except InvalidTag as exc:
            raise FailedPrecondition(
                "a sealed value failed its integrity check", reason="SEALED_VALUE_CORRUPT"
            ) from exc
