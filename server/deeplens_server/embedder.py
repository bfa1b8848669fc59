"""Embeddings from the Triton Inference Server (gRPC). The model's input comes from ``imaging.model_input``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton
from numpy.typing import NDArray
from opentelemetry.trace import SpanKind
from tritonclient.utils import InferenceServerException

from deeplens_server.errors import Unavailable
from deeplens_server.metrics import TRITON_SECONDS
from deeplens_server.telemetry import span

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    name: str
    version: str
    state: str


class Embedder:
    def __init__(self, url: str, *, model: str, version: str) -> None:
        self._client = triton.InferenceServerClient(url=url)
        self.model = model
        self.version = version

    @property
    def model_id(self) -> str:
        return f"{self.model}@{self.version}"

    async def close(self) -> None:
        await self._client.close()

    async def repository_index(self) -> list[RepositoryEntry]:
        """Every model version the inference server's repository holds, with its state ("READY", ...)."""
        try:
            index = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException as exc:
            raise Unavailable("the embedding service is unavailable", reason="EMBEDDING_UNAVAILABLE") from exc
        return [
            RepositoryEntry(str(m.get("name", "")), str(m.get("version", "")), str(m.get("state", "")))
            for m in (index or {}).get("models", [])
        ]

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model, self.version))
        except InferenceServerException:
            return False

    async def wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.ready():
            if loop.time() > deadline:
                raise Unavailable(f"embedding model {self.model_id} is not ready", reason="MODEL_NOT_READY")
            await asyncio.sleep(0.2)

    async def embed(self, batch: NDArray[np.uint8], *, timeout: float | None = None) -> NDArray[np.float32]:
        """Embeds a batch of model inputs (N, 224, 224, 3) uint8 into (N, dim) L2-normalised float32."""
        tensor = triton.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        try:
            with (
                span("triton.infer", SpanKind.CLIENT, model=self.model_id, batch=int(batch.shape[0])),
                TRITON_SECONDS.time(),
            ):
                result = await self._client.infer(
                    self.model,
                    [tensor],
                    model_version=self.version,
                    outputs=[triton.InferRequestedOutput(OUTPUT_NAME)],
                    client_timeout=timeout,
                )
        except InferenceServerException as exc:
            raise Unavailable("the embedding service is unavailable", reason="EMBEDDING_UNAVAILABLE") from exc
        out = result.as_numpy(OUTPUT_NAME)
        if out is None:
            raise Unavailable("the embedding service returned no embedding", reason="EMBEDDING_UNAVAILABLE")
        return np.asarray(out, dtype=np.float32)
