"""End-to-end ingest throughput on real-size JPEGs, and — in the same run, on the same machine — the raw
throughput of the embedding model alone on the same images' model inputs: the ratio is how much of the
hardware the pipeline uses. Then search latency at that index size, process memory, and time per stage.

    .venv/bin/python bench/ingest_throughput.py [--images 2000] [--workers 1] [--port-base 45000]
        [--search-during SECONDS]

Images: 1 to 2 MP JPEGs (quality 90) generated offline, cached in .cache/bench-ingest: smooth colour fields,
shapes and strokes with sensor-like noise, every one different (a throughput run, not a duplicate one).
Ingest: one UploadImages stream, timed from its first byte to the operation's end. The model alone and the
searches run once the stack has gone quiet after it. Stages: the workers'
``deeplens_ingest_stage_seconds`` histograms (mean seconds per image). Memory: peak RSS sampled every 0.5 s.
With ``--search-during``, a second client searches by bytes (one of the images, one query at a time, one
every SECONDS) while the ingest runs: the latency another tenant's users see while a bulk load runs.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
from deeplens.client import DeepLensClient, operation_metadata
from deeplens.v1 import resources_pb2
from deeplens_server.imaging import ImageLimits, decode_image, model_input
from deeplens_stack import Stack, StackConfig
from PIL import Image, ImageDraw, ImageFilter
from server_metrics import breakdown, percentiles, scrape

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-ingest"
MODEL = ROOT / "triton_models" / "efficientnet_lite0" / "1" / "model.onnx"


def make_image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w = int(rng.integers(1200, 1700))
    h = int(rng.integers(800, 1200))
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 30))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 25)))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def dataset(n: int) -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = [CACHE / f"img{i:05d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            path.write_bytes(make_image(i))
    return paths


def raw_model_rate(paths: list[Path], seconds: float = 10.0) -> float:
    """Images/s of the ONNX graph alone (onnxruntime, all cores, batch 32) on these images' model inputs."""
    limits = ImageLimits(max_bytes=64 << 20, max_pixels=100_000_000)
    batch = np.stack([model_input(decode_image(p.read_bytes(), limits).working) for p in paths[:32]])
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(MODEL), sess_options=options, providers=["CPUExecutionProvider"])
    session.run(None, {"image": batch})
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        session.run(None, {"image": batch})
        rates.append(len(batch) / (time.perf_counter() - t))
    return statistics.median(rates)


