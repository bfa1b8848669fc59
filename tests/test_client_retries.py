"""The Python client retries a call the server answers UNAVAILABLE (with backoff, from the channel's service
config), and only that: a server that fails twice then answers is seen to answer; INVALID_ARGUMENT is not
retried. A small in-process gRPC server counts the attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from deeplens.aio import AsyncDeepLensClient
from deeplens.client import DeepLensClient
from deeplens.v1 import search_service_pb2, search_service_pb2_grpc


class Flaky(search_service_pb2_grpc.SearchServiceServicer):
    def __init__(self) -> None:
        self.attempts = 0
        self.failures = 2
        self.code = grpc.StatusCode.UNAVAILABLE

    def SearchImages(
        self, request: search_service_pb2.SearchImagesRequest, context: grpc.ServicerContext
    ) -> search_service_pb2.SearchImagesResponse:
        self.attempts += 1
        if self.attempts <= self.failures:
            context.abort(self.code, "not now")
        return search_service_pb2.SearchImagesResponse(model="flaky@1")


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    servicer = Flaky()  # type: ignore[abstract]  # only SearchImages is served
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    search_service_pb2_grpc.add_SearchServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_unavailable_is_retried_until_it_answers(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    with DeepLensClient(target, api_key="dlk_x_y", timeout=20) as client:
        assert client.search_images("tenants/t", image_name="tenants/t/collections/c/images/i").model == "flaky@1"
    assert servicer.attempts == 3


def test_other_errors_are_not_retried(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky
    servicer.code = grpc.StatusCode.INVALID_ARGUMENT
    with DeepLensClient(target, api_key="dlk_x_y", timeout=20) as client, pytest.raises(grpc.RpcError) as failed:
        client.search_images("tenants/t", image_name="tenants/t/collections/c/images/i")
    err: Any = failed.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.attempts == 1


def test_the_async_client_retries_too(flaky: tuple[Flaky, str]) -> None:
    servicer, target = flaky

    async def call() -> str:
        async with AsyncDeepLensClient(target, api_key="dlk_x_y", timeout=20) as client:
            found = await client.search_images("tenants/t", image_name="tenants/t/collections/c/images/i")
            return found.model

    assert asyncio.run(call()) == "flaky@1"
    assert servicer.attempts == 3
