"""docs/ops.md can't rot: every `sh` block in it runs, in order, in one bash session, with the real grpcurl
binary, against the live stack. The page's own checks (`jq -e ...`) and a non-zero exit fail the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deeplens_stack import Stack

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "ops.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def recipes() -> list[str]:
    """The page's executable blocks (```sh); the setup block (```sh setup) is left to the caller."""
    return BLOCK.findall(OPS.read_text())


def test_the_page_has_its_recipes() -> None:
    blocks = recipes()
    text = "\n".join(blocks)
    assert len(blocks) >= 9
    for method in ("Health/Check", "CreateTenant", "CreateApiKey", "IngestImage", "WatchOperation",
                   "SearchImages", "ListDuplicateGroups", "GetStorageReport", " list"):  # fmt: skip
        assert method in text, method


@pytest.mark.stack
def test_every_recipe_in_the_ops_guide_runs(stack: Stack, photos: dict[str, bytes], tmp_path: Path) -> None:
    photo = tmp_path / "chelsea.png"
    photo.write_bytes(photos["chelsea"])
    script = ["set -euo pipefail"]
    for n, block in enumerate(recipes(), 1):
        script += [f"echo '### recipe {n}' >&2", block]
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DEEPLENS": stack.config.grpc_target,
        "ADMIN_KEY": stack.admin_key(),
        "TENANT": f"ops{uuid.uuid4().hex[:10]}",
        "PHOTO": str(photo),
    }
    run = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{run.stderr[-4000:]}\n--- stdout ---\n{run.stdout[-4000:]}"
    assert run.stderr.count("### recipe") == len(recipes())
    assert "deeplens.v1.SearchService" in run.stdout  # reflection listed the services
    assert "PermissionDenied" in run.stdout  # the error recipe printed the status it checked
