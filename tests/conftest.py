"""Fixtures: one real embedded stack per test session (own data directory and ports), and clients on it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deeplens.client import DeepLensClient
from deeplens.v1 import resources_pb2
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
    """Opens clients that call with a given API key; closes them at the end."""
    opened: list[DeepLensClient] = []

    def factory(api_key: str) -> DeepLensClient:
        client = DeepLensClient(stack.config.grpc_target, api_key=api_key, timeout=60)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


@pytest.fixture(scope="session")
def admin(stack: Stack, connect: ClientFactory) -> DeepLensClient:
    """The platform administrator."""
    return connect(stack.admin_key())


def new_tenant(
    admin: DeepLensClient,
    connect: ClientFactory,
    role: resources_pb2.Role.ValueType = resources_pb2.ROLE_TENANT_ADMIN,
    limits: resources_pb2.TenantLimits | None = None,
) -> tuple[str, DeepLensClient]:
    """A fresh tenant and a client holding a key of ``role`` for it."""
    tenant = f"t{uuid.uuid4().hex[:12]}"
    admin.create_tenant(tenant, f"test tenant {tenant}", limits)
    _, secret = admin.create_api_key(tenant, role, "test")
    return tenant, connect(secret)


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return sample_photos()
