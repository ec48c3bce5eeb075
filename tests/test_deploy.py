"""Kubernetes and KServe manifests (deploy/): every object validates offline against the Kubernetes API schemas
(the copies kubernetes-validate ships), the kustomizations render, and the ports, probe paths, LGM_* variables
and model path agree with the service itself (service/settings.py, the app's routes, docker/bootstrap.sh,
docker/Dockerfile).

No cluster and no kustomize needed: a small renderer below does what deploy/'s kustomizations use (resources,
images, JSON 6902 patches); where kubectl is installed, `kubectl kustomize` must render the same objects.

The InferenceService is KServe's custom resource, outside the core schemas. Its predictor is a Kubernetes PodSpec
with KServe's fields beside it (the InferenceService CRD, serving.kserve.io/v1beta1), so: the PodSpec part
validates against the core PodSpec schema, KServe's own fields against their types in that CRD, and KServe's
rules for a custom predictor (predictor_custom.go) are checked one by one. With KSERVE_CRD=path/to/
serving.kserve.io_inferenceservices.yaml (from KServe's config/crd/full/) it is also validated against the
CRD's whole openAPIV3Schema, as is deploy/kserve-triton's (the exported graph on KServe's Triton runtime, whose
own checks are in tests/test_deploy_triton.py).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path, PurePosixPath

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[dev]' (jsonschema)")
jsonpatch = pytest.importorskip("jsonpatch", reason="pip install -e '.[dev]' (jsonpatch)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install -e '.[dev]' (kubernetes-validate)"
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl")
# The apply targets the deployment page names, and the two folders they are built from.
TARGETS = ("overlays/cpu", "overlays/gpu", "kserve", "kserve-triton")
KUSTOMIZATIONS = ("model", "redis", "base", *TARGETS)
# The oldest Kubernetes these manifests claim (autoscaling/v2, policy/v1 and every field used exist there), or
# the oldest whose schemas kubernetes-validate still ships, and the newest it ships.
_SHIPPED = [".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()]
K8S_VERSIONS = ("1.29" if "1.29" in _SHIPPED else _SHIPPED[0], _SHIPPED[-1])
POD_KINDS = {"Deployment": ("spec", "template", "spec"), "Job": ("spec", "template", "spec")}
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")


# ---- a kustomize renderer for what deploy/ uses --------------------------------------------------------------


def _containers(node):
    """Every container anywhere in an object (lists named containers or initContainers)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def render(folder: Path) -> list[dict]:
    """`kustomize build folder` for resources (files, folders), JSON 6902 patches with a kind/name target and
    images; any other kustomization field fails here rather than being ignored."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "resources", "images", "patches"}
    assert not unknown, f"{folder}: the test's renderer does not handle {sorted(unknown)}"
    assert k["kind"] == "Kustomization"
    objects: list[dict] = []
    for res in k.get("resources", []):
        path = (folder / res).resolve()
        objects += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for p in k.get("patches", []):
        target = p["target"]
        assert set(target) <= {"kind", "name"}, target
        hits = [
            o
            for o in objects
            if o["kind"] == target.get("kind", o["kind"])
            and o["metadata"]["name"] == target.get("name", o["metadata"]["name"])
        ]
        assert hits, f"{folder}: patch target {target} matches nothing"
        for o in hits:
            jsonpatch.apply_patch(o, yaml.safe_load(p["patch"]), in_place=True)
    for image in k.get("images", []):
        for c in _containers(objects):
            if c["image"].split(":")[0] == image["name"]:
                c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


RENDERED = {name: render(DEPLOY / name) for name in KUSTOMIZATIONS}


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{len(hits)} {kind} {name or ''}"
    return hits[0]


def container(pod: dict, name: str) -> dict:
    return next(c for c in pod["containers"] if c["name"] == name)


def pod_spec(obj: dict) -> dict:
    node = obj
    for key in POD_KINDS[obj["kind"]]:
        node = node[key]
    return node


def env(c: dict) -> dict[str, str]:
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"{c['name']}: a variable set twice: {names}"
    return {e["name"]: e["value"] for e in c.get("env", [])}


def test_every_manifest_is_in_a_kustomization():
    files_in = {p.relative_to(DEPLOY) for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    named = set()
    for name in KUSTOMIZATIONS:
        k = yaml.safe_load((DEPLOY / name / "kustomization.yaml").read_text())
        named |= {(Path(name) / r) for r in k.get("resources", []) if (DEPLOY / name / r).is_file()}
    assert files_in == named, f"not in any kustomization: {sorted(map(str, files_in - named))}"


@pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed: its `kubectl kustomize` cross-checks the renderer"
)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(name):
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr

    def key(o: dict) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(proc.stdout) if d), key=key)
    assert sorted(RENDERED[name], key=key) == theirs


# ---- schemas ---------------------------------------------------------------------------------------------------


def _schema_validator(name: str, version: str) -> jsonschema.protocols.Validator:
    """A validator for one of kubernetes-validate's strict schema files (unknown fields are errors), wired to
    its shared definitions the way kubernetes_validate.validate wires them."""
    from referencing import Registry, Resource

    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    schema = json.loads((folder / f"{name}.json").read_text())
    defs = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def core_objects() -> list[tuple[str, dict]]:
    return [
        (f"{name}: {o['kind']}/{o['metadata']['name']}", o)
        for name in KUSTOMIZATIONS
        for o in RENDERED[name]
        if (o["apiVersion"], o["kind"]) != ISVC
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_core_object_validates_against_the_kubernetes_schema(version):
    objects = core_objects()
    kinds = {o["kind"] for _, o in objects}
    assert {
        "PersistentVolumeClaim",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds
    for where, o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")


def test_the_schema_check_catches_mistakes():
    """The same validation rejects an unknown field, a wrong type and a missing required field."""
    dep = find(RENDERED["overlays/cpu"], "Deployment", "lgm-api")
    for mutate in (
        lambda d: pod_spec(d)["containers"][0].update(readinessprobe={}),  # misspelt field
        lambda d: pod_spec(d)["containers"][0]["ports"][0].update(containerPort="8000"),  # a string
        lambda d: pod_spec(d)["containers"][0].pop("name"),  # required
    ):
        bad = copy.deepcopy(dep)
        mutate(bad)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


# KServe's own predictor fields (ComponentExtensionSpec and the predictor's, beside the inlined PodSpec) that
# deploy/ may use, with their types in the InferenceService CRD (serving.kserve.io/v1beta1).
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 0},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}
# KServe's names for the predictor container, its protocol and model variables (pkg/constants/constants.go)
KSERVE_CONTAINER = "kserve-container"
KSERVE_MOUNT = "/mnt/models"  # where STORAGE_URI is mounted (DefaultModelLocalMountPath)


def isvc() -> dict:
    return find(RENDERED["kserve"], "InferenceService")


def check_isvc_envelope(obj: dict, version: str) -> tuple[dict, dict, bool]:
    """What every InferenceService must pass, whatever serves it: its kind, top-level fields, metadata, a
    predictor whose KServe fields validate and whose replica bounds are ordered. Returns (predictor, its KServe
    fields, whether it runs as a RawDeployment, which may declare more than one port)."""
    assert (obj["apiVersion"], obj["kind"]) == ISVC
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}, sorted(obj)
    _schema_validator("objectmeta-meta-v1", version).validate(obj["metadata"])
    spec = obj["spec"]
    assert set(spec) <= {"predictor", "transformer", "explainer"} and "predictor" in spec, sorted(spec)
    predictor = spec["predictor"]
    ours = {k: v for k, v in predictor.items() if k in KSERVE_PREDICTOR_FIELDS}
    jsonschema.validate(ours, {"type": "object", "properties": KSERVE_PREDICTOR_FIELDS})
    if "minReplicas" in ours and "maxReplicas" in ours:
        assert ours["minReplicas"] <= ours["maxReplicas"]
    raw = obj["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode") == "RawDeployment"
    return predictor, ours, raw


def check_inference_service(obj: dict, version: str) -> None:
    """Raise AssertionError or jsonschema.ValidationError for an InferenceService that KServe would reject."""
    predictor, ours, raw = check_isvc_envelope(obj, version)
    # The rest is a core PodSpec: unknown fields, wrong types and missing required ones fail here.
    _schema_validator("podspec-v1", version).validate({k: v for k, v in predictor.items() if k not in ours})
    # A custom predictor (predictor_custom.go): the serving container is `kserve-container` (the only one, or
    # named so), PROTOCOL is v1 or v2, KServe routes to a single declared port.
    first = predictor["containers"][0]
    assert first["name"] == KSERVE_CONTAINER
    protocol = env(first).get("PROTOCOL")
    assert protocol in (None, "v1", "v2"), protocol
    # Knative's serverless mode routes one port (http1 or h2c); a RawDeployment may declare both.
    names = [p.get("name") for p in first.get("ports", [])]
    assert (
        len(names) <= (2 if raw else 1) and set(names) <= {"http1", "h2c"} and len(set(names)) == len(names)
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_inference_service_validates_as_a_kserve_custom_predictor(version):
    check_inference_service(isvc(), version)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(minReplica=1),  # misspelt KServe field
        lambda p: p.update(scaleMetric="gpu"),  # not one of KServe's metrics
        lambda p: p["containers"][0].update(name="predictor"),  # KServe looks for kserve-container
        lambda p: next(e for e in p["containers"][0]["env"] if e["name"] == "PROTOCOL").update(value="v3"),
        lambda p: p["containers"][0].update(imagePullPolicy=3),  # PodSpec type
        lambda p: p.pop("containers"),  # PodSpec requires containers
    ],
)
def test_inference_service_check_catches_mistakes(mutate):
    bad = copy.deepcopy(isvc())
    mutate(bad["spec"]["predictor"])
    with pytest.raises((AssertionError, jsonschema.ValidationError)):
        check_inference_service(bad, K8S_VERSIONS[-1])


@pytest.mark.skipif(
    not os.environ.get("KSERVE_CRD"),
    reason="set KSERVE_CRD to KServe's config/crd/full/serving.kserve.io_inferenceservices.yaml to validate "
    "against the whole CRD",
)
@pytest.mark.parametrize("target", ["kserve", "kserve-triton"])
def test_inference_service_validates_against_the_kserve_crd(target):
    obj = find(RENDERED[target], "InferenceService")
    crd = yaml.safe_load(Path(os.environ["KSERVE_CRD"]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1])
    schema = version["schema"]["openAPIV3Schema"]
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(obj))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


# ---- agreement with the service --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routes(tiny_artifact):
    """(path, method) of every route of the real app (its lifespan, which loads the model, does not run)."""
    from service.app import create_app
    from service.settings import ServeSettings

    app = create_app(ServeSettings(artifact=tiny_artifact))
    return {(r.path, m) for r in app.routes for m in getattr(r, "methods", ())}


def settings_of(c: dict, monkeypatch: pytest.MonkeyPatch):
    """ServeSettings as the container's environment makes them (raises on a bad value)."""
    from service.settings import ServeSettings

    for key in list(os.environ):
        if key.startswith("LGM_"):
            monkeypatch.delenv(key)
    for key, value in env(c).items():
        if key.startswith("LGM_"):
            monkeypatch.setenv(key, value)
    return ServeSettings()


