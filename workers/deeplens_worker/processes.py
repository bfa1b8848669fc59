"""One ``deeplens-worker`` command, several worker processes: one process keeps about one core busy (its event
loop runs every job's client work), so a host's cores are used by running one per core.

The parent starts the processes, restarts one that dies (arq hands its jobs to the others once their time limit
has passed), passes SIGTERM/SIGINT on (each process stops as a lone worker would), and serves the processes'
metrics added together on ``DEEPLENS_WORKER_METRICS_LISTEN`` (prometheus_client's multiprocess mode). Each
process has its own PostgreSQL pool of up to ``DEEPLENS_POSTGRES_POOL_MAX`` connections, as a worker pod does
(sharing one pool's connections among the processes tripled the commit stage's time).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from deeplens_server.config import Settings

_log = logging.getLogger(__name__)

# A process that dies sooner than this after its start is restarted only after a pause that doubles each time
# (0.5, 1, 2, 4 s); at the fifth such death in a row the command gives up and exits 1 (a broken configuration
# or an unreachable store, which a process supervisor or the operator must see).
STEADY_SECONDS = 30.0
MAX_QUICK_EXITS = 5
STOP_GRACE_SECONDS = 80.0


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, cpus)
    if quota != "max" and int(period) > 0:
        cpus = min(cpus, math.ceil(int(quota) / int(period)))
    return max(1, cpus)


def process_count(settings: Settings) -> int:
    """``DEEPLENS_WORKER_PROCESSES``, where 0 means one per available core."""
    return settings.worker_processes if settings.worker_processes > 0 else available_cpus()


def child_env(metrics_dir: str) -> dict[str, str]:
    """The environment of one worker process: a lone process, its metrics written for the parent to serve."""
    return {
        **os.environ,
        "DEEPLENS_WORKER_PROCESSES": "1",
        "DEEPLENS_WORKER_METRICS_LISTEN": "",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }


try:  # loaded before any fork: the child must not load libraries between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """The child gets SIGTERM when the parent dies, even by SIGKILL: no worker outlives its command."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _serve_metrics(listen: str, metrics_dir: str) -> None:
    if not listen:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    _log.info("metrics of all worker processes on http://%s/metrics", listen)


class Supervisor:
    """Runs ``processes`` worker processes until told to stop."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.processes = processes
        self.metrics_dir = tempfile.mkdtemp(prefix="deeplens-worker-metrics-")
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.quick_exits: dict[int, int] = {}  # deaths in a row, each sooner than STEADY_SECONDS after start
        self.restart_at: dict[int, float] = {}
        self.stopping = False
        self.failed = False

    def _spawn(self, slot: int) -> None:
        env = child_env(self.metrics_dir)
        self.children[slot] = subprocess.Popen(
            [sys.executable, "-m", "deeplens_worker"], env=env, preexec_fn=_die_with_parent if _PRCTL else None
        )
        self.started[slot] = time.monotonic()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        """Starts the processes and keeps them running. Returns 0 once all have stopped after SIGTERM/SIGINT, 1
        when one kept dying young."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        _serve_metrics(self.settings.worker_metrics_listen, self.metrics_dir)
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            _log.info("%d worker processes started", self.processes)
            while not self.stopping:
                time.sleep(0.5)
                self._restart_exited()
            if self.failed:
                self._stop(signal.SIGTERM, None)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for child in self.children.values():
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            return 1 if self.failed else 0
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _restart_exited(self) -> None:
        now = time.monotonic()
        for slot, child in list(self.children.items()):
            if child.poll() is None or self.stopping:
                continue
            if slot not in self.restart_at:  # just found exited
                _mark_dead(self.metrics_dir, child.pid)
                ran = now - self.started[slot]
                quick = self.quick_exits[slot] = self.quick_exits.get(slot, 0) + 1 if ran < STEADY_SECONDS else 0
                if quick >= MAX_QUICK_EXITS:
                    _log.error("worker process %d exited (%s) %d times in a row within %.0f s of starting; stopping",
                               child.pid, child.returncode, quick, STEADY_SECONDS)  # fmt: skip
                    self.stopping = self.failed = True
                    return
                delay = 0.5 * 2.0 ** (quick - 1) if quick else 0.0
                self.restart_at[slot] = now + delay
                _log.warning("worker process %d exited (%s) after %.0f s; restarting it in %.1f s",
                             child.pid, child.returncode, ran, delay)  # fmt: skip
            if now >= self.restart_at[slot]:
                del self.restart_at[slot]
                self._spawn(slot)


def _mark_dead(metrics_dir: str, pid: int) -> None:
    """Drops a dead process's live gauges; its counters and histograms still count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path=metrics_dir)  # type: ignore[no-untyped-call]
