"""The Kubernetes manifests: kustomize renders every overlay, each object is valid against
the Kubernetes schemas (custom resources against their vendored CRDs), and the pieces fit
together the way the detector needs them to."""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, detector_config
from tests.deploy.schemas import K8S_VERSIONS, crd_validators, validate

K8S = DEPLOY / "kubernetes"
BUILDS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
Doc = dict[str, Any]


@cache
def _render(kustomize: str, path: Path) -> str:
    out = subprocess.run(
        [kustomize, "build", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kustomize build {path} failed:\n{out.stderr}"
    return out.stdout


@pytest.fixture(params=sorted(BUILDS), scope="module")
def build(request: pytest.FixtureRequest, kustomize: str) -> tuple[str, list[Doc]]:
    name = request.param
    return name, [d for d in yaml.safe_load_all(_render(kustomize, BUILDS[name])) if d]


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"no {kind} named {name} in the build"
    return found[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid(build: tuple[str, list[Doc]], version: str) -> None:
    name, docs = build
    errors = []
    for doc in docs:
        try:
            validate(doc, version)
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {e.message}")
    assert errors == [], f"{name} for Kubernetes {version}"


def test_build_has_every_piece_the_issue_asks_for(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "ServiceMonitor",
            "PodDisruptionBudget",
            "ScaledObject",
            "TriggerAuthentication",
        ]
    )
    custom = {k for (_, k) in crd_validators()}
    assert {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"} <= custom


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        (
            "Deployment",
            ["spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet", "pth"],
            "/",
        ),
        ("Deployment", ["spec", "template", "spec", "containers", 0, "resources", "limits"], "2"),
        ("ServiceMonitor", ["spec", "endpoints", 0, "intervl"], "15s"),
        ("ScaledObject", ["spec", "maxReplicaCount"], "twelve"),
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0, "secret"], "x"),
        ("ServiceMonitor", ["metadata", "lables"], {"a": "b"}),
    ],
    ids=["typo", "wrong-type", "crd-typo", "crd-type", "crd-unknown", "crd-metadata"],
)
def test_validation_catches_mistakes(
    kustomize: str, kind: str, path: list[str | int], value: Any
) -> None:
    docs = [d for d in yaml.safe_load_all(_render(kustomize, BUILDS["base"])) if d]
    doc = copy.deepcopy(one(docs, kind))
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(doc, K8S_VERSIONS[-1])


# -- how the pieces fit ------------------------------------------------------------------------
def container(docs: list[Doc]) -> Doc:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def settings(docs: list[Doc]) -> dict[str, str]:
    """The detector's environment: the ConfigMap it loads (by its generated name)."""
    refs = [e["configMapRef"]["name"] for e in container(docs)["envFrom"]]
    assert len(refs) == 1
    return named(docs, "ConfigMap", refs[0])["data"]


