"""A real Milvus standalone server (the Go/C++ engine with embedded etcd and local storage) from the PyPI
package ``milvus`` (2.3.5, the newest with a Linux x86_64 wheel), launched directly rather than through the
package's wrapper: the wrapper stops with SIGKILL and silently moves to other ports on a quick restart.

Every port is pinned (``port_base`` + 600..611), a SIGTERM stops it within seconds (``gracefulStopTimeout``),
and its run directory (server id file) is private to the stack.
"""

from __future__ import annotations

import hashlib
import importlib.util
import lzma
import os
import re
from pathlib import Path

VERSION = "2.3.5"
# Template keys (see the package's data/config.yaml.template) and their offset from the stack's port base.
PORT_OFFSETS = {
    "etcd_port": 600,
    "root_coord_port": 601,
    "proxy_internal_port": 602,
    "query_coord_port": 603,
    "query_node_port": 604,
    "index_coord_port": 605,
    "index_node_port": 606,
    "data_coord_port": 607,
    "data_node_port": 608,
}
METRICS_OFFSET = 609
TUNING: dict[str, int | float] = {
    # A SIGTERM otherwise waits up to 30 minutes for a graceful stop.
    "common.gracefulStopTimeout": 5,
    # The proxy's time tick: a Strong read waits for the next one (200 ms by default: every search and
    # duplicate check would wait ~200 ms). Measured at 100k vectors, a Strong search's p50 over a Bounded one's
    # and the idle server's CPU: 20 ms: +34 ms, 12 % of a core; 10 ms: +15 ms, 18 %; 5 ms: +8 ms, 27 %.
    "proxy.timeTickInterval": 10,
    # The staleness a Bounded read accepts.
    "common.gracefulTime": 100,
    # Segments seal at 55 % of their maximum size, not 23 %: a sealed segment below `smallProportion` (50 %)
    # is merged with others and its index built again, which at 1M vectors kept 640-900k rows waiting for an
    # index for over 20 minutes after the load (docs/scaling.md).
    "dataCoord.segment.sealProportion": 0.55,
    # A search visits every segment of its tenant's partition, each through its own HNSW graph: 2 GB segments
    # (~184k of DeepLens's rows when sealed) instead of 512 MB (~46k) took a 1M-image tenant from ~22 segments
    # to 6. A segment is also sealed at `maxBinlogFileNumber` flushed files (16 MB each); at 32 that sealed 2 GB
    # segments at ~97k rows, under `smallProportion`, and they were merged and indexed again (docs/scaling.md).
    "dataCoord.segment.maxSize": 2048,
    "dataCoord.segment.maxBinlogFileNumber": 128,
    # A segment still growing is searched without its HNSW graph: 34 ms a search for 100k rows of one tenant
    # against 5 ms once sealed and indexed (bench/search_scale.py --sealed). A tenant's last rows stay growing
    # until the segment is full or has been idle this long (600 s by default), so after a load ends its
    # searches are slow for 60 s and the index build, not for 10 minutes and the build.
    "dataCoord.segment.maxIdleTime": 60,
}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?:\([a-z]+\))?\s*(?::\s*([^}]*?))?\s*\}\}")


class MilvusServerMissing(RuntimeError):
    pass


def package_dir() -> Path:
    spec = importlib.util.find_spec("milvus")
    if spec is None or not spec.submodule_search_locations:
        raise MilvusServerMissing(f"the `milvus=={VERSION}` package is not installed (requirements/lock.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def binaries(cache: Path) -> Path:
    """The server binary and its libraries, decompressed once into ``cache`` (checked by digest)."""
    source = package_dir() / "data" / "bin"
    target = cache.resolve() / f"milvus-{VERSION}" / "bin"
    target.mkdir(parents=True, exist_ok=True)
    for packed in sorted(source.glob("*.lzma")):
        digest = hashlib.sha256(packed.read_bytes()).hexdigest()
        out = target / packed.name.removesuffix(".lzma")
        stamp = out.with_name(out.name + ".sha256")
        if out.exists() and stamp.exists() and stamp.read_text() == digest:
            continue
        tmp = out.with_name(out.name + ".tmp")
        with lzma.open(packed) as src, tmp.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.chmod(0o755)
        tmp.replace(out)
        stamp.write_text(digest)
    return target / "milvus"


def write_config(data_dir: Path, *, proxy_port: int, port_base: int) -> Path:
    """``milvus.yaml`` for a server keeping everything under ``data_dir``; returns the config directory."""
    template = (package_dir() / "data" / "config.yaml.template").read_text()
    logs, storage = data_dir / "logs", data_dir / "data"
    for d in (logs, storage, data_dir / "configs", data_dir / "run"):
        d.mkdir(parents=True, exist_ok=True)
    values = {key: str(port_base + offset) for key, offset in PORT_OFFSETS.items()}
    values |= {
        "proxy_port": str(proxy_port),
        "etcd_log_path": str(logs / "etcd.log"),
        "etcd_log_level": "warn",
        "system_log_path": str(logs),
        "etcd_data_dir": str(storage / "etcd.data"),
        "local_storage_dir": str(storage),
        "rocksmq_data_dir": str(storage / "rocksmq"),
    }

    def fill(m: re.Match[str]) -> str:
        key, default = m.group(1), m.group(2)
        if key in values:
            return values[key]
        if default is None:
            raise MilvusServerMissing(f"no value for {key} in the Milvus config template")
        return default

    text = _PLACEHOLDER.sub(fill, template)
    for path, value in TUNING.items():
        text = set_value(text, path, value)
    config_dir = data_dir / "configs"
    (config_dir / "milvus.yaml").write_text(text)
    (config_dir / "glog.conf").write_text((package_dir() / "data" / "glog.conf").read_text())
    return config_dir


_KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):(.*)$")


def set_value(text: str, path: str, value: int | float | str) -> str:
    """The YAML ``text`` with the scalar at dotted ``path`` (``dataCoord.segment.maxSize``) set to ``value``,
    its comment kept."""
    lines = text.split("\n")
    keys: list[tuple[int, str]] = []
    found = 0
    for n, line in enumerate(lines):
        m = _KEY.match(line)
        if m is None:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while keys and keys[-1][0] >= indent:
            keys.pop()
        keys.append((indent, key))
        if ".".join(k for _, k in keys) == path:
            comment = rest[rest.index("#") :] if "#" in rest else ""
            lines[n] = f"{m.group(1)}{key}: {value}" + (f" {comment}" if comment else "")
            found += 1
    if found != 1:
        raise MilvusServerMissing(f"{path} is not in the Milvus config template once")
    return "\n".join(lines)


def environment(base: dict[str, str], binary: Path, data_dir: Path, metrics_port: int) -> dict[str, str]:
    env = dict(base)
    env["DEPLOY_MODE"] = "STANDALONE"
    env["METRICS_PORT"] = str(metrics_port)
    env["MILVUS_RUN_DIR"] = str(data_dir / "run")
    env["MILVUSCONF"] = str(data_dir / "configs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in (str(binary.parent), env.get("LD_LIBRARY_PATH", "")) if x)
    return env