def serve_env_names() -> set[str]:
    from service.settings import ServeSettings

    return {f"LGM_{name.upper()}" for name in ServeSettings.model_fields}


def port_number(c: dict, port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def image_user() -> tuple[int, int]:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    uid, gid = re.findall(r"^USER (\d+):(\d+)", text, re.M)[-1]
    return int(uid), int(gid)


def served_containers():
    """(where, pod spec, serving container, probe paths wanted) for the Deployment of each overlay and the
    KServe predictor."""
    for name in ("overlays/cpu", "overlays/gpu"):
        pod = pod_spec(find(RENDERED[name], "Deployment", "lgm-api"))
        yield name, pod, container(pod, "api"), {"readiness": "/readyz", "liveness": "/healthz"}
    predictor = isvc()["spec"]["predictor"]
    paths = {"readiness": "/v2/health/ready", "liveness": "/v2/health/live"}
    yield "kserve", predictor, container(predictor, KSERVE_CONTAINER), paths


@pytest.mark.parametrize("where", ["overlays/cpu", "overlays/gpu", "kserve"])
def test_server_settings_ports_and_probes_match_the_service(where, routes, monkeypatch):
    from service.cli import build_parser

    _, pod, c, paths = next(s for s in served_containers() if s[0] == where)
    names = {k for k in env(c) if k.startswith("LGM_")}
    assert names <= serve_env_names(), (
        f"not settings of service/settings.py: {sorted(names - serve_env_names())}"
    )
    settings = settings_of(c, monkeypatch)
    # The image's entry point is `lgm`: the arguments are a real `lgm serve` command line.
    assert build_parser().parse_args(c["args"]).command == "serve"
    assert settings.host == "0.0.0.0"
    assert [p["containerPort"] for p in c["ports"]] == [settings.port, settings.grpc_port]
    assert settings.grpc_port not in (0, settings.port)
    for kind, path in paths.items():
        probe = c[f"{kind}Probe"]["httpGet"]
        assert probe["path"] == path and (path, "GET") in routes
        assert port_number(c, probe["port"]) == settings.port
    if "startupProbe" in c:
        probe = c["startupProbe"]["httpGet"]
        assert (probe["path"], "GET") in routes and port_number(c, probe["port"]) == settings.port
    # Graceful termination outlasts the pause before SIGTERM plus the server's drain.
    pause = 0
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if pre_stop[:1] == ["sleep"]:
        pause = float(pre_stop[1])
    assert pod["terminationGracePeriodSeconds"] > pause + settings.graceful_timeout
    # Non-root, as the image's user; read-only root filesystem; requests and limits.
    uid, gid = image_user()
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] and (ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (uid, gid, gid)
    for each in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = each["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(each["resources"][part]), f"{each['name']} {part}"
    # Worker processes times torch threads fit the CPU limit, whatever the node's cores (set, not automatic).
    assert "LGM_WORKERS" in env(c) and "LGM_THREADS" in env(c)
    assert settings.server_workers() * settings.torch_threads() <= float(c["resources"]["limits"]["cpu"])


def mount_of(c: dict, path: str) -> tuple[dict, PurePosixPath]:
    """The volume mount holding ``path`` and the path inside it."""
    for m in c["volumeMounts"]:
        inside = PurePosixPath(path)
        if inside.is_relative_to(m["mountPath"]):
            return m, inside.relative_to(m["mountPath"])
    raise AssertionError(f"{path} is on no volume of {c['name']}")


def claim_of(pod: dict, mount: dict) -> dict:
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume["persistentVolumeClaim"]


def test_the_model_path_is_the_claim_the_job_writes(monkeypatch):
    objects = RENDERED["overlays/cpu"]
    claim = find(objects, "PersistentVolumeClaim", "lgm-models")["metadata"]["name"]
    job_pod = pod_spec(find(objects, "Job", "lgm-train"))
    train = job_pod["containers"][0]
    job_mount, job_sub = mount_of(train, env(train)["LGM_ARTIFACT"])
    assert claim_of(job_pod, job_mount)["claimName"] == claim and not job_mount.get("readOnly")

    pod = pod_spec(find(objects, "Deployment", "lgm-api"))
    api = container(pod, "api")
    settings = settings_of(api, monkeypatch)
    mount, sub = mount_of(api, str(settings.artifact))
    assert (
        claim_of(pod, mount)["claimName"] == claim and mount["readOnly"] and claim_of(pod, mount)["readOnly"]
    )
    assert sub == job_sub  # the same folder of the same claim
    # The init container waits for the file calibration writes last, in that folder.
    wait = container({"containers": pod["initContainers"]}, "wait-for-model")
    assert f"{PurePosixPath(mount['mountPath']) / sub}/detector.json" in " ".join(wait["command"])

    # KServe: STORAGE_URI=pvc://CLAIM/FOLDER is mounted at /mnt/models, where LGM_ARTIFACT points.
    predictor = container(isvc()["spec"]["predictor"], KSERVE_CONTAINER)
    uri = env(predictor)["STORAGE_URI"]
    assert uri == f"pvc://{claim}/{job_sub}"
    assert settings_of(predictor, monkeypatch).artifact == Path(KSERVE_MOUNT)
    assert env(predictor)["PROTOCOL"] == "v2"


def test_training_job_runs_the_bootstrap_with_its_variables():
    job = find(RENDERED["model"], "Job", "lgm-train")
    train = pod_spec(job)["containers"][0]
    assert train["command"] == ["lgm-bootstrap"]
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY docker/bootstrap.sh /usr/local/bin/lgm-bootstrap" in dockerfile
    bootstrap = (ROOT / "docker" / "bootstrap.sh").read_text()
    for name in env(train):
        assert re.search(rf"\${{{name}\b", bootstrap), f"docker/bootstrap.sh does not read {name}"
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


def test_service_hpa_and_pdb_select_the_api_pods():
    objects = RENDERED["overlays/cpu"]
    dep = find(objects, "Deployment", "lgm-api")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    svc = find(objects, "Service", "lgm-api")
    assert svc["spec"]["selector"] == selector
    api = container(pod_spec(dep), "api")
    # The Service carries both of the container's ports, HTTP and gRPC (marked cleartext HTTP/2).
    assert sorted(port_number(api, p["targetPort"]) for p in svc["spec"]["ports"]) == sorted(
        p["containerPort"] for p in api["ports"]
    )
    grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert port_number(api, grpc_port["targetPort"]) == int(env(api)["LGM_GRPC_PORT"])
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    pdb = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    hpa = find(objects, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "lgm-api")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in dep["spec"]  # the HPA owns the count
    # The PDB never blocks every eviction: it leaves room above the HPA's floor.
    assert (
        pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    )


@pytest.mark.parametrize("overlay, tag, gpus", [("overlays/cpu", "cpu", None), ("overlays/gpu", "cuda", "1")])
def test_overlays_pick_the_image_and_the_gpu(overlay, tag, gpus):
    objects = RENDERED[overlay]
    for c in _containers(objects):
        assert c["image"] == (f"lgm-detect:{tag}" if c["name"] != "redis" else "lgm-detect-redis:7")
    for kind, name in (("Deployment", "lgm-api"), ("Job", "lgm-train")):
        pod = pod_spec(find(objects, kind, name))
        main = pod["containers"][0]
        assert main["resources"]["limits"].get("nvidia.com/gpu") == gpus
        tolerated = [t.get("key") for t in pod.get("tolerations", [])]
        assert ("nvidia.com/gpu" in tolerated) == (gpus is not None)
    api = container(pod_spec(find(objects, "Deployment", "lgm-api")), "api")
    assert env(api).get("LGM_DEVICE") == ("cuda" if gpus else None)


def test_docs_apply_the_kustomizations_that_exist():
    page = (ROOT / "docs" / "deployment.md").read_text()
    applied = set(re.findall(r"kubectl apply -k deploy/([\w/-]+)", page))
    assert applied == set(TARGETS)
    for target in TARGETS:
        assert (DEPLOY / target / "kustomization.yaml").is_file()
