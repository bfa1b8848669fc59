"""``deeplens``: the command line over the Python client.

    export DEEPLENS_TARGET=127.0.0.1:50051 DEEPLENS_API_KEY=dlk_...
    deeplens ingest tenants/acme/collections/photos ~/Pictures      # a live progress bar
    deeplens search tenants/acme --file cat.jpg                     # a results table
    deeplens duplicates tenants/acme                                 # groups, keepers, reclaimable bytes
    deeplens storage tenants/acme --json                             # JSON instead of a table

Errors print one line (the gRPC code, the message, the ErrorInfo reason) and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from deeplens.client import DeepLensClient, error_info, operation_metadata, rpc_status
from deeplens.v1 import admin_service_pb2, resources_pb2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
ROLES = {"viewer": 1, "uploader": 2, "editor": 3, "admin": 4}
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")


class CliError(Exception):
    """A mistake in the command line or the files it names (exit 2)."""


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _name(resource: str) -> str:
    return resource.rsplit("/", 1)[-1]


def image_files(paths: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(file, image id) for every image file named or under a named folder; ids from relative paths."""
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            yield path, _image_id(path.name)
        elif path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES:
                    yield found, _image_id(str(found.relative_to(path)))
        else:
            raise CliError(f"no such file or folder: {raw}")


def _image_id(relative: str) -> str:
    stem = relative.rsplit(".", 1)[0] if "." in relative else relative
    return _NOT_ID.sub("_", stem).strip("._-")[:128] or "image"


def _progress(client: DeepLensClient, name: str, as_json: bool) -> operations_pb2.Operation:
    """Follows an operation to the end with a progress bar on stderr (a line per change when not a tty)."""
    tty = sys.stderr.isatty()
    final: operations_pb2.Operation | None = None
    for update in client.watch_operation(name):
        final = update
        if as_json:
            continue
        m = operation_metadata(update)
        share = m.processed / m.total if m.total else (1.0 if update.done else 0.0)
        bar = "#" * int(share * 30)
        state = resources_pb2.OperationState.Name(m.state).removeprefix("OPERATION_STATE_")
        line = (
            f"[{bar:<30}] {share:4.0%} {m.processed}/{m.total} {state.lower()}: {m.succeeded} indexed, "
            f"{m.failed} failed, {m.duplicates} duplicates, {m.items_per_second:.1f} img/s"
        )
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    if tty and not as_json:
        print(file=sys.stderr)
    if final is None:
        raise CliError(f"no update for {name}")
    return final


def _finish(client: DeepLensClient, op: operations_pb2.Operation, args: argparse.Namespace) -> int:
    if getattr(args, "no_wait", False):
        print(json.dumps(_dict(op)) if args.json else op.name)
        return 0
    final = _progress(client, op.name, args.json)
    m = operation_metadata(final)
    if args.json:
        print(json.dumps(_dict(final)))
    else:
        print(f"{final.name}: {m.succeeded} indexed, {m.failed} failed, {m.duplicates} duplicates")
        if final.response.Is(admin_service_pb2.ReindexTenantResponse.DESCRIPTOR):
            moved = admin_service_pb2.ReindexTenantResponse()
            final.response.Unpack(moved)
            print(f"the tenant searches with {moved.model} now (was {moved.previous_model})")
        if final.HasField("error"):
            print(f"error: {final.error.message}")
    return 1 if final.HasField("error") or m.failed else 0


def cmd_ingest(client: DeepLensClient, args: argparse.Namespace) -> int:
    files = list(image_files(args.paths))
    if not files:
        raise CliError("no image files found")
    op = client.upload_files(args.parent, files, tags=args.tags, timeout=max(60.0, len(files) * 2.0))
    return _finish(client, op, args)


def cmd_scan(client: DeepLensClient, args: argparse.Namespace) -> int:
    op = client.scan_storage_location(args.location, prefix=args.prefix, collection_id=args.collection)
    return _finish(client, op, args)


def cmd_watch(client: DeepLensClient, args: argparse.Namespace) -> int:
    return _finish(client, client.get_operation(args.operation), args)


def cmd_search(client: DeepLensClient, args: argparse.Namespace) -> int:
    content = Path(args.file).expanduser().read_bytes() if args.file else None
    found = client.search_images(
        args.parent, image_content=content, image_name=args.name, top_k=args.top_k, min_score=args.min_score
    )
    if args.json:
        print(json.dumps(_dict(found)))
        return 0
    rows = [
        (n, f"{r.score:.3f}", r.image.name, f"{r.image.width}x{r.image.height}", r.image.format)
        for n, r in enumerate(found.results, 1)
    ]
    print(_table(rows, ("rank", "score", "image", "size", "format")))
    print(f"{len(rows)} results from {found.model} in {found.processing_time.ToMilliseconds()} ms")
    return 0


