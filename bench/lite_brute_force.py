"""Milvus Lite's brute-force search of one unindexed segment: the engine's ``BruteForceIndex.search`` against
``deeplens_stack.lite_brute_force``'s, side by side on the same rows and query, and whether they return the same ids.

    .venv/bin/python bench/lite_brute_force.py [--rows 100000] [--dim 1280] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from deeplens_stack import lite_brute_force
from milvus_lite.index.brute_force import BruteForceIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.rows:,} x {args.dim} rows, top 400, COSINE")
    engine = BruteForceIndex.search
    if not lite_brute_force.install():
        raise SystemExit("this Milvus Lite's brute-force search is not the one lite_brute_force knows")
    rng = np.random.default_rng(0)
    index = BruteForceIndex(rng.standard_normal((args.rows, args.dim), dtype=np.float32), "COSINE")
    query = rng.standard_normal((1, args.dim)).astype(np.float32)
    masks = {"none": None, "95 % of rows": rng.random(args.rows) < 0.95, "5 % of rows": rng.random(args.rows) < 0.05}
    for name, mask in masks.items():
        theirs_s, ours_s = [], []
        for _ in range(args.repeats):  # taking turns, so both see the same machine
            t0 = time.perf_counter()
            theirs = engine(index, query, 400, mask)
            t1 = time.perf_counter()
            ours = lite_brute_force.search(index, query, 400, mask)
            ours_s.append(time.perf_counter() - t1)
            theirs_s.append(t1 - t0)
        same = bool((theirs[0] == ours[0]).all())
        a, b = float(np.median(theirs_s)) * 1000, float(np.median(ours_s)) * 1000
        print(f"mask {name:>12}: engine {a:7.1f} ms, copy-free {b:6.1f} ms, ratio {a / b:5.1f}; same ids: {same}")


if __name__ == "__main__":
    main()
