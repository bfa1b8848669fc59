"""Regenerates the Python code for proto/deeplens/v1 (messages, gRPC stubs and typed .pyi stubs), and the
googleapis protos they import under proto/google (copied from googleapis-common-protos, Apache-2.0).

    python proto/generate.py            # write into clients/python/deeplens/v1 and proto/google
    python proto/generate.py --check    # exit 1 if the committed files differ from a fresh generation

The generated files are never edited by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = Path("deeplens") / "v1"
OUTPUT_ROOT = ROOT / "clients" / "python"
INIT_TEXT = '"""Generated from proto/deeplens/v1 by proto/generate.py. Do not edit."""\n'


def _google_includes(dest: Path) -> Path:
    """Lays out the googleapis protos that ship in googleapis-common-protos under their canonical paths."""
    from google.rpc import status_pb2

    site = Path(status_pb2.__file__).resolve().parent.parent.parent
    for pkg in ("api", "rpc", "type"):
        src = site / "google" / pkg
        if src.is_dir():
            for proto in src.glob("*.proto"):
                target = dest / "google" / pkg / proto.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(proto, target)
    longrunning = dest / "google" / "longrunning"
    longrunning.mkdir(parents=True, exist_ok=True)
    # The wheel ships google/longrunning/operations.proto as operations_proto.proto.
    shutil.copyfile(site / "google" / "longrunning" / "operations_proto.proto", longrunning / "operations.proto")
    return dest


def generate(out_root: Path) -> None:
    from grpc_tools import protoc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    scripts = Path(sysconfig.get_path("scripts"))
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        includes = _google_includes(Path(tmp))
        out_root.mkdir(parents=True, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{includes}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    (out_root / PACKAGE_DIR / "py.typed").write_text("")


def _vendored_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "google").rglob("*.proto")}


def _generated_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in (root / PACKAGE_DIR).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "code"
        generate(fresh)
        want, have = _generated_files(fresh), _generated_files(OUTPUT_ROOT)
        stale = sorted(want ^ have)
        stale += sorted(f for f in want & have if not filecmp.cmp(fresh / f, OUTPUT_ROOT / f, shallow=False))
        vendored = _google_includes(Path(tmp) / "vendor")
        want, have = _vendored_files(vendored), _vendored_files(PROTO_ROOT)
        stale += sorted(f"proto/{f}" for f in want ^ have)
        stale += sorted(
            f"proto/{f}" for f in want & have if not filecmp.cmp(vendored / f, PROTO_ROOT / f, shallow=False)
        )
    if stale:
        print("generated code is stale; run `python3 dev.py gen`:", *stale, sep="\n  ")
        return 1
    print("generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    ns = parser.parse_args()
    if ns.check:
        return check()
    target = OUTPUT_ROOT / PACKAGE_DIR
    if target.exists():
        shutil.rmtree(target)
    generate(OUTPUT_ROOT)
    print(f"wrote {target.relative_to(ROOT)}")
    # The googleapis protos ours import, at their canonical paths inside the proto root, so that buf (and any
    # other protoc-based tool) resolves every import offline.
    shutil.rmtree(PROTO_ROOT / "google", ignore_errors=True)
    _google_includes(PROTO_ROOT)
    print("wrote proto/google (from googleapis-common-protos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
