"""``deeplens-worker`` running several processes: a killed one is replaced, their metrics are served added together
(a replaced process's counts are kept), and a stop ends them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from deeplens.client import DeepLensClient
from deeplens_stack import Stack
from deeplens_worker.processes import available_cpus

from tests.conftest import new_tenant, scrape_metrics, start_extra_server, stop_process, wait_until


def test_available_cpus_is_capped_by_a_container_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: two processes
    assert available_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    assert available_cpus(tmp_path / "absent") == affinity


def _indexed(port: int) -> float:
    return scrape_metrics(port).get(("deeplens_images_total", (("outcome", "indexed"),)), 0.0)


def _ingest(client: DeepLensClient, tenant: str, photos: dict[str, bytes], names: list[str]) -> None:
    ops = [
        client.ingest_image(f"tenants/{tenant}/collections/w", photos[name], image_id=f"{name}-{uuid.uuid4().hex[:6]}")
        for name in names
    ]
    for op in ops:
        client.wait_operation(op.name, timeout=120)


def _remember(opened: list[DeepLensClient], client: DeepLensClient) -> DeepLensClient:
    opened.append(client)
    return client


@pytest.mark.stack
def test_worker_processes_are_supervised_and_their_metrics_added(
    stack: Stack, admin: DeepLensClient, photos: dict[str, bytes]
) -> None:
    # Its own queue, fed by its own server: only these two processes take the work.
    queue = f"deeplens:test-{uuid.uuid4().hex[:8]}"
    grpc_port, metrics_port = stack.config.ports["grpc"] + 13, stack.config.ports["grpc"] + 14
    env = {
        **stack.child_env(),
        "DEEPLENS_QUEUE_NAME": queue,
        "DEEPLENS_WORKER_PROCESSES": "2",
        "DEEPLENS_WORKER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "deeplens_worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = start_extra_server(stack, grpc_port, {"DEEPLENS_QUEUE_NAME": queue})
    parent = psutil.Process(worker.pid)
    children: list[psutil.Process] = []
    opened: list[DeepLensClient] = []
    try:
        wait_until(lambda: len(parent.children()) == 2, 60, "two worker processes")
        tenant, client = new_tenant(
            admin, lambda key: _remember(opened, DeepLensClient(f"127.0.0.1:{grpc_port}", api_key=key, timeout=60))
        )
        wait_until(lambda: client.get_tenant(f"tenants/{tenant}") is not None, 60, "the second server")

        _ingest(client, tenant, photos, ["coins", "moon", "coffee", "chelsea"])
        assert _indexed(metrics_port) == 4

        first = {c.pid for c in parent.children()}
        victim = parent.children()[0]
        victim.kill()
        wait_until(
            lambda: len(parent.children()) == 2 and {c.pid for c in parent.children()} != first,
            60,
            "the killed process replaced",
        )
        assert _indexed(metrics_port) == 4  # the dead process's counts are kept
        _ingest(client, tenant, photos, ["astronaut", "rocket"])
        assert _indexed(metrics_port) == 6
    finally:
        for opened_client in opened:
            opened_client.close()
        stop_process(server)
        children = parent.children() if parent.is_running() else []
        worker.send_signal(signal.SIGTERM)
        output = stop_process(worker)
    assert worker.returncode == 0, output
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


@pytest.mark.stack
def test_a_worker_command_whose_processes_keep_dying_exits_1(stack: Stack) -> None:
    """A configuration error kills each process as it starts (here a malformed master key, which only the
    processes read): the command gives up and says so, rather than restarting them for ever."""
    env = {
        **stack.child_env(),
        "DEEPLENS_WORKER_PROCESSES": "2",
        "DEEPLENS_WORKER_METRICS_LISTEN": "",
        "DEEPLENS_QUEUE_NAME": f"deeplens:test-{uuid.uuid4().hex[:8]}",
        "DEEPLENS_MASTER_KEYS": "k1:short",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "deeplens_worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = worker.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        worker.kill()
        output, _ = worker.communicate()
    assert worker.returncode == 1, output
    assert "5 times in a row" in output
