"""deploy/: every Kubernetes manifest validates against the Kubernetes schemas (kubernetes-validate ships them
offline; kubeconform, a Go binary, is on neither PyPI nor Debian). KubeRay's RayService is a CRD those
schemas don't cover: it is checked against deploy/schemas/rayservice-ray-v1.json, and its pod templates
against Kubernetes' PodTemplateSpec. The manifests' wiring (probes on /health, GPU requests, the PVC, the
Service selector, the Serve app's import path and arguments) is checked too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the dev extra: pip install -e '.[dev]'"
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for path in MANIFESTS for d in _docs(path)}


def _k8s_validate(doc: dict) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


def _pod_templates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster.get("workerGroupSpecs", [])
    ]


def test_manifests_exist():
    names = {p.relative_to(DEPLOY).as_posix() for p in MANIFESTS}
    assert {"kubernetes/deployment.yaml", "kubernetes/service.yaml", "kubernetes/pvc.yaml"} <= names
    assert "kuberay/rayservice.yaml" in names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_manifest_validates(path):
    import jsonschema

    for doc in _docs(path):
        if doc["apiVersion"].startswith("ray.io/"):
            schema = json.loads((DEPLOY / "schemas" / "rayservice-ray-v1.json").read_text())
            jsonschema.validate(doc, schema)
            for i, template in enumerate(_pod_templates(doc)):
                wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}}
                _k8s_validate({**wrapper, "template": template})
        else:
            _k8s_validate(doc)


def test_a_typo_fails_validation():
    doc = _all_docs()["Deployment/ladle"]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    broken = json.loads(json.dumps(doc))
    broken["spec"]["template"]["spec"]["containers"][0] = {**container, "readinesProbe": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_wiring():
    docs = _all_docs()
    deployment, service, pvc = (
        docs["Deployment/ladle"],
        docs["Service/ladle"],
        docs["PersistentVolumeClaim/ladle-home"],
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == str(gpus)
    env = {e["name"]: e["value"] for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "ladle-home")
    assert env["LADLE_HOME"] == mount["mountPath"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 11434


def test_rayservice_points_at_the_serve_app():
    import inspect

    pytest.importorskip("ray", reason="deploy/ray_serve.py imports ray")
    import sys

    sys.path.insert(0, str(DEPLOY))
    import ray_serve

    service = _all_docs()["RayService/ladle"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = config["applications"][0]
    module, _, func = app["import_path"].partition(":")
    assert module == "ray_serve" and callable(getattr(ray_serve, func))
    accepted = set(inspect.signature(ray_serve.build).parameters) | set(ray_serve.ENGINE_FIELDS)
    assert set(app["args"]) <= accepted
    assert config["http_options"]["port"] == 11434
    application = ray_serve.app_builder(app["args"])  # builds the Serve app (no cluster needed)
    assert type(application).__name__ == "Application"


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM nvidia/cuda:" in text
    assert 'pip install "$LADLE_PACKAGE"' in text and "ARG LADLE_PACKAGE=ladle" in text
    assert 'ENTRYPOINT ["ladle"]' in text and 'CMD ["serve"]' in text
    assert "LADLE_HOME=/data/ladle" in text and 'VOLUME ["/data/ladle"]' in text
    assert "TRITON_CACHE_DIR=/data/ladle/" in text  # compiled kernels survive restarts with the models
    assert "COPY deploy/ray_serve.py /opt/ladle/ray_serve.py" in text
