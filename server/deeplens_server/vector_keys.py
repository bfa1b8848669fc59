"""64-bit keys of a tenant and of a tenant's collection, stored beside their names in every vector row.

Milvus evaluates a search's filter on every row of the partitions it reads. Comparing and hashing a string per
row took ~45 % of a settled Milvus server's CPU at 1M rows of one tenant (`tenant_id == ... and collection_id in
[...]`); the same filter on INT64 fields costs next to nothing (docs/benchmarks.md, fourteenth round). Searches
therefore filter on these keys. A key is a keyed BLAKE2b digest of the name: two names sharing a key is a 2^-64
chance, and every hit is still checked against its stored names before it is returned, so a shared key could cost
a result, never leak one. Deletes and counts compare the names too, so they stay exact.
"""

from __future__ import annotations

import hashlib


def _key(text: str, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, person=person).digest(), "big", signed=True)


def tenant_key(tenant_id: str) -> int:
    """The tenant's key: the vector collections' partition key."""
    return _key(tenant_id, b"deeplens-tenant")


def collection_key(tenant_id: str, collection_id: str) -> int:
    """The key of the tenant's collection (the tenant is part of it: equal collection ids of two tenants differ)."""
    return _key(f"{tenant_id}/{collection_id}", b"deeplens-coll")
