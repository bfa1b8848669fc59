"""The `deeplens` command and the asyncio client against the live stack: ingest a folder with progress,
search with a results table, duplicate groups and the storage report (tables and JSON), tenants and keys,
and errors as one line with the reason — never a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deeplens.aio import AsyncDeepLensClient
from deeplens.client import OperationFailed, ingest_response, operation_metadata
from deeplens_stack import Stack
from PIL import Image

CLI = str(Path(sys.executable).parent / "deeplens")
ROOT = Path(__file__).resolve().parent.parent


def _cli(stack: Stack, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DEEPLENS_TARGET": stack.config.grpc_target, "DEEPLENS_API_KEY": key}
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.stack
def test_cli_end_to_end(stack: Stack, photos: dict[str, bytes], tmp_path: Path) -> None:
    admin = stack.admin_key()
    tenant = f"cli{uuid.uuid4().hex[:10]}"
    created = _cli(stack, admin, "--json", "tenants", "create", tenant, "--display-name", "CLI test")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)[0]["name"] == f"tenants/{tenant}"
    made = _cli(stack, admin, "--json", "keys", "create", tenant, "--role", "editor", "--display-name", "cli")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["secret"]
    listed = _cli(stack, admin, "keys", "list", tenant)
    assert "editor" in listed.stdout
    assert "active" in listed.stdout

    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    (folder / "coffee.png").write_bytes(photos["coffee"])
    (folder / "rocket.jpg").write_bytes(photos["rocket"])
    (folder / "more" / "coffee copy.png").write_bytes(photos["coffee"])
    (folder / "notes.txt").write_text("not an image")
    parent = f"tenants/{tenant}/collections/cli"
    ingested = _cli(stack, key, "ingest", parent, str(folder), "--tags", "cli,test")
    assert ingested.returncode == 0, ingested.stderr
    assert "3 indexed, 0 failed, 1 duplicates" in ingested.stdout
    assert "100% 3/3" in ingested.stderr  # the progress bar, one line per change off a terminal

    found = _cli(stack, key, "search", f"tenants/{tenant}", "--file", str(folder / "rocket.jpg"), "--top-k", "2")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "image", "size", "format"]
    assert lines[2].split()[:3] == ["1", "1.000", f"{parent}/images/rocket"]

    groups = _cli(stack, key, "--json", "duplicates", f"tenants/{tenant}")
    assert groups.returncode == 0, groups.stderr
    (group,) = json.loads(groups.stdout)
    assert {m["name"] for m in group["members"]} == {f"{parent}/images/coffee", f"{parent}/images/more_coffee_copy"}
    table = _cli(stack, key, "duplicates", f"tenants/{tenant}")
    assert "1 groups" in table.stdout
    assert "exact" in table.stdout
    report = _cli(stack, key, "storage", f"tenants/{tenant}")
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[2].split()[:2] == ["total", "3"]

    stats = _cli(stack, key, "--json", "stats", tenant)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["images"] == "3"  # int64 in proto JSON is a string
    health = _cli(stack, admin, "health")
    assert health.returncode == 0, health.stderr
    assert health.stdout.count("healthy") == 4
    models = _cli(stack, key, "models")
    assert "efficientnet_lite0@1" in models.stdout
    assert "mobilenet_v2@1" in models.stdout
    assert "default" in models.stdout
    moved = _cli(stack, admin, "reindex", tenant, "mobilenet_v2@1")
    assert moved.returncode == 0, moved.stderr
    assert "searches with mobilenet_v2@1 now (was efficientnet_lite0@1)" in moved.stdout
    after = _cli(stack, key, "search", parent, "--file", str(folder / "rocket.jpg"))
    assert after.stdout.splitlines()[2].split()[:3] == ["1", "1.000", f"{parent}/images/rocket"]
    assert "from mobilenet_v2@1" in after.stdout

    # Errors: one line, the code and the reason, exit 1; a bad path, exit 2; never a traceback.
    denied = _cli(stack, key, "search", "tenants/someone-else", "--name", "tenants/someone-else/collections/c/images/x")
    assert denied.returncode == 1
    assert denied.stderr.strip().startswith("deeplens: PERMISSION_DENIED:")
    assert "(TENANT_MISMATCH)" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1
    missing = _cli(stack, key, "ingest", parent, str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr
    for run in (denied, missing):
        assert "Traceback" not in run.stderr


@pytest.mark.stack
def test_async_client_ingests_waits_and_searches(stack: Stack, photos: dict[str, bytes]) -> None:
    admin = stack.admin_key()
    tenant = f"aio{uuid.uuid4().hex[:10]}"
    assert _cli(stack, admin, "tenants", "create", tenant).returncode == 0
    key = json.loads(_cli(stack, admin, "--json", "keys", "create", tenant, "--role", "editor").stdout)["secret"]

    async def scenario() -> tuple[str, str, int, str, str, str]:
        async with AsyncDeepLensClient(stack.config.grpc_target, api_key=key) as client:
            parent = f"tenants/{tenant}/collections/aio"
            op = await client.ingest_image(parent, photos["camera"], image_id="camera")
            done = await client.wait_operation(op.name, timeout=120)
            state = operation_metadata(done).state
            hits = await client.search_images(f"tenants/{tenant}", image_content=photos["camera"], top_k=1)
            uploaded = await client.upload_images(parent, [(photos["camera"], "camera-again", ["x"])])
            await client.wait_operation(uploaded.name, timeout=120)
            groups = [g async for g in client.iter_duplicate_groups(f"tenants/{tenant}")]
            moon = await client.index_image(parent, photos["moon"], image_id="moon", timeout=120)
            refused = ""
            try:
                await client.index_image(parent, _truncated_jpeg(photos["coffee"]), image_id="broken", timeout=120)
            except OperationFailed as failed:
                refused = failed.reason
            return (
                ingest_response(done).image.name,
                hits.results[0].image.name,
                len(groups),
                str(state),
                moon.name,
                refused,
            )

    indexed, top, groups, state, moon, refused = asyncio.run(scenario())
    assert indexed == top == f"tenants/{tenant}/collections/aio/images/camera"
    assert groups == 1
    assert state != "0"
    assert moon == f"tenants/{tenant}/collections/aio/images/moon"
    assert refused == "IMAGE_UNDECODABLE"


def _truncated_jpeg(content: bytes) -> bytes:
    with Image.open(io.BytesIO(content)) as src:
        out = io.BytesIO()
        src.convert("RGB").save(out, format="JPEG")
    return out.getvalue()[: out.tell() // 3]


def test_python_client_installs_on_its_own(tmp_path: Path) -> None:
    """`pip install ./clients/python` into an empty environment: grpcio, protobuf and googleapis-common-protos
    come along, nothing of the server does, and the package and its command work."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    py = str(env_dir / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(source)], check=True, timeout=600, capture_output=True)
    installed = subprocess.run([py, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"deeplens-client", "grpcio", "protobuf", "googleapis-common-protos"} <= names
    assert not names & {"deeplens", "asyncpg", "pymilvus", "pillow", "numpy", "tritonclient", "arq"}
    probe = "import deeplens.aio, deeplens.client; from deeplens.v1 import search_service_pb2_grpc; print('ok')"
    assert subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "ok"
    usage = subprocess.run([str(env_dir / "bin" / "deeplens"), "--help"], capture_output=True, text=True, check=True)
    assert "duplicates" in usage.stdout