def mount_of(docs: list[Doc], file: str) -> tuple[Doc, Doc]:
    """The volume mount holding `file`, and its volume."""
    mounts = [
        m
        for m in container(docs)["volumeMounts"]
        if PurePosixPath(file).is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{file} is on no volume"
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    return mounts[0], next(v for v in volumes if v["name"] == mounts[0]["name"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_probes_hit_the_detectors_port(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    c = container(docs)
    (port,) = c["ports"]
    assert str(port["containerPort"]) == settings(docs)["VIGIL_HTTP__PORT"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    # /healthz fails after `liveness_timeout_s` without a loop turn; a producer flush can
    # hold the loop for the delivery timeout: the probe must not restart a pod for that.
    from detector.http import Health

    live = c["livenessProbe"]
    tolerated = Health().liveness_timeout_s + live["periodSeconds"] * live["failureThreshold"]
    delivery_s = int(settings(docs).get("VIGIL_KAFKA__DELIVERY_TIMEOUT_MS", 60_000)) / 1000
    assert tolerated > delivery_s


def test_resources_and_security(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys(), kind
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # Pod Security "restricted" allows only these volume types.
    allowed = {"configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected"}
    for v in pod["volumes"]:
        assert (v.keys() - {"name"}) <= allowed, v
    ns = one(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        ns["metadata"]["name"]
    }


def test_model_registry_is_a_read_only_claim(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    mount, volume = mount_of(docs, settings(docs)["VIGIL_MODEL__PATH"])
    assert mount["readOnly"] is True
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = named(docs, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] in (["ReadOnlyMany"], ["ReadWriteMany"])


def test_kafka_credentials_come_from_the_secret(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    s = settings(docs)
    assert not {"VIGIL_KAFKA__PASSWORD", "VIGIL_KAFKA__USERNAME"} & s.keys(), "no secrets here"
    env = {e["name"]: e for e in container(docs)["env"]}
    secret = env["VIGIL_KAFKA__USERNAME"]["valueFrom"]["secretKeyRef"]["name"]
    for setting, key in (
        ("VIGIL_KAFKA__PASSWORD_FILE", "password"),
        ("VIGIL_KAFKA__SSL_CAFILE", "ca.crt"),
    ):
        mount, volume = mount_of(docs, s[setting])
        assert mount["readOnly"] is True
        assert volume["secret"]["secretName"] == secret
        relative = str(PurePosixPath(s[setting]).relative_to(mount["mountPath"]))
        assert {"key": key, "path": relative} in volume["secret"]["items"]


def test_metrics_service_and_servicemonitor_find_the_pods(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    svc = one(docs, "Service")
    assert selects(svc["spec"]["selector"], pod_labels)
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == container(docs)["ports"][0]["name"]
    sm = one(docs, "ServiceMonitor")
    assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [port["name"]]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # The alert rules select job="vigil-detector": the job label comes from jobLabel.
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "vigil-detector"


def test_disruption_budget_covers_only_the_detector(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_scales_the_deployment_on_the_detectors_own_settings(
    build: tuple[str, list[Doc]],
) -> None:
    _, docs = build
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    so = one(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta, s = trigger["metadata"], settings(docs)
    assert s[meta["bootstrapServersFromEnv"]] and s[meta["consumerGroupFromEnv"]]
    assert "topic" not in meta, "no topic: KEDA sums the lag over all the group's topics"
    sasl = s["VIGIL_KAFKA__SASL_MECHANISM"].lower().replace("-", "_")
    assert meta["sasl"] == sasl.replace("scram_sha_", "scram_sha")
    assert meta["tls"] == (
        "enable" if s["VIGIL_KAFKA__SECURITY_PROTOCOL"].endswith("SSL") else "disable"
    )
    auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    env = {e["name"]: e for e in container(docs)["env"]}
    secret = env["VIGIL_KAFKA__USERNAME"]["valueFrom"]["secretKeyRef"]["name"]
    assert {r["name"] for r in refs.values()} == {secret}
    assert refs["username"]["key"] == "username" and refs["password"]["key"] == "password"


def test_shutdown_grace_covers_a_producer_flush(build: tuple[str, list[Doc]]) -> None:
    _, docs = build
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    delivery_s = int(settings(docs).get("VIGIL_KAFKA__DELIVERY_TIMEOUT_MS", 60_000)) / 1000
    assert pod["terminationGracePeriodSeconds"] > delivery_s


def test_gpu_overlay_asks_for_a_gpu_and_cuda(kustomize: str) -> None:
    docs = [d for d in yaml.safe_load_all(_render(kustomize, BUILDS["gpu"])) if d]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert int(container(docs)["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert settings(docs)["VIGIL_MODEL__PROVIDER"] == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]
    assert container(docs)["image"].endswith("-gpu")


def test_cpu_overlay_stays_off_gpus(kustomize: str) -> None:
    docs = [d for d in yaml.safe_load_all(_render(kustomize, BUILDS["cpu"])) if d]
    assert "nvidia.com/gpu" not in container(docs)["resources"]["limits"]
    assert settings(docs)["VIGIL_MODEL__PROVIDER"] == "cpu"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_configmap_is_a_valid_detector_configuration(
    name: str, kustomize: str, bundle_dir: Path, tmp_path: Path
) -> None:
    """`vigil-detect config` accepts the pod's environment, files put where they would be."""
    docs = [d for d in yaml.safe_load_all(_render(kustomize, BUILDS[name])) if d]
    env = dict(settings(docs))
    env["VIGIL_KAFKA__USERNAME"] = "vigil-detector"  # from the Secret
    for setting in ("VIGIL_KAFKA__PASSWORD_FILE", "VIGIL_KAFKA__SSL_CAFILE"):
        local = tmp_path / PurePosixPath(env[setting]).name
        local.write_text("x")
        env[setting] = str(local)
    env["VIGIL_MODEL__PATH"] = str(bundle_dir)
    config = detector_config(env)
    assert config["kafka"]["bootstrap_servers"] == env["VIGIL_KAFKA__BOOTSTRAP_SERVERS"]
    assert config["model"]["provider"] == env["VIGIL_MODEL__PROVIDER"]
    assert config["http"]["port"] == int(env["VIGIL_HTTP__PORT"])