def cmd_duplicates(client: DeepLensClient, args: argparse.Namespace) -> int:
    groups = list(client.iter_duplicate_groups(args.parent, include_resolved=args.include_resolved))
    if args.json:
        print(json.dumps([_dict(g) for g in groups]))
        return 0
    rows = []
    for g in groups:
        tiers = sorted({resources_pb2.MatchTier.Name(x.tier).removeprefix("MATCH_TIER_").lower() for x in g.links})
        rows.append((_name(g.name), len(g.members), g.keeper, f"{g.reclaimable_bytes:,}", ",".join(tiers)))
    print(_table(rows, ("group", "images", "keeper", "reclaimable bytes", "tiers")))
    print(f"{len(rows)} groups, {sum(g.reclaimable_bytes for g in groups):,} bytes reclaimable")
    return 0


def cmd_storage(client: DeepLensClient, args: argparse.Namespace) -> int:
    report = client.get_storage_report(args.parent)
    if args.json:
        print(json.dumps(_dict(report)))
        return 0
    usages = [("total", report.total)]
    usages += [(u.key, u) for u in (*report.by_storage_location, *report.by_collection)]
    rows = [(key, u.images, f"{u.bytes:,}", u.duplicate_images, f"{u.reclaimable_bytes:,}") for key, u in usages]
    print(_table(rows, ("where", "images", "bytes", "duplicates", "reclaimable bytes")))
    return 0


