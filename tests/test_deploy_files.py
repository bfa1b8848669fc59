"""The deploy files, checked offline (no Docker engine or cluster runs here): the compose file against the
Compose specification, the Kubernetes manifests against the API schemas (strict: unknown fields fail), the
generated Triton configs against Triton's ModelConfig, and no secret in any committed file."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose
from deeplens_server.config import TRITON_QUERY_SUFFIX
from deeplens_stack import milvus_server
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31"
sys.path.insert(0, str(ROOT / "triton_models"))
import catalog  # noqa: E402


def _at(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())  # resolves the << merges
    return loaded


def test_compose_file_follows_the_specification() -> None:
    spec = _compose()
    parsed = PyCompose.from_json(json.dumps(spec))
    parsed.to_spec()  # the full ComposeSpecification model
    services = spec["services"]
    assert set(parsed.service_names()) >= {
        "postgres", "redis", "etcd", "minio", "milvus", "triton", "server", "worker", "otel-collector", "jaeger",
    }  # fmt: skip
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert source == "./model_repository" or (COMPOSE / source).exists(), source
            else:
                assert source in spec["volumes"], f"{name} mounts undeclared volume {source}"
        for env_file in service.get("env_file", []):
            path = env_file["path"]
            assert (COMPOSE / path).exists() or (COMPOSE / f"{path}.example").exists(), path
    unhealthy = {n for n, s in services.items() if "healthcheck" not in s}
    assert unhealthy <= {"otel-collector", "jaeger"}, f"no health check: {unhealthy}"  # distroless images
    for name in ("server", "worker"):
        assert all(
            services[name]["depends_on"][d]["condition"] == "service_healthy" for d in services[name]["depends_on"]
        )

    # The compose Milvus runs with the settings the embedded server was measured with, from its environment.
    milvus_env = services["milvus"]["environment"]
    for path, value in milvus_server.TUNING.items():
        assert milvus_env[path.upper().replace(".", "_")] == str(value), path

    bad = _compose()
    bad["services"]["server"]["healthcheck"]["intervall"] = "5s"
    with pytest.raises(ValueError, match="intervall"):
        PyCompose.from_json(json.dumps(bad))


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in {"kustomization.yaml", "milvus-values.yaml"}:
            continue
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def test_kubernetes_manifests_validate_strictly() -> None:
    manifests = _manifests()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in manifests}
    assert {
        ("Deployment", "deeplens-server"), ("Service", "deeplens"), ("HorizontalPodAutoscaler", "deeplens-server"),
        ("PodDisruptionBudget", "deeplens-server"), ("Deployment", "deeplens-worker"),
        ("HorizontalPodAutoscaler", "deeplens-worker"), ("Deployment", "triton"), ("ConfigMap", "deeplens-config"),
        ("Secret", "deeplens-secrets"),
    } <= kinds  # fmt: skip
    for _, doc in manifests:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).exists() for name in listed)
    assert "secret.example.yaml" not in listed  # the real Secret comes from the secret store

    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests}
    server = by_name[("Deployment", "deeplens-server")]["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["grpc"]["port"] == 50051  # the gRPC health service
    triton = by_name[("Deployment", "triton")]["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    worker_hpa = by_name[("HorizontalPodAutoscaler", "deeplens-worker")]["spec"]["metrics"][0]
    assert worker_hpa["external"]["metric"]["name"] == "deeplens_queue_depth"

    broken = dict(by_name[("Deployment", "deeplens-server")])
    broken["spec"] = {**broken["spec"], "replicaz": 3}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    values = yaml.safe_load((K8S / "milvus-values.yaml").read_text())
    assert values["cluster"]["enabled"] is True
    # The cluster runs with the settings the embedded server was measured with.
    tuned = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    for path, value in milvus_server.TUNING.items():
        if path != "common.gracefulStopTimeout":  # the chart sets its own stop timeout per component
            assert _at(tuned, path) == value, path


def test_the_embedded_milvus_server_is_configured_as_tuned(tmp_path: Path) -> None:
    config = milvus_server.write_config(tmp_path, proxy_port=19530, port_base=20000)
    written = yaml.safe_load((config / "milvus.yaml").read_text())
    for path, value in milvus_server.TUNING.items():
        assert _at(written, path) == value, path
    assert _at(written, "dataCoord.segment.diskSegmentMaxSize") == 2048  # a neighbour left as it was
    assert _at(written, "log.file.maxSize") == 300  # the other `maxSize` keys too
    with pytest.raises(milvus_server.MilvusServerMissing):
        milvus_server.set_value("a:\n  b: 1\n", "a.c", 2)


@pytest.mark.parametrize("backend", ["python", "onnxruntime"])
@pytest.mark.parametrize("lane", catalog.LANES)
def test_triton_configs_are_valid_model_configs(backend: str, lane: str) -> None:
    for spec in catalog.MODELS:
        text = catalog.render_config(spec, backend=backend, lane=lane)
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        name = spec.name if lane == "bulk" else spec.name + catalog.QUERY_SUFFIX
        assert (config.name, config.backend, config.max_batch_size) == (name, backend, 64)
        assert config.output[0].dims == [spec.dim]
        # The bulk lane waits a little to batch single-image ingest requests; the query lane never waits.
        delay = config.dynamic_batching.max_queue_delay_microseconds
        assert (delay > 0) if lane == "bulk" else (delay == 0 and config.HasField("dynamic_batching"))
        kind = (
            model_config_pb2.ModelInstanceGroup.KIND_CPU
            if backend == "python"
            else model_config_pb2.ModelInstanceGroup.KIND_AUTO
        )
        assert config.instance_group[0].kind == kind


def test_the_server_looks_for_the_query_twins_the_catalog_writes() -> None:
    assert catalog.QUERY_SUFFIX == TRITON_QUERY_SUFFIX


def test_native_configs_match_the_exported_graphs(tmp_path: Path) -> None:
    """What Triton's onnxruntime backend checks when it loads a model: the config's inputs and outputs are the
    graph's, by name, type and shape (the batch dimension dynamic, as max_batch_size > 0 requires)."""
    import onnxruntime as ort

    written = catalog.write_native_repository(tmp_path)
    assert len(written) == 2 * len(catalog.MODELS)
    types = {model_config_pb2.TYPE_UINT8: "tensor(uint8)", model_config_pb2.TYPE_FP32: "tensor(float)"}
    for spec, lane in itertools.product(catalog.MODELS, catalog.LANES):
        text = (tmp_path / spec.served_name(lane) / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.name == spec.served_name(lane)
        graph = tmp_path / spec.served_name(lane) / spec.version / config.default_model_filename
        assert not graph.is_symlink()  # a copy: object-store repositories hold no links
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
            assert [d.name for d in declared] == [a.name for a in actual]
            for d, a in zip(declared, actual, strict=True):
                assert types[d.data_type] == a.type
                assert isinstance(a.shape[0], str)  # dynamic batch
                assert list(d.dims) == list(a.shape[1:])


_SECRET = re.compile(r"(password|secret|token|master_keys|admin_key)[\"']?\s*[:=]\s*[\"']?([^\s\"'#]+)", re.I)


def test_no_secret_in_committed_deploy_files() -> None:
    assert _SECRET.search("POSTGRES_PASSWORD=hunter2")  # the check can fail
    files = [*COMPOSE.glob("*.yaml"), COMPOSE / "deeplens.env", *K8S.glob("*.yaml"), ROOT / "deploy/docker/Dockerfile"]
    for path in files:
        for match in _SECRET.finditer(path.read_text()):
            key, value = match.groups()
            placeholder = value in {"{", "", '""'} or value.endswith("...") or value.startswith(("$", "<"))
            assert placeholder or value == "deeplens-secrets", (path.name, key, value)
    example = (COMPOSE / "secrets.env.example").read_text()
    values = [line.split("=", 1)[1] for line in example.splitlines() if "=" in line and not line.startswith("#")]
    assert all(v == "" or "change-me" in v or "REPLACE" in v or v == "deeplens" for v in values)
