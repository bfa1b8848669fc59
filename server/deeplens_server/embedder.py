"""Embeddings from the Triton Inference Server (gRPC). The model's input comes from ``imaging.model_input``.

Every model the repository serves takes the same input and returns L2-normalised embeddings; calls name the
model version (``name@version``) — a tenant's — and default to the server's configured one.

Two lanes: ingest embeds through the model itself (``bulk``), whose batcher waits a few milliseconds to fill a
batch; a search embeds through its twin ``<name><query_suffix>`` (``query``), which never waits and runs on an
instance of its own, so a search does not queue behind an ingest batch. Where the inference server serves no
twin, the query lane falls back to the model itself (and looks for the twin again a minute later).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import tritonclient.grpc.aio as triton
from numpy.typing import NDArray
from opentelemetry.trace import SpanKind
from tritonclient.utils import InferenceServerException

from deeplens_server.config import TRITON_QUERY_SUFFIX
from deeplens_server.errors import Unavailable
from deeplens_server.metrics import TRITON_SECONDS
from deeplens_server.telemetry import span

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
# How long the query lane keeps to the model itself after finding no twin, before it looks again.
TWIN_RECHECK_SECONDS = 60.0

Lane = Literal["bulk", "query"]


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    name: str
    version: str
    state: str


class Embedder:
    def __init__(self, url: str, *, model: str, version: str, query_suffix: str = TRITON_QUERY_SUFFIX) -> None:
        self._client = triton.InferenceServerClient(url=url)
        self.model = model
        self.version = version
        self.query_suffix = query_suffix
        self._dims: dict[str, int] = {}
        # (name, version) -> whether its twin is served, and until when that answer holds.
        self._twins: dict[tuple[str, str], tuple[bool, float]] = {}

    @property
    def model_id(self) -> str:
        """The configured default model (``name@version``): new tenants start with it."""
        return f"{self.model}@{self.version}"

    def _parts(self, model_id: str | None) -> tuple[str, str]:
        if model_id is None:
            return self.model, self.version
        name, _, version = model_id.partition("@")
        return name, version

    async def dim(self, model_id: str) -> int:
        """The model's embedding size, from its metadata on the inference server."""
        if model_id not in self._dims:
            name, version = self._parts(model_id)
            try:
                meta = await self._client.get_model_metadata(name, version, as_json=True)
            except InferenceServerException as exc:
                raise Unavailable(f"model {model_id} is not served", reason="MODEL_NOT_READY") from exc
            outputs = [o for o in (meta or {}).get("outputs", []) if o.get("name") == OUTPUT_NAME]
            if not outputs:
                raise Unavailable(f"model {model_id} has no {OUTPUT_NAME} output", reason="MODEL_NOT_READY")
            self._dims[model_id] = int(outputs[0]["shape"][-1])
        return self._dims[model_id]

    async def close(self) -> None:
        await self._client.close()

    async def repository_index(self) -> list[RepositoryEntry]:
        """Every model version the inference server's repository holds, with its state ("READY", ...)."""
        try:
            index = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException as exc:
            raise Unavailable("the embedding service is unavailable", reason="EMBEDDING_UNAVAILABLE") from exc
        entries = [
            RepositoryEntry(str(m.get("name", "")), str(m.get("version", "")), str(m.get("state", "")))
            for m in (index or {}).get("models", [])
        ]
        # A query-lane twin is how a model is served, not a model of its own.
        served = {e.name for e in entries}
        return [e for e in entries if self._twin_of(e.name) not in served]

    def _twin_of(self, name: str) -> str | None:
        """The model ``name`` would be the query-lane twin of, by its name."""
        suffix = self.query_suffix
        return name[: -len(suffix)] if suffix and name.endswith(suffix) and len(name) > len(suffix) else None

    async def _served_name(self, name: str, version: str, lane: Lane) -> str:
        """The model to call for ``lane``: the twin for queries where it is served, else the model itself."""
        if lane == "bulk" or not self.query_suffix:
            return name
        now = time.monotonic()
        known = self._twins.get((name, version))
        if known is None or now >= known[1]:
            ready = await self._ready(name + self.query_suffix, version)
            known = (ready, float("inf") if ready else now + TWIN_RECHECK_SECONDS)
            self._twins[(name, version)] = known
        return name + self.query_suffix if known[0] else name

    async def _ready(self, name: str, version: str) -> bool:
        try:
            return bool(await self._client.is_model_ready(name, version))
        except InferenceServerException:
            return False

    async def ready(self, model_id: str | None = None) -> bool:
        """Whether the inference server serves ``model_id`` as a model: a served model's query-lane twin is not
        one (no tenant can be moved to it)."""
        name, version = self._parts(model_id)
        base = self._twin_of(name)
        if base is not None and await self._ready(base, version):
            return False
        return await self._ready(name, version)

    async def wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self.ready():
            if loop.time() > deadline:
                raise Unavailable(f"embedding model {self.model_id} is not ready", reason="MODEL_NOT_READY")
            await asyncio.sleep(0.2)

    async def embed(
        self,
        batch: NDArray[np.uint8],
        *,
        model: str | None = None,
        timeout: float | None = None,
        lane: Lane = "bulk",
    ) -> NDArray[np.float32]:
        """Embeds a batch of model inputs (N, 224, 224, 3) uint8 into (N, dim) L2-normalised float32 with
        ``model`` (``name@version``; the configured default if None), through ``lane``'s model."""
        name, version = self._parts(model)
        served = await self._served_name(name, version, lane)
        try:
            return await self._infer(batch, served, version, lane, timeout)
        except Unavailable:
            # A twin that went away (unloaded, a repository rewritten without it): the model itself answers. A
            # twin still served that failed (a deadline, an overloaded server) fails the call like the model would.
            if served == name or await self._ready(served, version):
                raise
            self._twins[(name, version)] = (False, time.monotonic() + TWIN_RECHECK_SECONDS)
            return await self._infer(batch, name, version, lane, timeout)

    async def _infer(
        self, batch: NDArray[np.uint8], name: str, version: str, lane: Lane, timeout: float | None
    ) -> NDArray[np.float32]:
        tensor = triton.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        try:
            with (
                span("triton.infer", SpanKind.CLIENT, model=f"{name}@{version}", batch=int(batch.shape[0])),
                TRITON_SECONDS.labels(lane).time(),
            ):
                result = await self._client.infer(
                    name,
                    [tensor],
                    model_version=version,
                    outputs=[triton.InferRequestedOutput(OUTPUT_NAME)],
                    client_timeout=timeout,
                )
        except InferenceServerException as exc:
            raise Unavailable("the embedding service is unavailable", reason="EMBEDDING_UNAVAILABLE") from exc
        out = result.as_numpy(OUTPUT_NAME)
        if out is None:
            raise Unavailable("the embedding service returned no embedding", reason="EMBEDDING_UNAVAILABLE")
        return np.asarray(out, dtype=np.float32)
