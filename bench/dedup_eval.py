"""Duplicate detection benchmark: DeepLens (through its gRPC API, on the embedded stack) side by side with
imagededup's PHash, DHash, WHash and AHash on the same images, in the same run.

    .venv/bin/python bench/dedup_eval.py            # builds the data, starts a stack on ports 52000+, prints a report

Pairs are scored like imagededup's own evaluation: a predicted pair is right when both images come from the same
original. Two readings: "original-copy" (is each transformed copy matched to its original — imagededup's
benchmark question) and "all pairs" (every two images of one original, copy-copy pairs included).
DeepLens's thresholds are chosen on half of the originals (split A) and reported on the other half (split B)
as well as on all; the server's defaults are then measured as stored at ingest (GetImage links, groups).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2, search_service_pb2
from deeplens_server.duplicates import DuplicatePolicy, tier_of
from deeplens_stack import Stack, StackConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_data import AMBIGUOUS, TRANSFORMS, build

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "dedup-bench"
BENCH_VENV = ROOT / ".cache" / "bench-venv"
Pair = tuple[str, str]


@dataclass
class Scores:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def row(self, label: str) -> str:
        p, r = self.precision, self.recall
        return f"| {label} | {p:.4f} | {r:.4f} | {self.f1:.4f} | {self.tp} | {self.fp} | {self.fn} |"


def _pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def is_original(name: str) -> bool:
    return "--" not in name


def ambiguous(origin_a: str, origin_b: str) -> bool:
    return (origin_a, origin_b) in AMBIGUOUS or (origin_b, origin_a) in AMBIGUOUS


PAIR_SUFFIX = re.compile(r"(-?left|-?right|\d+|[ABLR])$")


def negative_kind(origin_a: str, origin_b: str) -> str:
    if ambiguous(origin_a, origin_b):
        return "ambiguous"
    if origin_a.startswith("noise") and origin_b.startswith("noise"):
        return "noise"
    if all(o.removeprefix("opencv-")[:-2] in ("left", "right") for o in (origin_a, origin_b)):
        return "chessboard"
    if PAIR_SUFFIX.sub("", origin_a) == PAIR_SUFFIX.sub("", origin_b):
        return "pair"
    return "other"


def score(predicted: set[Pair], truth: dict[str, str], files: list[str], mode: str) -> Scores:
    """mode "original-copy": positives are (original, its copy); copy-copy pairs of one original are ignored.
    mode "all": every two images of one original are a positive."""
    chosen = set(files)
    positives = set()
    by_origin: dict[str, list[str]] = {}
    for f in files:
        by_origin.setdefault(truth[f], []).append(f)
    for members in by_origin.values():
        for a, b in itertools.combinations(sorted(members), 2):
            if mode == "all" or is_original(a) != is_original(b):
                positives.add(_pair(a, b))
    tp = fp = 0
    for a, b in predicted:
        if a not in chosen or b not in chosen or ambiguous(truth[a], truth[b]):
            continue
        if truth[a] != truth[b]:
            fp += 1
        elif _pair(a, b) in positives:
            tp += 1
    return Scores(tp, fp, len(positives) - tp)


def run_imagededup(folder: Path) -> dict[str, dict[str, object]]:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--no-deps", "imagededup==0.3.3.post2"], check=True)
        subprocess.run([*pip, "-r", str(ROOT / "requirements" / "bench.txt")], check=True)
    out = subprocess.run(
        [str(python), str(ROOT / "bench" / "imagededup_run.py"), str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Candidate:
    """A pair's scores as FindDuplicates reported them."""

    exact: bool
    phash_distance: int
    dhash_distance: int
    detail_distance: int
    cosine: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-base", type=int, default=52000)
    parser.add_argument("--reuse", action="store_true", help="analyse the last run's collected scores again")
    args = parser.parse_args()

    t0 = time.perf_counter()
    folder, truth = build(CACHE)
    files = sorted(truth)
    originals = sorted({truth[f] for f in files})
    split_a = {o for o in originals if int(hashlib.sha256(o.encode()).hexdigest(), 16) % 2 == 0}
    files_a = [f for f in files if truth[f] in split_a]
    files_b = [f for f in files if truth[f] not in split_a]
    print(
        f"data: {len(originals)} originals x (1 + {len(TRANSFORMS)} transforms) = {len(files)} images "
        f"in {time.perf_counter() - t0:.1f} s; split A {len(files_a)}, split B {len(files_b)}"
    )

    collected = CACHE / "collected.json"
    if not args.reuse:
        t0 = time.perf_counter()
        imagededup = run_imagededup(folder)
        print(f"imagededup: {time.perf_counter() - t0:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(
                StackConfig(data_dir=Path(tmp), port_base=args.port_base, durable=False, environ=dict(os.environ))
            )
            try:
                stack.up(timeout=300)
                run = collect(stack, folder, files)
            finally:
                stack.destroy()
        run["imagededup"] = imagededup
        collected.write_text(json.dumps(run))
    print(analyse(json.loads(collected.read_text()), files, files_a, files_b, truth))


