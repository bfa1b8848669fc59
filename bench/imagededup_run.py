"""Runs imagededup's hashing methods on a folder at their default threshold; prints the duplicate pairs as JSON.

Run by bench/dedup_eval.py inside its own venv (requirements/bench.txt). imagededup's CNN method needs weights
downloaded from the internet at run time, so it is left out here.
"""

from __future__ import annotations

import json
import sys
import time
import types

# imagededup.methods imports its CNN module, and with it torch and torchvision, which the hashing methods never
# use; a stand-in keeps torch out of the benchmark's venv entirely (no CUDA wheels, no version pairing).
sys.modules["imagededup.methods.cnn"] = types.SimpleNamespace(CNN=None)  # type: ignore[assignment]
sys.modules["imagededup.utils.models"] = types.SimpleNamespace(CustomModel=None)  # type: ignore[assignment]

from imagededup.methods import AHash, DHash, PHash, WHash  # noqa: E402


def main(folder: str) -> None:
    result: dict[str, dict[str, object]] = {}
    for method in (PHash, DHash, WHash, AHash):
        hasher = method(verbose=False)
        t0 = time.perf_counter()
        encodings = hasher.encode_images(image_dir=folder)
        found = hasher.find_duplicates(encoding_map=encodings)  # default max_distance_threshold=10
        pairs = sorted({tuple(sorted((a, b))) for a, dups in found.items() for b in dups})
        result[method.__name__] = {"pairs": pairs, "seconds": time.perf_counter() - t0}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
