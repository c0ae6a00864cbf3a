"""Kubernetes definitions: each overlay rendered by the real `kubectl kustomize`, validated strictly
against the Kubernetes 1.32 schemas, and checked for what the deployment promises (probes, ports,
explicit model control, GPU request, rolling updates, non-root, the Bento's config valid for
service.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from deploy import checks

OVERLAYS = checks.OVERLAYS
NAMESPACE = "modelpack"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    return checks.render_all(tmp_path_factory.mktemp("k8s"))


@pytest.fixture(scope="module")
def objects(rendered) -> dict[str, dict[tuple[str, str], dict]]:
    """overlay -> {(kind, name): object}."""
    out = {}
    for overlay, path in rendered.items():
        docs = checks.load_documents(path)
        out[overlay] = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    return out


def _pod(objects, overlay: str, name: str) -> dict:
    return objects[overlay][("Deployment", name)]["spec"]["template"]["spec"]


def _container(pod: dict, name: str) -> dict:
    return next(c for c in pod["containers"] if c["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(rendered, objects, overlay):
    result = checks.validate_manifests(rendered[overlay])
    assert result.passed, result.line()
    kinds = {kind for kind, _ in objects[overlay]}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    for obj in objects[overlay].values():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_strict_validation_rejects_an_unknown_field(rendered, tmp_path):
    docs = checks.load_documents(rendered["cpu"])
    triton = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")
    triton["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 8000}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    result = checks.validate_manifests(bad)
    assert not result.passed
    assert any("Deployment/triton" in p and "livenesProbe" in p for p in result.problems), result.problems


def test_unknown_overlay_is_named_with_the_known_ones():
    with pytest.raises(checks.NotFound, match=r"overlay 'staging'.*cpu.*gpu"):
        checks.render("staging")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_deployment(objects, overlay):
    deployment = objects[overlay][("Deployment", "triton")]
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"

    triton = _container(pod, "triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert "--model-control-mode=explicit" in triton["args"] and "--load-model=*" in triton["args"]
    assert "--model-repository=/models" in triton["args"]
    for key in ("cpu", "memory"):
        assert triton["resources"]["requests"][key] and triton["resources"]["limits"][key]

    # The repository comes from S3 through the initContainer, into the volume Triton reads.
    sync = next(c for c in pod["initContainers"] if c["name"] == "model-sync")
    assert sync["command"][:3] == ["aws", "s3", "sync"] and sync["args"] == [
        "$(MODEL_REPOSITORY_S3)",
        "/models",
    ]
    config_map = sync["envFrom"][0]["configMapRef"]["name"]
    source = objects[overlay][("ConfigMap", config_map)]["data"]["MODEL_REPOSITORY_S3"]
    assert source.startswith("s3://")
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in sync["volumeMounts"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_non_root_with_read_only_root(objects, overlay):
    for name in ("triton", "bento"):
        pod = _pod(objects, overlay, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_only_the_gpu_overlay_requests_a_gpu(objects):
    for overlay in OVERLAYS:
        resources = _container(_pod(objects, overlay, "triton"), "triton")["resources"]
        gpu = resources["limits"].get("nvidia.com/gpu")
        if overlay == "gpu":
            assert gpu == 1 and resources["requests"]["nvidia.com/gpu"] == 1
            tolerations = _pod(objects, overlay, "triton")["tolerations"]
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        else:
            assert gpu is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bento_reaches_triton_through_its_service(objects, overlay):
    pod = _pod(objects, overlay, "bento")
    bento = _container(pod, "bento")
    env = {e["name"]: e["value"] for e in bento["env"]}
    host, port = env["MODELPACK_TRITON_URL"].rsplit(":", 1)
    triton_service = objects[overlay][("Service", "triton")]
    grpc_port = next(p["port"] for p in triton_service["spec"]["ports"] if p["name"] == "grpc")
    assert host == f"triton.{NAMESPACE}.svc.cluster.local" and int(port) == grpc_port

    assert bento["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bento["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert [p["containerPort"] for p in bento["ports"]] == [3000]
    bento_service = objects[overlay][("Service", "bento")]
    assert (
        bento_service["spec"]["selector"]
        == objects[overlay][("Deployment", "bento")]["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bento_config_map_is_a_valid_service_configuration(objects, overlay, tmp_path):
    """The mounted service.yaml parses with service.py's own reader, with the Deployment's env."""
    from service import read_settings

    pod = _pod(objects, overlay, "bento")
    bento = _container(pod, "bento")
    env = {e["name"]: e["value"] for e in bento["env"]}
    volume = next(v for v in pod["volumes"] if v["name"] == "service-config")
    config_map = objects[overlay][("ConfigMap", volume["configMap"]["name"])]
    mount = next(m for m in bento["volumeMounts"] if m["name"] == "service-config")
    assert env["MODELPACK_SERVICE_CONFIG"] == f"{mount['mountPath']}/service.yaml"

    path = tmp_path / "service.yaml"
    path.write_text(config_map["data"]["service.yaml"], encoding="utf-8")
    settings = read_settings(path, environ=env)
    assert settings.triton.url == env["MODELPACK_TRITON_URL"]
    assert str(settings.repository) == env["MODELPACK_REPOSITORY"] == "/models"
    splits = {m.name: m.versions for m in settings.models}
    if overlay == "canary":
        assert splits["minilm"] == {1: 90.0, 2: 10.0}
    else:
        assert all(split is None for split in splits.values())


def test_canary_serves_its_own_repository(objects):
    def source(overlay):
        pod = _pod(objects, overlay, "triton")
        name = pod["initContainers"][0]["envFrom"][0]["configMapRef"]["name"]
        return objects[overlay][("ConfigMap", name)]["data"]["MODEL_REPOSITORY_S3"]

    assert len({source(o) for o in OVERLAYS}) == 3
    # Both Deployments read the same repository in every overlay.
    for overlay in OVERLAYS:
        bento_sync = _pod(objects, overlay, "bento")["initContainers"][0]
        assert "*.onnx" in bento_sync["command"]
        name = bento_sync["envFrom"][0]["configMapRef"]["name"]
        assert objects[overlay][("ConfigMap", name)]["data"]["MODEL_REPOSITORY_S3"] == source(overlay)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_and_disruption_budgets(objects, overlay):
    for name in ("triton", "bento"):
        hpa = objects[overlay][("HorizontalPodAutoscaler", name)]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        pdb = objects[overlay][("PodDisruptionBudget", name)]["spec"]
        labels = objects[overlay][("Deployment", name)]["spec"]["selector"]["matchLabels"]
        assert pdb["selector"]["matchLabels"] == labels
        # A drain can always evict one pod: the autoscaler never goes below minAvailable + 1.
        assert hpa["minReplicas"] > pdb["minAvailable"]
        assert hpa["maxReplicas"] >= hpa["minReplicas"]


def _image_cmd(dockerfile: str) -> list[str]:
    text = (checks.DEPLOY / "docker" / dockerfile).read_text(encoding="utf-8")
    cmd = re.search(r"^CMD (\[.*?\])\s*$", text.replace("\\\n", ""), re.MULTILINE | re.DOTALL)
    return json.loads(cmd.group(1))


def test_cpu_overlays_run_the_cpu_triton_image_and_gpu_nvidias(objects):
    images = {
        overlay: _container(_pod(objects, overlay, "triton"), "triton")["image"] for overlay in OVERLAYS
    }
    assert images == {
        "cpu": "modelpack-triton-cpu:0.1.0",
        "canary": "modelpack-triton-cpu:0.1.0",
        "gpu": "modelpack-triton:0.1.0",
    }
    # Both images take the same arguments: the Deployment's args work with either.
    assert _image_cmd("triton-cpu.Dockerfile") == _image_cmd("triton.Dockerfile")


def test_triton_command_is_the_same_in_the_image_kubernetes_and_ecs(objects):
    image_args = _image_cmd("triton.Dockerfile")
    task = json.loads((checks.DEPLOY / "ecs" / "task-definition.json").read_text(encoding="utf-8"))
    ecs_args = next(c for c in task["containerDefinitions"] if c["name"] == "triton")["command"]
    for overlay in OVERLAYS:
        assert _container(_pod(objects, overlay, "triton"), "triton")["args"] == image_args == ecs_args


def _config_map_settings(objects, overlay: str, tmp_path: Path, repository: Path):
    """The overlay's service.yaml read by service.py, with the repository override pointed at a real one."""
    from service import read_settings

    pod = _pod(objects, overlay, "bento")
    env = {e["name"]: e["value"] for e in _container(pod, "bento")["env"]}
    volume = next(v for v in pod["volumes"] if v["name"] == "service-config")
    path = tmp_path / f"{overlay}-service.yaml"
    path.write_text(objects[overlay][("ConfigMap", volume["configMap"]["name"])]["data"]["service.yaml"])
    return read_settings(path, environ={**env, "MODELPACK_REPOSITORY": str(repository)})