def collect(stack: Stack, folder: Path, files: list[str]) -> dict[str, Any]:
    """Everything the analysis needs, through DeepLens's gRPC API: ingest timing, every candidate pair's scores
    (FindDuplicates with a loose policy), the links ingest stored (GetImage) and the groups (ListDuplicateGroups)."""
    admin = DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key(), timeout=120)
    tenant = f"bench{int(time.time())}"
    admin.create_tenant(tenant, "duplicate benchmark")
    _, secret = admin.create_api_key(tenant, resources_pb2.ROLE_TENANT_ADMIN, "bench")
    client = DeepLensClient(stack.config.grpc_target, api_key=secret, timeout=300)
    parent = f"tenants/{tenant}/collections/bench"
    ids = {f: f.replace(" ", "_") for f in files}

    t0 = time.perf_counter()
    ops = []
    for start in range(0, len(files), 100):
        batch = files[start : start + 100]
        ops.append(client.upload_images(parent, [((folder / f).read_bytes(), ids[f], []) for f in batch]))
    for op in ops:
        done = client.wait_operation(op.name, timeout=1800)
        assert not done.HasField("error"), done.error.message
    ingest_s = time.perf_counter() - t0
    name_of = {f"{parent}/images/{ids[f]}": f for f in files}

    # Raw scores of every candidate pair (one ANN query each), to choose thresholds offline.
    t0 = time.perf_counter()
    loose = resources_pb2.DuplicatePolicy(
        near_duplicate_min_cosine=1.0, similar_min_cosine=0.01, max_phash_distance=32, max_dhash_distance=32
    )
    candidates: dict[Pair, Candidate] = {}
    stored: set[Pair] = set()
    stored_tiers: dict[Pair, tuple[int, str]] = {}
    for f in files:
        name = f"{parent}/images/{ids[f]}"
        found = client.search.FindDuplicates(
            search_service_pb2.FindDuplicatesRequest(
                parent=parent, image_name=name, policy=loose, include_similar=True, max_candidates=40
            ),
            metadata=client.metadata,
        )
        for m in found.matches:
            sc = m.scores
            exact = m.tier == resources_pb2.MATCH_TIER_EXACT
            candidates[_pair(f, name_of[m.image.name])] = Candidate(
                exact, sc.phash_distance, sc.dhash_distance, sc.detail_distance, sc.cosine
            )
        got = client.search.GetImage(search_service_pb2.GetImageRequest(name=name), metadata=client.metadata)
        for d in got.duplicates:
            if d.tier in (resources_pb2.MATCH_TIER_EXACT, resources_pb2.MATCH_TIER_NEAR_DUPLICATE):
                p = _pair(f, name_of[d.image.name])
                stored.add(p)
                stored_tiers[p] = (d.tier, d.rule)
    query_s = time.perf_counter() - t0
    # Groups as the server keeps them (transitive): every two members of one group.
    grouped: set[Pair] = set()
    groups = []
    token = ""
    while True:
        page = client.search.ListDuplicateGroups(
            search_service_pb2.ListDuplicateGroupsRequest(parent=parent, page_size=500, page_token=token),
            metadata=client.metadata,
        )
        groups += list(page.duplicate_groups)
        token = page.next_page_token
        if not token:
            break
    for g in groups:
        members = [name_of[m.name] for m in g.members]
        grouped |= {_pair(a, b) for a, b in itertools.combinations(members, 2)}

    return {
        "ingest_s": ingest_s,
        "query_s": query_s,
        "candidates": [
            [*p, c.exact, c.phash_distance, c.dhash_distance, c.detail_distance, c.cosine]
            for p, c in candidates.items()
        ],
        "stored": [[*p, tier, rule] for p, (tier, rule) in stored_tiers.items()],
        "grouped": sorted(grouped),
    }