def _tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [int(x) for x in subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()]
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process tree."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree (children alive now; PostgreSQL's backends come and go, but
    the pool keeps its connections for the run)."""
    ticks = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, IndexError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def quiet(
    pids: list[int], quiet_s: float, busy: float = 0.05, step: float = 5.0, limit_s: float = 1800
) -> tuple[float, bool]:
    """Waits until these process trees together have used under ``busy`` of a core for ``quiet_s`` seconds in a
    row (seconds waited, and whether they went quiet within ``limit_s``). Milvus Lite, after a bulk load, merges
    its small segments and builds each merged one's HNSW graph in the background: searches meanwhile read every
    segment not indexed yet by brute force, and anything timed shares the cores with that work."""
    began = time.perf_counter()
    still = 0.0
    used = sum(cpu_seconds(pid) for pid in pids)
    while still < quiet_s and time.perf_counter() - began < limit_s:
        time.sleep(step)
        now = sum(cpu_seconds(pid) for pid in pids)
        still = still + step if (now - used) / step < busy else 0.0
        used = now
    return time.perf_counter() - began, still >= quiet_s


def stage_means(url: str) -> tuple[dict[str, float], float]:
    """Mean seconds per image by stage, and the number of PostgreSQL transactions the workers ran."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    transactions = 0.0
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("deeplens_ingest_stage_seconds_sum"):
            sums[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("deeplens_ingest_stage_seconds_count"):
            counts[line.split('stage="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("deeplens_postgres_transaction_seconds_count"):
            transactions += float(line.rsplit(" ", 1)[1])
    return {k: sums[k] / counts[k] for k in sums if counts.get(k)}, transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="deeplens-worker processes")
    parser.add_argument("--port-base", type=int, default=45000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--search-during", type=float, default=0.0, metavar="SECONDS", help="search by bytes every SECONDS of ingest"
    )
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    t = time.perf_counter()
    paths = dataset(args.images)
    sizes = [p.stat().st_size for p in paths]
    with Image.open(paths[0]) as first:
        print(f"{len(paths)} JPEGs ready in {time.perf_counter() - t:.0f} s; e.g. {first.size[0]}x{first.size[1]}, "
              f"mean {statistics.mean(sizes) / 1e3:.0f} kB")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="deeplens-ingest-bench-") as tmp:
        environ = {**os.environ, "DEEPLENS_WORKER_PROCESSES": str(args.workers)}
        stack = Stack(
            StackConfig(data_dir=Path(tmp) / "stack", port_base=args.port_base, durable=False, environ=environ)
        )
        try:
            stack.up()
            time.sleep(3 if args.workers > 1 else 0)  # the stack waits for the first process only
            with DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key()) as admin:
                limits = resources_pb2.TenantLimits(requests_per_second=100_000, max_image_bytes=64 << 20)
                admin.create_tenant("bench", limits=limits)
                _, secret = admin.create_api_key("bench", resources_pb2.ROLE_EDITOR)

            names = ("server", "worker", "triton", "milvus", "postgres", "redis")
            records = {name: stack.procs.get(name) for name in names}
            pids = {name: r.pid for name, r in records.items() if r is not None}
            peak = dict.fromkeys(pids, 0.0)
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    for name, pid in pids.items():
                        peak[name] = max(peak[name], rss_mb(pid))
                    time.sleep(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            during: list[float] = []
            server_metrics = stack.config.endpoints["DEEPLENS_METRICS_LISTEN"]
            parts_before = scrape(server_metrics) if args.search_during > 0 else {}

            def search_during() -> None:
                pick = np.random.default_rng(3)
                with DeepLensClient(stack.config.grpc_target, api_key=secret, timeout=60) as searcher:
                    while not sampling.wait(args.search_during):
                        content = paths[int(pick.integers(0, len(paths)))].read_bytes()
                        t = time.perf_counter()
                        searcher.search_images("tenants/bench/collections/photos", image_content=content, top_k=10)
                        during.append((time.perf_counter() - t) * 1000)

            searching = threading.Thread(target=search_during, daemon=True)
            if args.search_during > 0:
                searching.start()
            with DeepLensClient(stack.config.grpc_target, api_key=secret, timeout=600) as client:
                parent = "tenants/bench/collections/photos"
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                started = time.perf_counter()
                op = client.upload_files(parent, [(p, p.stem) for p in paths], timeout=600)
                submitted = time.perf_counter() - started
                final = client.wait_operation(op.name, timeout=3600)
                elapsed = time.perf_counter() - started
                meta = operation_metadata(final)
                cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
                sampling.set()
                sampler.join()
                if args.search_during > 0:
                    searching.join()
                rate = meta.succeeded / elapsed
                print(f"ingest: {meta.succeeded} indexed, {meta.failed} failed, {meta.duplicates} duplicates; "
                      f"submitted in {submitted:.1f} s, done in {elapsed:.1f} s = {rate:.2f} images/s "
                      f"({args.workers} worker process{'es' if args.workers > 1 else ''})")  # fmt: skip
                # The model alone, and the searches after it, on a quiet machine: the stack's background work (Milvus
                # Lite's merges and graph builds of what was just written) would slow them and flatter the ratio.
                waited, settled = quiet(list(pids.values()), 5.0, busy=0.1, step=1.0, limit_s=600)
                print(f"the stack {'went' if settled else 'did NOT go'} quiet (under 10 % of a core for 5 s) "
                      f"{waited:.0f} s after the ingest")  # fmt: skip
                raw = raw_model_rate(paths)
                print(f"model alone (onnxruntime, batch 32, same images' inputs): {raw:.1f} images/s; "
                      f"ingest / model = {rate / raw:.3f}")  # fmt: skip
                means, transactions = stage_means(f"http://127.0.0.1:{args.port_base + 91}/metrics")
                total = sum(means.values())
                print("time per image by stage (all worker processes, mean):")
                for stage, seconds in sorted(means.items(), key=lambda kv: -kv[1]):
                    print(f"  {stage:<17} {seconds * 1000:7.1f} ms  {100 * seconds / total:4.1f} %")
                print(f"PostgreSQL transactions by the workers: {transactions / max(1, meta.succeeded):.1f} per image")
                per_image = {k: (cpu_after[k] - cpu_before[k]) * 1000 / max(1, meta.succeeded) for k in cpu_after}
                print("CPU per image by process: " + ", ".join(f"{k} {v:.0f} ms" for k, v in per_image.items())
                      + f"; total {sum(per_image.values()):.0f} ms")  # fmt: skip
                if len(during) >= 2:
                    print(f"search by bytes during the ingest ({len(during)}, one every {args.search_during:g} s): "
                          + percentiles(during))  # fmt: skip
                    # PostgreSQL's share includes the ingest's own calls to the server (its operation polled).
                    print("  " + breakdown(parts_before, scrape(server_metrics), statistics.mean(during)))
                print("peak RSS: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in peak.items()))

                rng = np.random.default_rng(2)
                picks = [paths[int(i)] for i in rng.integers(0, len(paths), args.queries)]
                by_bytes, by_name = [], []
                for p in picks:
                    t = time.perf_counter()
                    client.search_images(parent, image_content=p.read_bytes(), top_k=10)
                    by_bytes.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    client.search_images(parent, image_name=f"{parent}/images/{p.stem}", top_k=10)
                    by_name.append((time.perf_counter() - t) * 1000)
                for what, values in (("by bytes", by_bytes), ("by name", by_name)):
                    print(f"search {what} at {meta.succeeded} images: {percentiles(values)}")
        finally:
            stack.destroy()


if __name__ == "__main__":
    main()
