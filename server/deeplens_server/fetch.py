"""Fetching an image by http(s) URL for a worker, defensively: a total time limit, a byte cap enforced while
reading, image content types only, and redirects followed by hand (at most ``MAX_REDIRECTS``) so that every hop
is checked against the operator's private-address policy — a URL must not reach the internal network."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import aiohttp

from deeplens_server.errors import DeepLensError, ImageRejected, InvalidArgument, Unavailable
from deeplens_server.storage import StoragePolicy, check_host

MAX_REDIRECTS = 5
TIMEOUT_SECONDS = 20.0


def check_url(url: str, policy: StoragePolicy, field: str = "source_uri") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise InvalidArgument("source_uri must be an http(s) URL", field=field, reason="INVALID_URL")
    check_host(parts.hostname, policy, field)
    return url


def _refused(message: str, reason: str, **metadata: str) -> DeepLensError:
    return ImageRejected(message, field="source_uri", reason=reason, metadata=metadata)


async def fetch_image(url: str, policy: StoragePolicy, max_bytes: int) -> bytes:
    """The body at ``url``; raises ``ImageRejected`` for permanent refusals, ``Unavailable`` for transient ones."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS, connect=5.0)
    too_large = f"the image is over {max_bytes} bytes"
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    check_url(url, policy)
                except InvalidArgument as exc:
                    raise _refused(exc.message, "URL_NOT_ALLOWED") from exc
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status in (408, 429) or response.status >= 500:
                        raise Unavailable(f"the server answered {response.status}", reason="URL_UNAVAILABLE")
                    if response.status != 200:
                        raise _refused(f"the server answered {response.status}", "URL_NOT_FETCHABLE")
                    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if not kind.startswith("image/"):
                        raise _refused(f"the URL serves {kind or 'no content type'}, not an image", "URL_NOT_AN_IMAGE")
                    if (response.content_length or 0) > max_bytes:
                        raise _refused(too_large, "IMAGE_TOO_LARGE", max_bytes=str(max_bytes))
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > max_bytes:
                            raise _refused(too_large, "IMAGE_TOO_LARGE", max_bytes=str(max_bytes))
                    return bytes(body)
            raise _refused(f"more than {MAX_REDIRECTS} redirects", "TOO_MANY_REDIRECTS")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable("the URL could not be fetched", reason="URL_UNAVAILABLE") from exc
