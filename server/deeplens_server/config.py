"""Typed settings, read once from the environment (prefix ``DEEPLENS_``) and passed to whoever needs them.

Every dependency is a URL or URI, so the same code runs on the embedded stack and on real clusters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The query lane's twin of a model is named ``<model><suffix>`` (triton_models/catalog.py writes them).
TRITON_QUERY_SUFFIX = "_query"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPLENS_", frozen=True)

    postgres_dsn: str = "postgresql://deeplens@127.0.0.1:50432/deeplens"
    postgres_pool_max: int = 10
    redis_url: str = "redis://127.0.0.1:50379/0"
    milvus_uri: str = "http://127.0.0.1:50530"
    milvus_token: str = ""
    # How searches see writes on a Milvus server (Milvus Lite sees every write at once). "Tenant": an image is
    # searchable from every process once indexed, and reads wait for Milvus's next time tick only while their
    # tenant's vectors were written in the last `milvus_write_window_ms`. "Strong": every read waits.
    # "Bounded": no read waits, and writes younger than the server's gracefulTime may be missed.
    milvus_search_consistency: Literal["Tenant", "Strong", "Bounded"] = "Tenant"
    # Must exceed the Milvus server's common.gracefulTime (5,000 ms by default, 100 ms on the embedded server).
    milvus_write_window_ms: int = Field(default=10_000, ge=1)
    # HNSW ef for searches (raised to top_k when smaller): higher finds more of the true neighbours, slower.
    milvus_search_ef: int = 256
    triton_url: str = "127.0.0.1:50801"
    # Searches embed through the model's twin with this suffix (triton_models/catalog.py serves one without
    # the bulk lane's batching window), or through the model itself where none is served. Empty: never.
    triton_query_suffix: str = TRITON_QUERY_SUFFIX
    grpc_listen: str = "127.0.0.1:50051"
    # Prometheus /metrics endpoints (host:port; empty = off): the server's, and a worker's.
    metrics_listen: str = ""
    # "json" (one object per line, with trace and tenant ids) or "text".
    log_format: str = "json"
    worker_metrics_listen: str = ""
    # Root for uploaded originals: a local directory (or a shared mount in a cluster).
    blob_root: Path = Path(".deeplens/blobs")

    # The model new tenants start with (a tenant moves to another by a re-index operation). Its embedding
    # size comes from the inference server.
    embedding_model: str = "efficientnet_lite0"
    embedding_model_version: str = "1"
    # After a tenant switches models, its vectors of the old one are removed this much later: searches that
    # began under the old model finish on a whole collection.
    retired_vectors_grace_seconds: float = 30.0

    queue_name: str = "deeplens:queue"
    job_max_tries: int = 5
    # A job's time limit. arq reclaims the job of a worker that died only after the longest limit + 10 s,
    # so keep it short: one image, or one purge, fits well inside it.
    job_timeout_seconds: int = 60
    # Worker processes one `deeplens-worker` runs: one keeps about one core busy. 0: one per available core
    # (CPU affinity, capped by a container's CPU quota).
    worker_processes: int = 0
    # Jobs one worker process runs at once (they overlap I/O; the CPU work runs in threads).
    worker_max_jobs: int = 16
    event_stream_maxlen: int = 10_000

    # Defaults for tenants whose own limit is 0.
    default_requests_per_second: int = 200
    default_max_images: int = 10_000_000
    default_max_concurrent_operations: int = 10_000

    # A platform administrator key (``dlk_...``) installed at server start, for bootstrapping.
    bootstrap_admin_key: SecretStr = SecretStr("")

    # Master keys sealing tenant credentials at rest: `id:<base64 of 32 bytes>[,...]`, the first one active.
    master_keys: SecretStr = SecretStr("")
    # Directories under which tenants may register file:// storage locations (none by default).
    local_storage_roots: list[Path] = []
    # Whether storage endpoints may resolve to private, loopback or link-local addresses.
    allow_private_endpoints: bool = False

    # TLS for the gRPC endpoint; with a client CA, clients must present a certificate it signed (mTLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    max_message_bytes: int = 40 * 1024 * 1024
    shutdown_grace_seconds: float = 10.0

    @property
    def model_id(self) -> str:
        return f"{self.embedding_model}@{self.embedding_model_version}"
