"""The Kubernetes manifests: kustomize renders every overlay, each object is valid against
the Kubernetes schemas (custom resources against their vendored CRDs), and the pieces fit
together the way the detector needs them to."""

from __future__ import annotations

import copy
import re
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
    name, docs = build
    kinds = sorted(d["kind"] for d in docs)
    # The base is the detector; the overlays add the retraining component's CronJob.
    retrain = [] if name == "base" else ["CronJob"]
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
            *retrain,
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
        ("CronJob", ["spec", "concurrencyPolicyy"], "Forbid"),
        (
            "CronJob",
            ["spec", "jobTemplate", "spec", "podFailurePolicy", "rules", 0, "onExitCodes"],
            [2, 3],
        ),
    ],
    ids=[
        "typo",
        "wrong-type",
        "crd-typo",
        "crd-type",
        "crd-unknown",
        "crd-metadata",
        "cronjob-typo",
        "cronjob-wrong-type",
    ],
)
def test_validation_catches_mistakes(
    kustomize: str, kind: str, path: list[str | int], value: Any
) -> None:
    docs = [d for d in yaml.safe_load_all(_render(kustomize, BUILDS["cpu"])) if d]
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
    return mount_in(one(docs, "Deployment")["spec"]["template"]["spec"], container(docs), file)


def mount_in(pod: Doc, c: Doc, file: str) -> tuple[Doc, Doc]:
    """The volume mount of container `c` of `pod` holding `file`, and its volume."""
    mounts = [m for m in c["volumeMounts"] if PurePosixPath(file).is_relative_to(m["mountPath"])]
    assert mounts, f"{file} is on no volume of container {c['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))  # the innermost
    return mount, next(v for v in pod["volumes"] if v["name"] == mount["name"])


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
    from detector.ops.http import Health

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
    if any(d["kind"] == "CronJob" for d in docs):
        # The retraining job writes it while detectors on any node read it.
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
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


# -- retraining: the CronJob of components/retrain, in both overlays -------------------------
OVERLAYS = sorted(set(BUILDS) - {"base"})


@pytest.fixture(params=OVERLAYS, scope="module")
def overlay(request: pytest.FixtureRequest, kustomize: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(_render(kustomize, BUILDS[request.param])) if d]


def retrain_pod(docs: list[Doc]) -> Doc:
    cronjob = named(docs, "CronJob", "vigil-retrain")
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]


def retrain_steps(docs: list[Doc]) -> tuple[Doc, Doc]:
    """(collect, retrain): the init container that collects, the container that retrains."""
    spec = retrain_pod(docs)["spec"]
    (collect,) = spec["initContainers"]
    (retrain,) = spec["containers"]
    return collect, retrain


def cli_args(c: Doc) -> Any:
    """The container's `vigil-train` command line, read by vigil-train's own parser."""
    from trainer.cli import _parser

    assert c["args"][0] == "vigil-train", c["args"]
    return _parser().parse_args(c["args"][1:])


def test_retrain_runs_one_at_a_time_and_stops_on_a_verdict(overlay: list[Doc]) -> None:
    cronjob = named(overlay, "CronJob", "vigil-retrain")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid", "two runs would publish over each other"
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert retrain_pod(overlay)["spec"]["restartPolicy"] == "Never"
    # Bad configuration (2) and a refused candidate (3) fail the Job without retries.
    fail = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    codes = {
        v for r in fail if r["onExitCodes"]["operator"] == "In" for v in r["onExitCodes"]["values"]
    }
    assert {2, 3} <= codes
    # Each run collects at least the time since the previous one.
    minute, hour, dom, month, dow = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and (dom, month) == ("*", "*")
    period_d = 7 if dow.isdigit() else 1 if dow == "*" else None
    assert period_d, f"teach this test the period of {spec['schedule']!r}"
    since = cli_args(retrain_steps(overlay)[0]).since
    m = re.fullmatch(r"(\d+)([dw])", since)
    assert m, since
    assert int(m.group(1)) * (7 if m.group(2) == "w" else 1) >= period_d