def test_bento_config_loads_the_models_of_a_real_repository(objects, model_repo, tmp_path):
    from service import load_models

    for overlay in ("cpu", "gpu"):
        models = load_models(_config_map_settings(objects, overlay, tmp_path, model_repo))
        assert {name: m.task for name, m in models.items()} == {
            "minilm": "feature-extraction",
            "image_classifier": "image-classification",
        }


def test_canary_split_loads_once_the_repository_serves_both_versions(objects, writable_model_repo, tmp_path):
    """README's canary step: a second minilm version, version_policy [1, 2]; the split then loads."""
    import shutil

    from core.errors import NotFound as RepositoryNotFound
    from core.repository import Repository
    from service import load_models

    settings = _config_map_settings(objects, "canary", tmp_path, writable_model_repo)
    with pytest.raises(RepositoryNotFound, match=r"versions \[2\] of the split are not served"):
        load_models(settings)

    entry = writable_model_repo / "minilm"
    shutil.copytree(entry / "1", entry / "2")
    manifest = json.loads((entry / "2" / "manifest.json").read_text())
    (entry / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    Repository(writable_model_repo).set_version_policy("minilm", [1, 2])
    models = load_models(settings)
    assert models["minilm"].split == {1: 90.0, 2: 10.0}


@pytest.mark.triton
@pytest.mark.bento
def test_probe_and_metrics_paths_answer_on_the_real_servers(objects, triton_server, bento_server):
    """The paths the manifests probe and scrape, asked of a real tritonserver and a real bentoml serve
    (which run with the same model-control flags as the Deployment)."""
    import httpx

    triton = _container(_pod(objects, "cpu", "triton"), "triton")
    for flag in ("--model-control-mode=explicit", "--load-model=*"):
        assert flag in triton["args"] and flag in triton_server.command()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = triton[probe]["httpGet"]["path"]
        assert httpx.get(f"http://{triton_server.http_url}{path}", timeout=10).status_code == 200, path
    annotations = objects["cpu"][("Deployment", "triton")]["spec"]["template"]["metadata"]["annotations"]
    metrics = httpx.get(f"http://{triton_server.metrics_url}{annotations['prometheus.io/path']}", timeout=10)
    assert metrics.status_code == 200 and "nv_inference_request_success" in metrics.text

    bento = _container(_pod(objects, "cpu", "bento"), "bento")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = bento[probe]["httpGet"]["path"]
        assert bento_server.client.get(path).status_code == 200, path
    assert bento_server.client.get("/metrics").status_code == 200