MIN_PRECISION = 0.995


def choose(
    candidates: dict[Pair, Candidate], verified: set[Pair], truth: dict[str, str], files: list[str]
) -> DuplicatePolicy:
    """The policy with the best original-copy F1 on ``files`` whose precision is at least MIN_PRECISION
    (a grid search, vectorised: each policy is a few array comparisons over all candidate pairs), given the
    pairs geometric verification made duplicates at ingest."""
    chosen_files = set(files)
    pairs = [p for p in {*candidates, *verified} if p[0] in chosen_files and p[1] in chosen_files]
    origin = [(truth[a], truth[b]) for a, b in pairs]
    keep = np.array([not ambiguous(*o) for o in origin])
    wrong = np.array([oa != ob for oa, ob in origin]) & keep
    right = np.array(
        [oa == ob and is_original(a) != is_original(b) for (a, b), (oa, ob) in zip(pairs, origin, strict=True)]
    )
    positives = score(set(), truth, files, "original-copy").fn
    none = Candidate(False, 64, 64, 512, -1.0)
    c = [candidates.get(p, none) for p in pairs]
    aligned = np.array([p in verified for p in pairs])
    ex = np.array([x.exact for x in c])
    dp, dd, dx = (np.array([getattr(x, f) for x in c]) for f in ("phash_distance", "dhash_distance", "detail_distance"))
    cos = np.array([x.cosine for x in c])
    best: tuple[float, DuplicatePolicy] | None = None
    grid = itertools.product(
        (4, 6, 8, 10, 12), (4, 6, 8, 10, 12, 14), (60, 80, 100, 120, 140, 160, 200, 512),
        (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.01), (0, 4, 6, 8, 10, 12, 16),
    )  # fmt: skip
    for hp, hd, hx, tc, m in grid:
        by_hashes = (dp <= hp) & (dd <= hd) & (dx <= hx)
        near = aligned | ex | by_hashes | ((cos >= tc) & (np.minimum(dp, dd) <= m) & (dx <= hx))
        tp, fp = int((near & right).sum()), int((near & wrong).sum())
        if tp == 0 or tp / (tp + fp) < MIN_PRECISION:
            continue
        f1 = 2 * tp / (2 * tp + fp + (positives - tp))
        if best is None or f1 > best[0]:
            policy = DuplicatePolicy(
                max_phash_distance=hp, max_dhash_distance=hd, max_detail_distance=hx,
                near_duplicate_min_cosine=min(tc, 1.0), embedding_max_hash_distance=m,
                similar_min_cosine=min(0.75, tc),
            )  # fmt: skip
            best = (f1, policy)
    if best is None:
        raise SystemExit(f"no policy in the grid reaches precision {MIN_PRECISION} on split A")
    return best[1]