def test_retrain_security_and_resources(overlay: list[Doc]) -> None:
    pod = retrain_pod(overlay)["spec"]
    detector = one(overlay, "Deployment")["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    # The detectors' own user: what the job publishes is theirs to read.
    assert sc["runAsUser"] == detector["securityContext"]["runAsUser"] > 0
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in retrain_steps(overlay):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= c["resources"][kind].keys(), (c["name"], kind)
        csc = c["securityContext"]
        assert csc["readOnlyRootFilesystem"] is True, c["name"]
        assert csc["allowPrivilegeEscalation"] is False, c["name"]
        assert csc["capabilities"]["drop"] == ["ALL"], c["name"]
    allowed = {"configMap", "secret", "emptyDir", "persistentVolumeClaim", "projected"}
    for v in pod["volumes"]:
        assert (v.keys() - {"name"}) <= allowed, v
    ns = one(overlay, "Namespace")["metadata"]["name"]
    assert named(overlay, "CronJob", "vigil-retrain")["metadata"]["namespace"] == ns


def test_retrain_uses_the_detectors_image_settings_and_secret(overlay: list[Doc]) -> None:
    pod = retrain_pod(overlay)["spec"]
    d = container(overlay)
    s = settings(overlay)
    detector_env = {e["name"]: e for e in d["env"]}
    for c in retrain_steps(overlay):
        assert c["image"] == d["image"], c["name"]
        assert c["envFrom"] == d["envFrom"], c["name"]
        env = {e["name"]: e for e in c["env"]}
        assert env["VIGIL_KAFKA__USERNAME"] == detector_env["VIGIL_KAFKA__USERNAME"]
        assert not {k for k in env if k.startswith("VIGIL_")} - {"VIGIL_KAFKA__USERNAME"}, (
            "settings come from the detector's ConfigMap, not from overrides"
        )
        for setting in ("VIGIL_KAFKA__PASSWORD_FILE", "VIGIL_KAFKA__SSL_CAFILE"):
            mount, volume = mount_in(pod, c, s[setting])
            assert (mount, volume) == mount_of(overlay, s[setting]), (c["name"], setting)


def test_retrain_writes_the_registry_the_detectors_read(overlay: list[Doc]) -> None:
    pod = retrain_pod(overlay)["spec"]
    model_path = settings(overlay)["VIGIL_MODEL__PATH"]
    detector_mount, detector_volume = mount_of(overlay, model_path)
    collect, retrain = retrain_steps(overlay)
    mount, volume = mount_in(pod, retrain, model_path)
    assert mount["mountPath"] == detector_mount["mountPath"]
    assert not mount.get("readOnly"), "retrain publishes into the registry"
    claim = volume["persistentVolumeClaim"]
    assert claim["claimName"] == detector_volume["persistentVolumeClaim"]["claimName"]
    assert not claim.get("readOnly")
    pvc = named(overlay, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # collect only reads the live model (features, payload mapping).
    assert mount_in(pod, collect, model_path)[0].get("readOnly") is True


def test_retrain_trains_on_what_collect_wrote(overlay: list[Doc]) -> None:
    """Both command lines are what vigil-train's parser accepts; the retrain step reads the
    Parquet file the collect step wrote, on a writable emptyDir they share."""
    pod = retrain_pod(overlay)["spec"]
    collect, retrain = retrain_steps(overlay)
    c, r = cli_args(collect), cli_args(retrain)
    assert (c.command, r.command) == ("collect", "retrain")
    assert str(c.out) == str(r.data)
    assert not r.dry_run, "a dry run never publishes"
    assert c.config is None and r.config is None, "settings come from the environment"
    for step, path in ((collect, c.out), (retrain, r.data), (retrain, r.report)):
        mount, volume = mount_in(pod, step, str(path))
        assert "emptyDir" in volume, (step["name"], str(path))
        assert not mount.get("readOnly"), (step["name"], str(path))
        assert volume["emptyDir"].get("medium") != "Memory", "a week of data: on disk"
    assert mount_in(pod, collect, str(c.out))[1] == mount_in(pod, retrain, str(r.data))[1]


def test_retrain_pod_is_not_taken_for_a_detector(overlay: list[Doc]) -> None:
    """The detectors' Service, PodDisruptionBudget (a Job's pod under a maxUnavailable
    budget would block every drain) and spread constraints must not select it."""
    labels = retrain_pod(overlay)["metadata"]["labels"]
    deployment = one(overlay, "Deployment")
    selectors = {
        "Service": one(overlay, "Service")["spec"]["selector"],
        "PodDisruptionBudget": one(overlay, "PodDisruptionBudget")["spec"]["selector"][
            "matchLabels"
        ],
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
    }
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        selectors["spread"] = constraint["labelSelector"]["matchLabels"]
    for what, selector in selectors.items():
        assert not selects(selector, labels), what
    assert labels["app.kubernetes.io/part-of"] == "vigil"