def cmd_tenants(client: DeepLensClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        tenants = [client.create_tenant(args.tenant_id, args.display_name)]
    elif args.action == "get":
        tenants = [client.get_tenant(f"tenants/{args.tenant_id}")]
    else:
        tenants = list(client.iter_tenants())
    if args.json:
        print(json.dumps([_dict(t) for t in tenants]))
    else:
        print(_table([(t.name, t.display_name, t.create_time.ToJsonString()) for t in tenants],
                     ("tenant", "display name", "created")))  # fmt: skip
    return 0


def cmd_keys(client: DeepLensClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        key, secret = client.create_api_key(args.tenant, ROLES[args.role], args.display_name)  # type: ignore[arg-type]
        print(json.dumps({"api_key": _dict(key), "secret": secret}) if args.json else f"{key.name}\n{secret}")
        return 0
    keys = [client.revoke_api_key(args.name)] if args.action == "revoke" else list(client.iter_api_keys(args.tenant))
    if args.json:
        print(json.dumps([_dict(k) for k in keys]))
        return 0
    rows = [
        (k.name, k.display_name, resources_pb2.Role.Name(k.role).removeprefix("ROLE_").lower(),
         "revoked" if k.HasField("revoke_time") else "active")
        for k in keys
    ]  # fmt: skip
    print(_table(rows, ("key", "display name", "role", "state")))
    return 0


def cmd_stats(client: DeepLensClient, args: argparse.Namespace) -> int:
    stats = client.get_tenant_stats(args.tenant)
    if args.json:
        print(json.dumps(_dict(stats)))
        return 0
    rows = [
        ("images", f"{stats.images:,}"), ("bytes", f"{stats.bytes:,}"), ("vectors", f"{stats.vectors:,}"),
        ("duplicate images", f"{stats.duplicate_images:,}"), ("duplicate groups", f"{stats.duplicate_groups:,}"),
        ("reclaimable bytes", f"{stats.reclaimable_bytes:,}"), ("pending items", f"{stats.pending_items:,}"),
        ("queue depth (all tenants)", f"{stats.queue_depth:,}"),
        *((f"operations {k.removeprefix('OPERATION_STATE_').lower()}", str(v))
          for k, v in sorted(stats.operations_by_state.items())),
    ]  # fmt: skip
    print(_table(rows, (stats.name, "")))
    return 0


def cmd_health(client: DeepLensClient, args: argparse.Namespace) -> int:
    health = client.get_system_health()
    if args.json:
        print(json.dumps(_dict(health)))
    else:
        rows = [
            (d.name, "healthy" if d.healthy else "UNHEALTHY", f"{d.latency.ToNanoseconds() / 1e6:.1f} ms", d.message)
            for d in health.dependencies
        ]
        print(_table(rows, ("dependency", "status", "latency", "message")))
    return 0 if health.healthy else 1


def cmd_models(client: DeepLensClient, args: argparse.Namespace) -> int:
    models = client.list_models()
    if args.json:
        print(json.dumps([_dict(m) for m in models]))
    else:
        rows = [
            (m.name, "yes" if m.ready else "no", "default" if m.active else "", m.tenants, m.collection) for m in models
        ]
        print(_table(rows, ("model", "ready", "", "tenants", "collection")))
    return 0


def cmd_reindex(client: DeepLensClient, args: argparse.Namespace) -> int:
    return _finish(client, client.reindex_tenant(args.tenant, args.model), args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deeplens", description="DeepLens image search and duplicate detection.")
    p.add_argument("--target", default=os.environ.get("DEEPLENS_TARGET", "127.0.0.1:50051"), help="host:port")
    p.add_argument("--api-key", default=os.environ.get("DEEPLENS_API_KEY", ""), help="or DEEPLENS_API_KEY")
    p.add_argument("--tls-ca", help="PEM file: use TLS and trust these roots")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="upload image files and folders (recursively) into a collection")
    s.add_argument("parent", help="tenants/{tenant}/collections/{collection}")
    s.add_argument("paths", nargs="+")
    s.add_argument("--tags", type=lambda v: [t for t in v.split(",") if t], default=[])
    s.add_argument("--no-wait", action="store_true", help="print the operation and return")
    s.set_defaults(run=cmd_ingest)

    s = sub.add_parser("scan", help="index a storage location (S3, GCS, Azure, file)")
    s.add_argument("location", help="tenants/{tenant}/storageLocations/{location}")
    s.add_argument("--prefix", default="")
    s.add_argument("--collection", default="")
    s.add_argument("--no-wait", action="store_true")
    s.set_defaults(run=cmd_scan)

    s = sub.add_parser("watch", help="follow an operation to the end")
    s.add_argument("operation", help="tenants/{tenant}/operations/{operation}")
    s.set_defaults(run=cmd_watch)

    s = sub.add_parser("search", help="images that look like a file or an indexed image")
    s.add_argument("parent", help="tenants/{tenant} or a collection")
    query = s.add_mutually_exclusive_group(required=True)
    query.add_argument("--file")
    query.add_argument("--name", help="an indexed image's resource name")
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--min-score", type=float, default=0.0)
    s.set_defaults(run=cmd_search)

    s = sub.add_parser("duplicates", help="duplicate groups, largest reclaimable first")
    s.add_argument("parent")
    s.add_argument("--include-resolved", action="store_true")
    s.set_defaults(run=cmd_duplicates)

    s = sub.add_parser("storage", help="bytes and reclaimable bytes by storage location and collection")
    s.add_argument("parent")
    s.set_defaults(run=cmd_storage)

    s = sub.add_parser("stats", help="a tenant's images, bytes, duplicates, vectors, operations, pending work")
    s.add_argument("tenant", help="tenant id")
    s.set_defaults(run=cmd_stats)

    s = sub.add_parser("health", help="each dependency's status and latency (platform administrators)")
    s.set_defaults(run=cmd_health)

    s = sub.add_parser("models", help="the embedding models: the default for new tenants, tenants on each")
    s.set_defaults(run=cmd_models)

    s = sub.add_parser("reindex", help="move a tenant to another embedding model (searches switch when done)")
    s.add_argument("tenant", help="tenant id")
    s.add_argument("model", help="name@version, as `models` lists it")
    s.add_argument("--no-wait", action="store_true", help="print the operation and return")
    s.set_defaults(run=cmd_reindex)

    s = sub.add_parser("tenants", help="tenants (platform administrators)")
    s.add_argument("action", choices=("list", "get", "create"))
    s.add_argument("tenant_id", nargs="?", default="")
    s.add_argument("--display-name", default="")
    s.set_defaults(run=cmd_tenants)

    s = sub.add_parser("keys", help="API keys of a tenant")
    s.add_argument("action", choices=("list", "create", "revoke"))
    s.add_argument("tenant", nargs="?", default="", help="tenant id (list, create)")
    s.add_argument("--name", default="", help="the key's resource name (revoke)")
    s.add_argument("--role", choices=tuple(ROLES), default="viewer")
    s.add_argument("--display-name", default="")
    s.set_defaults(run=cmd_keys)
    return p


def _error_line(err: grpc.RpcError) -> str:
    call: Any = err
    code = call.code().name if call.code() is not None else "UNKNOWN"
    status = rpc_status(err)
    info = error_info(status) if status is not None else None
    reason = f" ({info.reason})" if info is not None and info.reason else ""
    return f"deeplens: {code}: {call.details()}{reason}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in {"keys"} and args.action in {"list", "create"} and not args.tenant:
        print("deeplens: keys list/create need a tenant id", file=sys.stderr)
        return 2
    if args.command == "tenants" and args.action in {"get", "create"} and not args.tenant_id:
        print("deeplens: tenants get/create need a tenant id", file=sys.stderr)
        return 2
    roots = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    try:
        with DeepLensClient(args.target, api_key=args.api_key, timeout=args.timeout, root_certificates=roots) as c:
            return int(args.run(c, args))
    except grpc.RpcError as err:
        print(_error_line(err), file=sys.stderr)
        return 1
    except (CliError, OSError) as err:
        print(f"deeplens: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