def analyse(
    run: dict[str, Any], files: list[str], files_a: list[str], files_b: list[str], truth: dict[str, str]
) -> str:
    ingest_s, query_s = run["ingest_s"], run["query_s"]
    imagededup: dict[str, dict[str, Any]] = run["imagededup"]
    candidates = {(a, b): Candidate(bool(ex), *rest) for a, b, ex, *rest in run["candidates"]}
    stored_tiers = {(a, b): (tier, rule) for a, b, tier, rule in run["stored"]}
    stored = set(stored_tiers)
    grouped = {(a, b) for a, b in run["grouped"]}

    def predict(policy: DuplicatePolicy) -> dict[Pair, tuple[int, str]]:
        # Geometric verification runs at ingest on the SIMILAR candidates (server-default keypoint thresholds);
        # its verdicts are taken as stored. The grid chooses the hash and embedding thresholds.
        out = {p: tr for p, tr in stored_tiers.items() if tr[1] == "keypoints"}
        for p, c in candidates.items():
            found = tier_of(
                policy, exact=c.exact, phash_distance=c.phash_distance, dhash_distance=c.dhash_distance,
                detail_distance=c.detail_distance, cosine=c.cosine,
            )  # fmt: skip
            if found is not None and found[0] in (1, 2):
                out[p] = (found[0], found[1])
        return out

    verified = {p for p, (_, rule) in stored_tiers.items() if rule == "keypoints"}
    chosen = choose(candidates, verified, truth, files_a)
    chosen_pairs = predict(chosen)

    lines = [
        f"{len(files)} images ({len(set(truth.values()))} originals); ingest through gRPC {ingest_s:.1f} s "
        f"({len(files) / ingest_s:.1f} img/s); {len(files)} FindDuplicates + GetImage calls {query_s:.1f} s.",
        "",
        f"Thresholds chosen on split A (best F1 with precision >= {MIN_PRECISION}): {chosen}.",
        f"Server defaults (measured as stored at ingest): {DuplicatePolicy()}.",
        "",
    ]
    for mode in ("original-copy", "all"):
        lines += [
            f"### {mode} pairs",
            "",
            "| method | precision | recall | F1 | TP | FP | FN |",
            "|---|---|---|---|---|---|---|",
        ]
        lines.append(score(set(chosen_pairs), truth, files_b, mode).row("DeepLens, chosen thresholds, split B"))
        lines.append(score(set(chosen_pairs), truth, files, mode).row("DeepLens, chosen thresholds, all"))
        lines.append(score(stored, truth, files, mode).row("DeepLens, server defaults (stored links), all"))
        lines.append(score(grouped, truth, files, mode).row("DeepLens groups (transitive), all"))
        for method, result in imagededup.items():
            pairs = {_pair(a, b) for a, b in result["pairs"]}  # type: ignore[union-attr]
            lines.append(score(pairs, truth, files, mode).row(f"imagededup {method} (threshold 10), all"))
        lines.append("")

    # Per tier and per transform, for the stored links (server defaults).
    lines += [
        "### DeepLens stored links by tier and rule (all images)",
        "",
        "| tier / rule | correct | wrong |",
        "|---|---|---|",
    ]
    by_rule: Counter[tuple[str, str]] = Counter()
    for p, (tier, rule) in stored_tiers.items():
        verdict = "ambiguous" if ambiguous(truth[p[0]], truth[p[1]]) else str(truth[p[0]] == truth[p[1]])
        by_rule[(f"{'EXACT' if tier == 1 else 'NEAR_DUPLICATE'} / {rule}", verdict)] += 1
    lines[-2] = "| tier / rule | correct | wrong | video frames (not scored) |"
    lines[-1] = "|---|---|---|---|"
    for label in sorted({k[0] for k in by_rule}):
        cells = [by_rule[(label, v)] for v in ("True", "False", "ambiguous")]
        lines.append(f"| {label} | " + " | ".join(map(str, cells)) + " |")
    lines += [
        "",
        "### Recall per transform (original-copy pairs, all images)",
        "",
        "| transform | DeepLens defaults | " + " | ".join(f"imagededup {m}" for m in imagededup) + " |",
        "|---|---|" + "---|" * len(imagededup),
    ]
    method_pairs = {m: {_pair(a, b) for a, b in r["pairs"]} for m, r in imagededup.items()}  # type: ignore[union-attr]
    for tname, _ in TRANSFORMS.items():
        wanted = [
            _pair(o_file, c_file)
            for o_file in files
            if is_original(o_file)
            for c_file in files
            if c_file.startswith(f"{truth[o_file]}--{tname}.")
        ]
        cells = [f"{sum(p in stored for p in wanted) / len(wanted):.2f}"]
        cells += [f"{sum(p in pairs for p in wanted) / len(wanted):.2f}" for pairs in method_pairs.values()]
        lines.append(f"| {tname} | " + " | ".join(cells) + " |")
    # The hard negatives: distinct images that look alike, and what each method called them.
    lines += [
        "",
        "### Different originals called duplicates, by kind (pairs)",
        "",
        "| method | noise | chessboard shots | stereo / before-after | other | video frames (not scored) |",
        "|---|---|---|---|---|---|",
    ]
    for label, pairs in [("DeepLens defaults", stored), *((f"imagededup {m}", ps) for m, ps in method_pairs.items())]:
        kinds: Counter[str] = Counter()
        for a, b in pairs:
            if truth[a] != truth[b]:
                kinds[negative_kind(truth[a], truth[b])] += 1
        cells = [kinds[k] for k in ("noise", "chessboard", "pair", "other", "ambiguous")]
        lines.append(f"| {label} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
