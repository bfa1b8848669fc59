"""Raw throughput of each embedding model in the repository: onnxruntime on the CPU, the ONNX graph Triton
serves, on model-ready uint8 tensors (no decode, no transfer): the ceiling the ingest pipeline is measured
against.

    .venv/bin/python bench/model_throughput.py [--seconds 10]

Prints images/s per model and batch size, with onnxruntime using every core (as Triton's python backend
does in the embedded stack: DEEPLENS_ONNX_THREADS = cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "triton_models"))
import catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="per model and batch size")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    print(f"{threads} cores; onnxruntime {ort.__version__}, CPUExecutionProvider, {threads} intra-op threads")
    rng = np.random.default_rng(0)
    for spec in catalog.MODELS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(spec.onnx_path()), sess_options=options, providers=["CPUExecutionProvider"])
        for batch in (1, 8, 32):
            tensor = rng.integers(0, 256, (batch, catalog.INPUT_SIZE, catalog.INPUT_SIZE, 3), dtype=np.uint8)
            session.run(None, {"image": tensor})  # warm-up
            rates = []
            deadline = time.perf_counter() + args.seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                session.run(None, {"image": tensor})
                rates.append(batch / (time.perf_counter() - started))
            print(f"{spec.name}@{spec.version} batch {batch:>2}: {statistics.median(rates):6.1f} images/s "
                  f"(median of {len(rates)} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
