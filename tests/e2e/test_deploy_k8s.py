"""Kubernetes definitions: each overlay rendered by the real `kubectl kustomize`, validated strictly
against the Kubernetes 1.32 schemas (KEDA's ScaledObjects against deploy/crds.py), and checked for what
the deployment promises: probes, ports, explicit model control, GPU product and request, rolling
updates, non-root; calls spread over every Triton pod (headless Service, round-robin client); scaling
on queue time; one content-addressed release per apply, rolling both Deployments (a split change the
Bento alone), checked by the init containers' own script; graceful drain sized on Triton's exit
timeout; disruption budgets and spread; ONNX Runtime threads from the CPU limit; the Bento's config
valid for service.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def _sync(pod: dict) -> dict:
    return next(c for c in pod["initContainers"] if c["name"] == "model-sync")


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _flag(args: list[str], name: str) -> str:
    """The value of ``--name=value`` in a command line."""
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


def _service_yaml(objects, overlay: str) -> str:
    volume = next(v for v in _pod(objects, overlay, "bento")["volumes"] if v["name"] == "service-config")
    return objects[overlay][("ConfigMap", volume["configMap"]["name"])]["data"]["service.yaml"]


def _config_map_settings(objects, overlay: str, repository: Path | None = None, text: str | None = None):
    """The overlay's service.yaml (or ``text``) through read_settings with the Deployment's env, the
    repository override pointed at ``repository`` when given."""
    from serving.settings import read_settings

    env = _env(_container(_pod(objects, overlay, "bento"), "bento"))
    if repository is not None:
        env["MODELPACK_REPOSITORY"] = str(repository)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "service.yaml"
        path.write_text(text if text is not None else _service_yaml(objects, overlay), encoding="utf-8")
        return read_settings(path, environ=env)


# ---- schema ----------------------------------------------------------------------------------------


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
        "ScaledObject",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
    } <= kinds
    # KEDA makes the HPAs from the ScaledObjects; an HPA of our own would fight it.
    assert "HorizontalPodAutoscaler" not in kinds
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


def _behavior(so: dict) -> dict:
    return so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda so: so["spec"].update(minReplicas=2), "Additional properties are not allowed ('minReplicas'"),
        (lambda so: so["spec"]["triggers"][0].update(metricType="Average"), "'Average' is not one of"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].pop("threshold"), "metadata.threshold: missing"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(threshold="20ms"), "'20ms' is not a number"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(querry="x"), "unknown keys ['querry']"),
        (lambda so: so["spec"]["scaleTargetRef"].update(name="trito"), "'trito' is not a Deployment"),
        (lambda so: so["spec"].update(minReplicaCount=7), "need 0 <= min <= max"),
        (lambda so: _behavior(so).update(stabilizationWindow=300), "stabilizationWindow"),
    ],
)
def test_scaled_objects_are_validated_strictly(rendered, tmp_path, change, says):
    docs = checks.load_documents(rendered["cpu"])
    scaled = next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "triton")
    change(scaled)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    result = checks.validate_manifests(bad)
    assert not result.passed
    assert any("ScaledObject/triton" in p and says in p for p in result.problems), result.problems


def test_unknown_overlay_is_named_with_the_known_ones():
    with pytest.raises(checks.NotFound, match=r"overlay 'staging'.*cpu.*gpu"):
        checks.render("staging")


# ---- pods ------------------------------------------------------------------------------------------


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

    # The release comes from S3 through the init container, checked, into the volume Triton reads.
    sync = _sync(pod)
    assert sync["command"] == ["sh", "-c"]
    script = sync["args"][0]
    assert (
        'aws s3 sync --no-progress --only-show-errors "$MODEL_RELEASES_S3/$MODEL_RELEASE/" /models' in script
    )
    assert 'echo "$MODEL_RELEASE  SHA256SUMS" | sha256sum -c' in script and "set -eu" in script
    release = objects[overlay][("ConfigMap", sync["envFrom"][0]["configMapRef"]["name"])]["data"]
    assert release["MODEL_RELEASES_S3"].startswith("s3://")
    assert re.fullmatch(r"[0-9a-f]{64}", release["MODEL_RELEASE"])
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
    from deploy.release import ENGINE_CACHE

    for overlay in OVERLAYS:
        pod = _pod(objects, overlay, "triton")
        triton = _container(pod, "triton")
        gpu = triton["resources"]["limits"].get("nvidia.com/gpu")
        if overlay == "gpu":
            assert gpu == 1 and triton["resources"]["requests"]["nvidia.com/gpu"] == 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
            # One GPU product: TensorRT engines run only on the architecture they were built for.
            assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "Tesla-T4"
            # The engines deploy.release's configs cache, on a volume every Triton pod shares.
            mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == ENGINE_CACHE)
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            claim = objects[overlay][("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and not mount.get("readOnly")
        else:
            assert gpu is None
            assert "nvidia.com/gpu.product" not in pod.get("nodeSelector", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_onnx_runtime_threads_follow_the_cpu_limit(objects, overlay):
    """One ONNX Runtime thread pool for all models, sized by the container's CPU limit (downward API),
    not by the node's cores."""
    triton = _container(_pod(objects, overlay, "triton"), "triton")
    source = next(e for e in triton["env"] if e["name"] == "ORT_THREADS")["valueFrom"]["resourceFieldRef"]
    assert source == {"containerName": "triton", "resource": "limits.cpu", "divisor": "1"}
    assert "--backend-config=onnxruntime,enable-global-threadpool=1" in triton["args"]
    assert "--backend-config=onnxruntime,intra_op_thread_count=$(ORT_THREADS)" in triton["args"]
    assert triton["resources"]["limits"]["cpu"]


