"""Structured logs: JSON lines with trace and tenant ids; API-key secrets never appear."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
from deeplens_server.logs import JsonFormatter, bind_tenant, mask_secrets, unbind_tenant
from deeplens_stack import Stack

from tests.conftest import ClientFactory, new_tenant


def test_json_lines_name_the_tenant_and_mask_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("deeplens.test.logs")
    log.addHandler(handler)
    log.propagate = False
    token = bind_tenant("acme")
    try:
        log.warning("key %s was used", "dlk_0123456789abcdef_" + "s" * 43)
    finally:
        unbind_tenant(token)
        log.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["tenant"] == "acme"
    assert line["level"] == "WARNING"
    assert line["message"] == "key dlk_0123456789abcdef_<redacted> was used"
    assert mask_secrets("no secret here") == "no secret here"


@pytest.mark.stack
def test_worker_logs_carry_trace_and_tenant_and_no_secret(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, _ = new_tenant(admin, connect)
    _, secret = admin.create_api_key(tenant, resources_pb2.ROLE_EDITOR)
    client = connect(secret)
    op = client.ingest_image(f"tenants/{tenant}/collections/logs", photos["text"], image_id="text")
    client.wait_operation(op.name, timeout=120)
    name = f"tenants/{tenant}/collections/logs/images/text"
    logs = stack.config.data_dir / "logs"
    found: dict[str, object] | None = None
    deadline = time.monotonic() + 10
    while found is None and time.monotonic() < deadline:
        for raw in (logs / "worker.log").read_text().splitlines():
            if raw.startswith("{") and json.loads(raw)["message"] == f"indexed {name}":
                found = json.loads(raw)
        time.sleep(0.2)
    assert found is not None
    assert found["tenant"] == tenant
    assert re.fullmatch(r"[0-9a-f]{32}", str(found["trace_id"]))
    for service in ("server", "worker"):
        text = (logs / f"{service}.log").read_text()
        assert secret.split("_", 2)[2] not in text  # the key's secret part, anywhere
        assert stack.admin_key().split("_", 2)[2] not in text
