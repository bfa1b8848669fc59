"""Page sizes and opaque page tokens (AIP-158). A token carries the last key seen (keyset pagination)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from deeplens_server.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size", reason="INVALID_PAGE_SIZE")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"a": after}).encode()).decode().rstrip("=")


def decode(token: str) -> str | None:
    """The key to continue after; None for the first page. Raises ``InvalidArgument`` for a bad token."""
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["a"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN") from exc
    if not isinstance(value, str) or not value.isprintable():
        raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN")
    return value


def split_page(records: Sequence[T], size: int, key: Callable[[T], str]) -> tuple[list[T], str]:
    """Given up to ``size + 1`` records (one extra tells whether more exist): the page and the next token."""
    if len(records) > size:
        return list(records[:size]), encode(key(records[size - 1]))
    return list(records), ""
