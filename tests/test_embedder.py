"""The embedder's two lanes on the stack's real Triton: ingest through the model, searches through its twin."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from deeplens_server.embedder import Embedder
from deeplens_server.imaging import ImageLimits, decode_image, model_input
from deeplens_stack import Stack

MODEL = "efficientnet_lite0"


async def _inferences(client: triton.InferenceServerClient, name: str, expect: int | None = None) -> int:
    """Images ``name`` has embedded, by Triton's own statistics. Triton counts a request after it has answered
    it, so with ``expect`` this waits (up to 5 s) for the count to reach it."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        stats = await client.get_inference_statistics(model_name=name, model_version="1", as_json=True)
        count = sum(int(m.get("inference_count", 0)) for m in (stats or {}).get("model_stats", []))
        if expect is None or count >= expect or asyncio.get_running_loop().time() > deadline:
            return count
        await asyncio.sleep(0.05)


@pytest.mark.stack
async def test_searches_embed_through_the_twin_and_get_what_ingest_gets(stack: Stack, photos: dict[str, bytes]) -> None:
    url = stack.config.endpoints["DEEPLENS_TRITON_URL"]
    limits = ImageLimits(max_bytes=64 << 20, max_pixels=100_000_000)
    batch = np.stack([model_input(decode_image(photos[n], limits).working) for n in ("moon", "rocket")])
    embedder = Embedder(url, model=MODEL, version="1")
    raw = triton.InferenceServerClient(url=url)
    try:
        counts = {name: await _inferences(raw, name) for name in (MODEL, MODEL + "_query")}
        bulk = await embedder.embed(batch, lane="bulk")
        query = await embedder.embed(batch, lane="query")
        # Each lane ran on its own model: two images each.
        assert await _inferences(raw, MODEL, counts[MODEL] + 2) == counts[MODEL] + 2
        twin = counts[MODEL + "_query"] + 2
        assert await _inferences(raw, MODEL + "_query", twin) == twin
        # The same graph: a query embeds exactly as ingest embedded the same image.
        np.testing.assert_allclose(query, bulk, atol=1e-5)
        assert bulk.shape == (2, 1280)

        # The model list shows models, not lanes; Triton itself serves both.
        served = {m["name"] for m in (await raw.get_model_repository_index(as_json=True))["models"]}
        assert {MODEL, MODEL + "_query"} <= served
        listed = {e.name for e in await embedder.repository_index()}
        assert MODEL in listed
        assert not any(name.endswith("_query") for name in listed)
        assert await embedder.ready(f"{MODEL}@1")
        assert not await embedder.ready(f"{MODEL}_query@1")  # served, but a lane, not a model

        # Where no twin is served, the query lane is the model itself.
        alone = Embedder(url, model=MODEL, version="1", query_suffix="_no_such_twin")
        try:
            before = await _inferences(raw, MODEL)
            np.testing.assert_allclose(await alone.embed(batch, lane="query"), bulk, atol=1e-5)
            assert await _inferences(raw, MODEL, before + 2) == before + 2
        finally:
            await alone.close()

        # A twin that was served and then went away: the call fails over to the model itself, and the lane
        # keeps to the model until it looks for a twin again.
        gone = Embedder(url, model=MODEL, version="1", query_suffix="_gone")
        try:
            gone._twins[(MODEL, "1")] = (True, float("inf"))  # as if "_gone" had been ready when first asked
            before = await _inferences(raw, MODEL)
            np.testing.assert_allclose(await gone.embed(batch, lane="query"), bulk, atol=1e-5)
            assert await _inferences(raw, MODEL, before + 2) == before + 2
            assert gone._twins[(MODEL, "1")][0] is False
        finally:
            await gone.close()
    finally:
        await embedder.close()
        await raw.close()
