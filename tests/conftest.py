"""Fixtures: one real embedded stack per test session (own data directory and ports), and clients on it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deeplens.client import DeepLensClient
from deeplens_stack import Stack, StackConfig
from deeplens_stack.photos import sample_photos

TEST_PORT_BASE = int(os.environ.get("DEEPLENS_TEST_PORT_BASE", "47000"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = Path(tmp_path_factory.mktemp("stack"))
    stack = Stack(StackConfig(data_dir=data_dir, port_base=TEST_PORT_BASE, durable=False))
    try:
        stack.up(timeout=240)
        yield stack
    finally:
        stack.destroy()


ClientFactory = Callable[[str], DeepLensClient]


@pytest.fixture(scope="session")
def connect(stack: Stack) -> Iterator[ClientFactory]:
    """Opens clients that identify as a given tenant; closes them at the end."""
    opened: list[DeepLensClient] = []

    def factory(tenant: str) -> DeepLensClient:
        client = DeepLensClient(stack.config.grpc_target, tenant=tenant, timeout=60)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


def new_tenant(connect: ClientFactory) -> tuple[str, DeepLensClient]:
    tenant = f"t{uuid.uuid4().hex[:12]}"
    client = connect(tenant)
    client.create_tenant(tenant, f"test tenant {tenant}")
    return tenant, client


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return sample_photos()
