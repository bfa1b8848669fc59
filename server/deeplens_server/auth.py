"""API keys: minting, parsing and verification, and the roles they carry.

A key looks like ``dlk_<key id>_<secret>``. Only the SHA-256 of the whole key is stored (the secret is 256
random bits, so a fast hash is the right one — there is nothing to brute-force); comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum

from deeplens.v1 import resources_pb2

from deeplens_server.errors import Unauthenticated

KEY_PREFIX = "dlk"


class Role(IntEnum):
    """Ordered: each role includes every lower one. Values match ``deeplens.v1.Role``."""

    VIEWER = resources_pb2.ROLE_VIEWER
    UPLOADER = resources_pb2.ROLE_UPLOADER
    EDITOR = resources_pb2.ROLE_EDITOR
    TENANT_ADMIN = resources_pb2.ROLE_TENANT_ADMIN
    PLATFORM_ADMIN = resources_pb2.ROLE_PLATFORM_ADMIN


@dataclass(frozen=True, slots=True)
class MintedKey:
    key_id: str
    token: str
    digest: bytes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def mint_key() -> MintedKey:
    key_id = secrets.token_hex(8)
    token = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return MintedKey(key_id=key_id, token=token, digest=digest(token))


def key_id_of(token: str) -> str:
    """The key id inside a presented token; raises ``Unauthenticated`` if the token is malformed."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16 or not parts[2]:
        raise Unauthenticated("the API key is malformed", reason="INVALID_CREDENTIALS")
    try:
        int(parts[1], 16)
    except ValueError as exc:
        raise Unauthenticated("the API key is malformed", reason="INVALID_CREDENTIALS") from exc
    return parts[1]


def verify(token: str, stored_digest: bytes) -> bool:
    return hmac.compare_digest(digest(token), stored_digest)


def bearer_token(metadata: object) -> str:
    """The token from ``authorization: Bearer <token>`` metadata; raises ``Unauthenticated`` when absent."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("use `authorization: Bearer <API key>`", reason="INVALID_CREDENTIALS")
            return token.strip()
    raise Unauthenticated("this call needs an API key: `authorization: Bearer <key>`", reason="MISSING_CREDENTIALS")
