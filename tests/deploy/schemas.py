"""Validating Kubernetes objects offline: built-in kinds against the Kubernetes OpenAPI
schemas that kubernetes-validate bundles, custom resources against the CRDs vendored in
tests/deploy/crds/ (their README says where each comes from)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import HERE

__all__ = ["K8S_VERSIONS", "crd_validators", "validate"]

CRDS = HERE / "crds"
# The oldest Kubernetes the manifests promise to work on, and the newest schemas bundled.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as JSON Schema that, like kubectl --validate=strict,
    rejects unknown fields (the API server would silently prune them) and knows
    `nullable`."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: _strict(v) for k, v in schema.items()}
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if (
        "properties" in s
        and "additionalProperties" not in s
        and not s.get("x-kubernetes-preserve-unknown-fields")
    ):
        s["additionalProperties"] = False
    return s


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> a validator for each version of each vendored CRD."""
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = _strict(v["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{v['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def _kubernetes_validate() -> Callable[..., str]:
    try:
        from kubernetes_validate import validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is missing from the virtualenv: run scripts/install-deploy-tools"
        )
    return validate


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise jsonschema.ValidationError unless `doc` is a valid object for `version`."""
    k8s_validate = _kubernetes_validate()
    crd = crd_validators().get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        k8s_validate(doc, version, strict=True)
        return
    crd.validate(doc)
    # A CRD schema says only `metadata: object`; the API server checks it as ObjectMeta.
    # A ConfigMap is the simplest object to carry the same metadata through that schema.
    k8s_validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, version, strict=True
    )
