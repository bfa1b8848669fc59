"""The Node.js client (clients/node, @grpc/grpc-js) against the live stack: ingest, watch to the end, search,
and an error's ErrorInfo — through its example program, as a Node.js caller would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_stack import Stack

from tests.conftest import ClientFactory, new_tenant

NODE_CLIENT = Path(__file__).resolve().parent.parent / "clients" / "node"


def _node_ready() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node, "the Node.js client's test needs node >= 18 on PATH"
    assert npm, "the Node.js client's test needs npm on PATH"
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
            cwd=NODE_CLIENT, check=True, timeout=300,
        )  # fmt: skip
    return node


@pytest.mark.stack
def test_node_client_ingests_watches_and_searches(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes], tmp_path: Path
) -> None:
    node = _node_ready()
    tenant, _ = new_tenant(admin, connect)
    _, secret = admin.create_api_key(tenant, resources_pb2.ROLE_EDITOR, "node")
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(photos["astronaut"])
    run = subprocess.run(
        [node, "example.js", stack.config.grpc_target, f"tenants/{tenant}/collections/node", str(photo)],
        cwd=NODE_CLIENT, env=os.environ | {"DEEPLENS_API_KEY": secret}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    name = f"tenants/{tenant}/collections/node/images/astronaut"
    assert summary["done"] is True
    assert summary["image"] == name
    assert summary["results"][0]["name"] == name
    assert summary["results"][0]["score"] > 0.99
    assert summary["model"]
    assert summary["refused"] == {"code": 7, "reason": "TENANT_MISMATCH"}  # PERMISSION_DENIED with its reason
    assert "SUCCEEDED" in run.stderr  # progress streamed while it ran
