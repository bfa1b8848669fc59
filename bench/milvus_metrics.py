"""Where a real Milvus server spends a search, from its own /metrics (its metrics port): the sum of every latency
histogram (proxy and query node stages), Go's garbage collections and the process's CPU, scraped around each search
so that a slow search can be told apart from a usual one by stage; and, from /proc, the CPU of each of the
server's threads by name (Go's are all "milvus"; RocksDB's background threads, which compact the embedded message
queue, have their own) and the host's busy and I/O-wait time."""

from __future__ import annotations

import os
import statistics
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

_DROPPED_LABELS = {"node_id", "collection_name", "db_name", "collection_id", "partition_name"}
_COUNTERS = {
    "go_gc_duration_seconds_count": "go GCs",
    "go_gc_duration_seconds_sum": "go GC pause s",
    "process_cpu_seconds_total": "CPU s",
}
_SHOWN = (*_COUNTERS.values(), "host busy s", "host iowait s")


def scrape(listen: str) -> dict[str, float]:
    """Totals so far: ``name[labels]`` -> the sum (ms) of each latency histogram, and ``_COUNTERS``."""
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _COUNTERS:
                totals[_COUNTERS[sample.name]] = totals.get(_COUNTERS[sample.name], 0.0) + sample.value
            elif family.type == "histogram" and sample.name == family.name + "_sum" and "latency" in family.name:
                kept = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k not in _DROPPED_LABELS)
                key = f"{family.name.removeprefix('milvus_')}[{kept}]"
                scale = 1000.0 if family.name.endswith("seconds") else 1.0  # Milvus's own are in ms already
                totals[key] = totals.get(key, 0.0) + sample.value * scale
    return totals


def cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread name of process ``pid``, and the host's busy and I/O-wait seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        key = f"thread {name} CPU s"
        totals[key] = totals.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    with open("/proc/stat") as f:
        host = [int(x) for x in f.readline().split()[1:]]
    totals["host busy s"] = (sum(host) - host[3] - host[4]) / tick
    totals["host iowait s"] = host[4] / tick
    return totals


@dataclass
class Traced:
    """One search: when it began (seconds into the pass), what the client waited, and what each of Milvus's totals
    grew by meanwhile."""

    at: float
    client_ms: float
    grew: dict[str, float]


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def report(traced: list[Traced], slow_ms: float) -> list[str]:
    """Lines: each stage's mean per search over all searches and over those slower than ``slow_ms``, and the
    slowest eight searches with their largest stages."""
    slow = [t for t in traced if t.client_ms > slow_ms]
    keys = sorted({k for t in traced for k in t.grew}, key=lambda k: -sum(t.grew.get(k, 0.0) for t in traced))
    lines = [f"{len(traced)} searches, {len(slow)} slower than {slow_ms:.0f} ms; mean per search, all / slow ones:",
             f"  {'client wait, ms':<70} {statistics.mean(t.client_ms for t in traced):9.2f} "
             + (f"{statistics.mean(t.client_ms for t in slow):9.2f}" if slow else "")]  # fmt: skip
    for k in keys:
        every = statistics.mean(t.grew.get(k, 0.0) for t in traced)
        of_slow = f"{statistics.mean(t.grew.get(k, 0.0) for t in slow):9.2f}" if slow else ""
        lines.append(f"  {k[:70]:<70} {every:9.2f} {of_slow}")
    for t in sorted(traced, key=lambda t: -t.client_ms)[:8]:
        top = sorted(((v, k) for k, v in t.grew.items() if k not in _SHOWN and " CPU s" not in k), reverse=True)[:4]
        counters = ", ".join(f"{k} {v:.2f}" for k, v in t.grew.items() if k in _SHOWN or " CPU s" in k)
        stages = "; ".join(f"{k} {v:.1f}" for v, k in top)
        lines.append(f"  slow search at {t.at:.1f} s, {t.client_ms:.1f} ms: {stages} ({counters})")
    return lines
