"""Where the host's CPU goes while a benchmark runs: records every process's samples with Linux ``perf`` for a
while, then splits them by the stack's services and splits the Milvus server's by library and function.

    .venv/bin/python bench/perf_split.py --seconds 120 [--out /tmp/perf-split]   # while a benchmark runs

Needs ``perf`` and the right to record every CPU (root, or ``kernel.perf_event_paranoid`` at most 0). The Milvus
server's Go code shows as the ``milvus`` binary, its C++ engine as ``libknowhere`` (HNSW), ``libmilvus_segcore``
(filter expressions) and the rest; ``idle`` is CPU time nothing used.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
from pathlib import Path

HEAD = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+([\d.]+):")
Frame = tuple[str, str]  # (symbol, library)


def roles() -> dict[int, str]:
    """Each running process of the stack by what it is."""
    out = subprocess.run(["ps", "-eo", "pid=,comm=,args="], capture_output=True, text=True, check=True).stdout
    found: dict[int, str] = {}
    for line in out.splitlines():
        pid, comm, args = [*line.split(None, 2), "", ""][:3]
        for role, hit in (
            ("server", "deeplens_server" in args),
            ("worker", "deeplens_worker" in args),
            ("milvus", comm == "milvus" or "milvus-lite" in args or "deeplens_stack.lite_server" in args),
            ("triton", "triton" in comm),
            ("postgres", "postgres" in comm or "postgres" in args),
            ("redis", "redis" in comm),
            ("benchmark", "bench/" in args),
        ):
            if hit:
                found[int(pid)] = role
                break
    return found


def samples(script: str) -> list[tuple[float, int, int, list[Frame]]]:
    """(time, pid, tid, frames innermost first) of each sample in ``perf script`` output."""
    out: list[tuple[float, int, int, list[Frame]]] = []
    for line in script.splitlines():
        m = HEAD.match(line)
        if m:
            out.append((float(m.group(4)), int(m.group(2)), int(m.group(3)), []))
        elif line.strip() and out:
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and "(" in parts[1]:
                cut = parts[1].rfind("(")
                out[-1][3].append((parts[1][:cut].strip(), parts[1][cut + 1 : -1].rsplit("/", 1)[-1]))
    return out


def report(found: list[tuple[float, int, int, list[Frame]]], role_of: dict[int, str], top: int) -> None:
    n = len(found) or 1
    by_role = collections.Counter("idle" if pid == 0 else role_of.get(pid, "other") for _, pid, _, _ in found)
    print(f"{len(found):,} samples over {found[-1][0] - found[0][0]:.1f} s; share of all CPU time:")
    for role, count in by_role.most_common():
        print(f"  {role:10s} {100 * count / n:5.1f} %")
    milvus = [(tid, frames) for _, pid, tid, frames in found if role_of.get(pid) == "milvus" and frames]
    m = len(milvus) or 1
    libraries: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[Frame] = collections.Counter()
    threads: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for tid, frames in milvus:
        user = next((f for f in frames if "kernel" not in f[1]), ("(kernel)", "kernel"))
        libraries[user[1]] += 1
        functions[user] += 1
        threads[tid][user[1]] += 1
    print(f"Milvus: {len(milvus):,} samples; by the library of the innermost user-space frame:")
    for library, count in libraries.most_common(8):
        print(f"  {library:28s} {100 * count / m:5.1f} %")
    print("Milvus, by function:")
    for (symbol, library), count in functions.most_common(top):
        print(f"  {100 * count / m:5.1f} %  {library:24s} {symbol[:90]}")
    print("Milvus, the busiest threads:")
    for tid, libs in sorted(threads.items(), key=lambda kv: -sum(kv[1].values()))[:8]:
        print(f"  {tid}: {sum(libs.values()):,} samples ({', '.join(f'{k} {v:,}' for k, v in libs.most_common(3))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hz", type=int, default=499)
    parser.add_argument("--top", type=int, default=15, help="Milvus functions listed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/perf-split"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "perf.data"
    role_of = roles()
    subprocess.run(
        ["perf", "record", "-e", "cpu-clock", "-F", str(args.hz), "-g", "-a", "-o", str(data), "--",
         "sleep", str(args.seconds)],
        check=True, capture_output=True,
    )  # fmt: skip
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,pid,tid,time,ip,sym,dso"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    report(samples(script), role_of, args.top)


if __name__ == "__main__":
    main()
