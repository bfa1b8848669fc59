"""Where uploaded originals are kept until (and after) a worker indexes them: content-addressed files.

The root is a local directory — on a cluster, a shared mount. Paths are built here from validated tenant ids
and hex digests only, so no request field can steer a read or write outside the tenant's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from pathlib import Path

from deeplens_server.errors import NotFound
from deeplens_server.imaging import THUMBNAIL_SIZES


class BlobStore:
    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    def _path(self, tenant_id: str, sha256: str) -> Path:
        return self._root / "tenants" / tenant_id / "originals" / sha256[:2] / sha256

    def uri(self, tenant_id: str, sha256: str) -> str:
        return self._path(tenant_id, sha256).as_uri()

    async def put(self, tenant_id: str, sha256: str, data: bytes) -> str:
        """Stores ``data`` (idempotent: the same content lands at the same path). Returns its URI."""
        path = self._path(tenant_id, sha256)

        def write() -> None:
            if path.exists() and path.stat().st_size == len(data):
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
        return path.as_uri()

    def _tenant_root(self, tenant_id: str) -> Path:
        return self._root / "tenants" / tenant_id

    def _thumbnail(self, tenant_id: str, sha256: str, size: int) -> Path:
        return self._tenant_root(tenant_id) / "thumbnails" / sha256[:2] / f"{sha256}-{size}.webp"

    def thumbnail_path(self, tenant_id: str, sha256: str, size: int) -> Path:
        """Where a thumbnail lives, for readers already in a worker thread."""
        return self._thumbnail(tenant_id, sha256, size)

    def _features(self, tenant_id: str, sha256: str, *, legacy: bool = False) -> Path:
        # Stored as .npz until the compact format (keypoints.Keypoints.to_bytes); both are read.
        suffix = "orb.npz" if legacy else "orb.bin"
        return self._tenant_root(tenant_id) / "thumbnails" / sha256[:2] / f"{sha256}-{suffix}"

    async def usage(self, tenant_id: str) -> tuple[int, int]:
        """(files, bytes) of the originals stored for the tenant."""

        def walk() -> tuple[int, int]:
            files = [p for p in (self._tenant_root(tenant_id) / "originals").rglob("*") if p.is_file()]
            return len(files), sum(p.stat().st_size for p in files)

        return await asyncio.to_thread(walk)

    async def delete_originals(self, tenant_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._tenant_root(tenant_id) / "originals", True)

    async def delete_thumbnails(self, tenant_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._tenant_root(tenant_id) / "thumbnails", True)

    async def delete_content(self, tenant_id: str, sha256: str, *, original: bool) -> int:
        """Deletes the thumbnails of this content and, if asked, its original; returns the original's size."""

        def remove() -> int:
            freed = 0
            for size in THUMBNAIL_SIZES:
                self._thumbnail(tenant_id, sha256, size).unlink(missing_ok=True)
            self._features(tenant_id, sha256).unlink(missing_ok=True)
            self._features(tenant_id, sha256, legacy=True).unlink(missing_ok=True)
            if original:
                path = self._path(tenant_id, sha256)
                with contextlib.suppress(FileNotFoundError):
                    freed = path.stat().st_size
                    path.unlink()
            return freed

        return await asyncio.to_thread(remove)

    async def put_thumbnails(
        self, tenant_id: str, sha256: str, made: dict[int, bytes], *, features: bytes | None = None
    ) -> None:
        """Stores the thumbnails and, if given, the verification features (``keypoints.Keypoints``)."""

        def write() -> None:
            files = [(self._thumbnail(tenant_id, sha256, size), data) for size, data in made.items()]
            if features is not None:
                files.append((self._features(tenant_id, sha256), features))
            for path, data in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)

        await asyncio.to_thread(write)

    async def get_features(self, tenant_id: str, sha256: str) -> bytes:
        def read() -> bytes:
            try:
                return self._features(tenant_id, sha256).read_bytes()
            except FileNotFoundError:
                return self._features(tenant_id, sha256, legacy=True).read_bytes()

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError as exc:
            raise NotFound("features", sha256, reason="FEATURES_MISSING") from exc

    async def get_thumbnail(self, tenant_id: str, sha256: str, size: int) -> bytes:
        path = self._thumbnail(tenant_id, sha256, size)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise NotFound("thumbnail", f"{sha256}-{size}", reason="THUMBNAIL_MISSING") from exc

    async def get(self, tenant_id: str, sha256: str) -> bytes:
        path = self._path(tenant_id, sha256)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise NotFound("blob", path.as_uri(), reason="ORIGINAL_MISSING") from exc
