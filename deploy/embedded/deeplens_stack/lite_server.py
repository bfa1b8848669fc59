"""``python -m deeplens_stack.lite_server server --data-dir ...``: ``milvus-lite`` (same arguments), with

- each collection's writes taken one at a time (:mod:`deeplens_stack.lite_writes`: without it, concurrent writers
  lose rows);
- reads that do not wait for the background merges of segments, and are read again when a flush overtakes them
  (:mod:`deeplens_stack.lite_snapshots`);
- the faster search mask of :mod:`deeplens_stack.lite_search`, and the copy-free brute-force search of
  :mod:`deeplens_stack.lite_brute_force` (the engine's results, each checked against the engine's own code);
- background merges and graph builds on half the cores, leaving the rest to searches
  (:mod:`deeplens_stack.lite_background`).
"""

from __future__ import annotations

import sys

from deeplens_stack import lite_background, lite_brute_force, lite_search, lite_snapshots, lite_writes


def main(argv: list[str] | None = None) -> int:
    from milvus_lite.cmdline import main as milvus_lite_main

    lite_writes.install()
    lite_snapshots.install()
    lite_search.install()
    lite_brute_force.install()
    lite_background.install()
    return int(milvus_lite_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
