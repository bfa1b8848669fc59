"""The embedded stack starts only what the environment does not point elsewhere."""

from __future__ import annotations

from pathlib import Path

from deeplens_stack import Stack, StackConfig


def test_everything_is_started_by_default(tmp_path: Path) -> None:
    stack = Stack(StackConfig(data_dir=tmp_path, port_base=40000, environ={}))
    assert stack.managed() == ["postgres", "redis", "milvus", "triton", "server", "worker"]
    env = stack.child_env()
    assert env["DEEPLENS_POSTGRES_DSN"] == "postgresql://deeplens@127.0.0.1:40432/deeplens"
    assert env["DEEPLENS_MILVUS_URI"] == "http://127.0.0.1:40530"
    assert env["DEEPLENS_GRPC_LISTEN"] == "127.0.0.1:40051"
    assert env["DEEPLENS_BLOB_ROOT"] == str(tmp_path / "blobs")


def test_external_services_are_used_as_given(tmp_path: Path) -> None:
    environ = {
        "DEEPLENS_POSTGRES_DSN": "postgresql://app:secret@pg.internal:5432/deeplens",
        "DEEPLENS_MILVUS_URI": "http://milvus.internal:19530",
        "DEEPLENS_TRITON_URL": "triton.internal:8001",
    }
    stack = Stack(StackConfig(data_dir=tmp_path, port_base=40000, environ=environ))
    assert stack.managed() == ["redis", "server", "worker"]
    env = stack.child_env()
    for key, value in environ.items():
        assert env[key] == value
    assert env["DEEPLENS_REDIS_URL"] == "redis://127.0.0.1:40379/0"
    assert stack.status()["milvus"] == "external (http://milvus.internal:19530)"