# ---- balancing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bento_reaches_every_triton_pod(objects, overlay):
    """Every Triton pod gets calls: the Bento resolves a headless Service (every ready pod's address)
    and spreads calls round-robin, renewing its channel so pods added or removed are followed."""
    pod = _pod(objects, overlay, "bento")
    bento = _container(pod, "bento")
    url = _env(bento)["MODELPACK_TRITON_URL"]
    assert url.startswith("dns:///")
    host, port = url.removeprefix("dns:///").rsplit(":", 1)
    name = host.removesuffix(f".{NAMESPACE}.svc.cluster.local")
    headless = objects[overlay][("Service", name)]["spec"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert (
        headless["selector"] == objects[overlay][("Deployment", "triton")]["spec"]["selector"]["matchLabels"]
    )
    grpc = next(p for p in headless["ports"] if p["name"] == "grpc")
    assert int(port) == grpc["port"] and grpc["targetPort"] == "grpc"
    settings = _config_map_settings(objects, overlay)
    assert settings.triton.url == url and 0 < settings.triton.max_connection_age_s <= 60

    assert bento["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert bento["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert [p["containerPort"] for p in bento["ports"]] == [3000]
    bento_service = objects[overlay][("Service", "bento")]
    assert (
        bento_service["spec"]["selector"]
        == objects[overlay][("Deployment", "bento")]["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bento_config_map_is_a_valid_service_configuration(objects, overlay):
    """The mounted service.yaml parses with the service's own reader, with the Deployment's env."""
    pod = _pod(objects, overlay, "bento")
    bento = _container(pod, "bento")
    env = _env(bento)
    mount = next(m for m in bento["volumeMounts"] if m["name"] == "service-config")
    assert env["MODELPACK_SERVICE_CONFIG"] == f"{mount['mountPath']}/service.yaml"

    settings = _config_map_settings(objects, overlay)
    assert settings.triton.url == env["MODELPACK_TRITON_URL"]
    assert str(settings.repository) == env["MODELPACK_REPOSITORY"] == "/models"
    splits = {m.name: m.versions for m in settings.models}
    if overlay == "canary":
        assert splits["minilm"] == {1: 90.0, 2: 10.0}
    else:
        assert all(split is None for split in splits.values())


# ---- releases --------------------------------------------------------------------------------------


def _release_config_map(objects, overlay: str, deployment: str) -> str:
    return _sync(_pod(objects, overlay, deployment))["envFrom"][0]["configMapRef"]["name"]


def test_each_overlay_serves_one_content_addressed_release(objects):
    """Both Deployments name the same ConfigMap, named after its content (kustomize's hash suffix), whose
    release is a sha256 digest: a new release changes both pod templates, and `rollout undo` of either
    returns to a template naming the previous ConfigMap, so the previous models."""
    releases = {}
    for overlay in OVERLAYS:
        names = {_release_config_map(objects, overlay, d) for d in ("triton", "bento")}
        assert len(names) == 1, names
        (name,) = names
        assert re.fullmatch(r"model-release-[a-z0-9]{10}", name), name
        releases[overlay] = objects[overlay][("ConfigMap", name)]["data"]["MODEL_RELEASE"]
        bento_script = _sync(_pod(objects, overlay, "bento"))["args"][0]
        assert '--exclude "*.onnx" --exclude "*.plan"' in bento_script  # only Triton loads them
    assert len(set(releases.values())) == 3  # cpu, gpu and canary releases differ


def _render_copy(tmp_path: Path, edit) -> dict[str, dict[tuple[str, str], dict]]:
    """Render cpu and canary from a copy of deploy/k8s changed by ``edit(folder)``."""
    folder = tmp_path / "k8s"
    shutil.copytree(checks.DEPLOY / "k8s", folder)
    edit(folder)
    out = {}
    for overlay in ("cpu", "canary"):
        docs = [d for d in yaml.safe_load_all(checks.render(folder / "overlays" / overlay)) if d]
        out[overlay] = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    return out


def test_a_release_rolls_both_deployments_and_a_split_the_bento_alone(objects, tmp_path):
    def new_release(folder: Path) -> None:
        env = folder / "base" / "release.env"
        env.write_text(re.sub(r"MODEL_RELEASE=[0-9a-f]{64}", "MODEL_RELEASE=" + "a" * 64, env.read_text()))

    def new_split(folder: Path) -> None:
        path = folder / "overlays" / "canary" / "canary-service.yaml"
        path.write_text(path.read_text().replace("versions: {1: 90, 2: 10}", "versions: {1: 0, 2: 100}"))

    def template(objs, name):
        return objs[("Deployment", name)]["spec"]["template"]

    released = _render_copy(tmp_path / "release", new_release)
    for name in ("triton", "bento"):
        assert template(released["cpu"], name) != template(objects["cpu"], name), name
        assert _release_config_map(released, "cpu", name) != _release_config_map(objects, "cpu", name)

    split = _render_copy(tmp_path / "split", new_split)["canary"]
    assert template(split, "triton") == template(objects["canary"], "triton")  # Triton is not restarted
    assert template(split, "bento") != template(objects["canary"], "bento")


STAND_IN_AWS = '''#!{python}
"""`aws s3 sync [--exclude PATTERN]... s3://BUCKET/KEY/ DIR` over a local folder standing in for S3
(the real aws-cli cannot reach S3 from here)."""
import fnmatch, os, shutil, sys
args = sys.argv[1:]
assert args[:2] == ["s3", "sync"], args
excludes, rest, i = [], [], 2
while i < len(args):
    if args[i] == "--exclude":
        excludes.append(args[i + 1]); i += 2
    elif args[i].startswith("--"):
        i += 1
    else:
        rest.append(args[i]); i += 1
source, target = rest
source = os.path.join(os.environ["S3_ROOT"], source.removeprefix("s3://"))
for folder, _, files in os.walk(source):
    for name in files:
        path = os.path.join(folder, name)
        relative = os.path.relpath(path, source)
        if any(fnmatch.fnmatch(relative, p) for p in excludes):
            continue
        os.makedirs(os.path.join(target, os.path.dirname(relative)), exist_ok=True)
        shutil.copy(path, os.path.join(target, relative))
'''


@pytest.mark.parametrize("deployment", ["triton", "bento"])
def test_init_container_script_checks_the_release(objects, model_repo, tmp_path, deployment):
    """The init container's own script (run by sh with a stand-in for `aws s3 sync`, GNU coreutils'
    sha256sum as in the aws-cli image): a release downloads and passes; a release whose files changed,
    one uploaded under another digest, and a missing prefix all stop the pod with a reason."""
    from deploy.release import export

    result = export(model_repo, tmp_path / "release", "cpu")
    releases = tmp_path / "s3" / "modelpack-models" / "releases"
    shutil.copytree(result.destination, releases / result.digest)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(STAND_IN_AWS.replace("{python}", sys.executable))
    (bin_dir / "aws").chmod(0o755)
    script = _sync(_pod(objects, "cpu", deployment))["args"][0]

    def run(digest: str) -> subprocess.CompletedProcess:
        models = tmp_path / f"models-{deployment}-{digest[:8]}-{len(list(tmp_path.iterdir()))}"
        models.mkdir()
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "S3_ROOT": str(tmp_path / "s3"),
            "MODEL_RELEASES_S3": "s3://modelpack-models/releases",
            "MODEL_RELEASE": digest,
        }
        return subprocess.run(
            ["sh", "-c", script.replace("/models", str(models))], env=env, capture_output=True, text=True
        )

    done = run(result.digest)
    assert done.returncode == 0, done.stderr

    missing = run("b" * 64)
    assert (
        missing.returncode != 0 and "no such release: s3://modelpack-models/releases/bbbb" in missing.stderr
    )

    shutil.copytree(releases / result.digest, releases / ("c" * 64))  # the right files, the wrong name
    assert run("c" * 64).returncode != 0

    manifest = releases / result.digest / "minilm" / "1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"minilm"', '"changed"', 1))
    changed = run(result.digest)
    assert changed.returncode != 0 and "minilm/1/manifest.json: FAILED" in changed.stdout + changed.stderr


# ---- scaling, disruption, drain --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_on_queue_time(objects, overlay):
    """Triton scales on its queue time per request (and GPU use on GPU nodes), the Bento on CPU and on
    the time its requests wait for a Triton call slot; never below 2 replicas, and the Deployments leave
    the count to the autoscaler."""
    scaled = {name: objects[overlay][("ScaledObject", name)]["spec"] for name in ("triton", "bento")}
    for name, spec in scaled.items():
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert "replicas" not in objects[overlay][("Deployment", name)]["spec"]
    triggers = {name: {t["name"]: t for t in spec["triggers"]} for name, spec in scaled.items()}
    queue = triggers["triton"]["queue-time-ms"]
    assert queue["type"] == "prometheus" and queue["metricType"] == "Value"
    query = " ".join(queue["metadata"]["query"].split())
    assert re.search(
        r"sum\(rate\(nv_inference_queue_duration_us\{.*\}\[2m\]\)\) / clamp_min\(sum\(rate\("
        r"nv_inference_request_success\{.*\}\[2m\]\)\), 1\) / 1000",
        query,
    ), query
    assert "cpu" not in {t["type"] for t in scaled["triton"]["triggers"]}
    if overlay == "gpu":
        assert "nv_gpu_utilization" in triggers["triton"]["gpu-utilization"]["metadata"]["query"]
        assert scaled["triton"]["maxReplicaCount"] == 4
    else:
        assert set(triggers["triton"]) == {"queue-time-ms"}
    assert triggers["bento"]["cpu"]["metricType"] == "Utilization"
    wait = triggers["bento"]["triton-slot-wait-s"]["metadata"]["query"]
    assert (
        "modelpack_triton_queue_wait_seconds_sum" in wait
        and "modelpack_triton_queue_wait_seconds_count" in wait
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_spread(objects, overlay):
    for name in ("triton", "bento"):
        deployment = objects[overlay][("Deployment", name)]
        labels = deployment["spec"]["selector"]["matchLabels"]
        pdb = objects[overlay][("PodDisruptionBudget", name)]["spec"]
        assert pdb["selector"]["matchLabels"] == labels
        assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb  # a drain takes one pod at a time
        constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        spread = {c["topologyKey"]: c for c in constraints}
        assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "DoNotSchedule"
        for constraint in spread.values():
            assert constraint["maxSkew"] == 1 and constraint["labelSelector"]["matchLabels"] == labels
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_graceful_drain_is_sized_on_triton_exit_timeout(objects, overlay):
    """preStop on both containers; Triton keeps serving while the Bentos renew their channels without
    it, then has --exit-timeout-secs for the calls in flight; the Bento outlives its longest request."""
    import service

    triton_pod = _pod(objects, overlay, "triton")
    triton = _container(triton_pod, "triton")
    exit_timeout = int(_flag(triton["args"], "exit-timeout-secs"))
    triton_wait = triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert triton_pod["terminationGracePeriodSeconds"] >= triton_wait + exit_timeout + 5
    dns_ttl = 5  # CoreDNS's default TTL for cluster names
    assert triton_wait >= _config_map_settings(objects, overlay).triton.max_connection_age_s + dns_ttl

    bento_pod = _pod(objects, overlay, "bento")
    bento_wait = _container(bento_pod, "bento")["lifecycle"]["preStop"]["sleep"]["seconds"]
    longest_request = service.ModelService.config["traffic"]["timeout"]
    assert bento_wait > 0 and bento_pod["terminationGracePeriodSeconds"] >= bento_wait + longest_request


def test_the_load_balancer_waits_for_new_pods(objects):
    """The ALB's readiness gate (injected by the AWS Load Balancer Controller into the namespace's pods)
    and its health check on the Bento's own /readyz."""
    namespace = objects["cpu"][("Namespace", NAMESPACE)]
    assert namespace["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"
    ingress = objects["cpu"][("Ingress", "bento")]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"  # pods as targets: gates apply
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "bento" and backend["port"]["name"] == "http"


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
    """The image's command, then ONNX Runtime's thread flags: from the CPU limit in Kubernetes (downward
    API), the container's vCPUs in ECS (deploy/ecs/checks.py checks the count)."""
    image_args = _image_cmd("triton.Dockerfile")
    assert "--exit-timeout-secs=30" in image_args
    task = json.loads((checks.DEPLOY / "ecs" / "task-definition.json").read_text(encoding="utf-8"))
    ecs_args = next(c for c in task["containerDefinitions"] if c["name"] == "triton")["command"]
    threads = [
        "--backend-config=onnxruntime,enable-global-threadpool=1",
        "--backend-config=onnxruntime,intra_op_thread_count={}",
        "--backend-config=onnxruntime,inter_op_thread_count=1",
    ]
    assert ecs_args == image_args + [t.format(3) for t in threads]  # 2816 cpu units: 3 vCPUs
    for overlay in OVERLAYS:
        k8s_args = _container(_pod(objects, overlay, "triton"), "triton")["args"]
        assert k8s_args == image_args + [t.format("$(ORT_THREADS)") for t in threads]


# ---- with the real service and servers -------------------------------------------------------------


def test_bento_config_loads_the_models_of_a_real_repository(objects, model_repo):
    from serving.models import load_models

    for overlay in ("cpu", "gpu"):
        models = load_models(_config_map_settings(objects, overlay, model_repo))
        assert {name: m.task for name, m in models.items()} == {
            "minilm": "feature-extraction",
            "image_classifier": "image-classification",
        }


def test_canary_split_loads_once_the_repository_serves_both_versions(objects, writable_model_repo):
    """docs/deploy.md's canary step: a second minilm version, version_policy [1, 2]; the split then loads."""
    from core.errors import NotFound as RepositoryNotFound
    from core.repository import Repository
    from serving.models import load_models

    settings = _config_map_settings(objects, "canary", writable_model_repo)
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
    (which run with the same model-control flags as the Deployment), and the series the autoscalers'
    queries read, in what those servers export."""
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
    assert bento_server.client.post("/embed", json={"text": "scale me"}).status_code == 200
    bento_metrics = bento_server.client.get("/metrics")
    assert bento_metrics.status_code == 200

    exported = {
        "triton": {m.split("{")[0] for m in metrics.text.splitlines() if m and not m.startswith("#")},
        "bento": {
            m.split("{")[0].split(" ")[0] for m in bento_metrics.text.splitlines() if m and m[0] != "#"
        },
    }
    for name in ("triton", "bento"):
        for trigger in objects["cpu"][("ScaledObject", name)]["spec"]["triggers"]:
            if trigger["type"] != "prometheus":
                continue
            series = set(re.findall(r"\b((?:nv|modelpack)_[a-z_]+)\{", trigger["metadata"]["query"]))
            assert series and series <= exported[name], (name, series - exported[name])
