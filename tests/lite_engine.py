"""A Milvus Lite collection opened on the engine directly (no server), shaped like DeepLens's: a VARCHAR key, an
INT64 tenant key and a COSINE HNSW-indexed vector, for the tests of deeplens_stack's Lite changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from milvus_lite.db import MilvusLite
from milvus_lite.schema.types import CollectionSchema, DataType, FieldSchema


@contextmanager
def lite_collection(path: Path, dim: int, *, partition_key: bool = False) -> Iterator[Any]:
    """A loaded collection ``c`` in a new database at ``path``, closed afterwards."""
    db = MilvusLite(str(path))
    schema = CollectionSchema(
        fields=[
            FieldSchema("pk", DataType.VARCHAR, is_primary=True, max_length=64),
            FieldSchema("tenant_key", DataType.INT64, is_partition_key=partition_key),
            FieldSchema("vector", DataType.FLOAT_VECTOR, dim=dim),
        ]
    )
    coll = db.create_collection("c", schema)
    coll.create_index("vector", {"index_type": "HNSW", "metric_type": "COSINE", "params": {"M": 8}})
    coll.load()
    try:
        yield coll
    finally:
        db.close()
