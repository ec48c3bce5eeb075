"""deploy/kserve-triton: the exported ONNX graph on KServe's Triton runtime. The export Job runs a real
``lgm export`` command line into the claim the training Job fills, the InferenceService validates as a KServe
predictor on the ``kserve-tritonserver`` runtime, and it loads, probes and mounts exactly what that command writes
(the command is run here on a tiny calibrated model, paths moved under a temporary folder).

The schema checks shared with the other folders (every core object against the Kubernetes schemas, every file in a
kustomization, the docs' apply commands, KServe's whole CRD with KSERVE_CRD=) are in tests/test_deploy.py.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import PurePosixPath

import jsonschema
import pytest
from test_deploy import (
    K8S_VERSIONS,
    KSERVE_CONTAINER,
    KSERVE_MOUNT,
    RENDERED,
    ROOT,
    _schema_validator,
    check_isvc_envelope,
    claim_of,
    find,
    image_user,
    mount_of,
    pod_spec,
)
from test_service_common import served_artifact_fixture  # noqa: F401

TARGET = "kserve-triton"
# KServe's ClusterServingRuntime `kserve-tritonserver` (config/runtimes/kserve-tritonserver.yaml): the model
# formats and protocols it declares, and its container's arguments, to which a predictor's args are appended.
TRITON_RUNTIME = "kserve-tritonserver"
TRITON_FORMATS = {"tensorrt", "tensorflow", "onnx", "pytorch", "triton"}
TRITON_PROTOCOLS = {"v2", "grpc-v2"}
TRITON_ARGS = ["tritonserver", f"--model-store={KSERVE_MOUNT}", "--grpc-port=9000", "--http-port=8080"]
# The fields a predictor's `model` (ModelSpec) adds to a core Container, with their types in the
# InferenceService CRD; protocolVersion's values are KServe's InferenceServiceProtocol constants.
MODEL_SPEC_FIELDS = {
    "modelFormat": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    },
    "runtime": {"type": "string"},
    "runtimeVersion": {"type": "string"},
    "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
    "storageUri": {"type": "string", "pattern": "^[a-z0-9]+://"},
}


def triton_isvc() -> dict:
    return find(RENDERED[TARGET], "InferenceService")


def export_job() -> dict:
    return find(RENDERED[TARGET], "Job", "lgm-export-triton")


def runtime_flag(args: list[str], flag: str) -> str:
    """The value of ``--flag=value`` in Triton's arguments (the runtime's, then the predictor's)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
    assert len(values) == 1, f"{flag} given {len(values)} times"
    return values[0]


def check_triton_inference_service(obj: dict, version: str) -> None:
    """Raise AssertionError or jsonschema.ValidationError for an InferenceService that KServe would reject, or
    that the Triton runtime could not serve."""
    predictor, ours, raw = check_isvc_envelope(obj, version)
    # One implementation: a model on a runtime, not also a custom container.
    assert "model" in predictor and "containers" not in predictor, sorted(predictor)
    model = predictor["model"]
    model_fields = {k: v for k, v in model.items() if k in MODEL_SPEC_FIELDS}
    schema = {"type": "object", "properties": MODEL_SPEC_FIELDS, "required": ["modelFormat", "storageUri"]}
    jsonschema.validate(model_fields, schema)
    # The rest of `model` is a core Container (KServe names it kserve-container), the rest of the predictor a
    # core PodSpec: unknown fields, wrong types and missing required ones fail here.
    c = {"name": KSERVE_CONTAINER, **{k: v for k, v in model.items() if k not in MODEL_SPEC_FIELDS}}
    pod = {k: v for k, v in predictor.items() if k not in ours and k != "model"}
    _schema_validator("podspec-v1", version).validate({**pod, "containers": [c]})
    # The runtime takes this format and protocol.
    assert model_fields["runtime"] == TRITON_RUNTIME, model_fields.get("runtime")
    assert model_fields["modelFormat"]["name"] in TRITON_FORMATS, model_fields["modelFormat"]
    assert model_fields["protocolVersion"] in TRITON_PROTOCOLS, model_fields["protocolVersion"]
    # Declared ports are Triton's (the runtime's flags): REST as http1, gRPC as h2c; Knative's serverless mode
    # routes one port, a RawDeployment every declared one.
    args = TRITON_ARGS + model.get("args", [])
    wanted = {"http1": int(runtime_flag(args, "--http-port")), "h2c": int(runtime_flag(args, "--grpc-port"))}
    ports = {p["name"]: p["containerPort"] for p in model.get("ports", [])}
    assert len(ports) == len(model.get("ports", [])) <= (2 if raw else 1), model.get("ports")
    assert ports.items() <= wanted.items(), ports
    for kind in ("readiness", "liveness"):
        assert c[f"{kind}Probe"]["httpGet"]["port"] in (wanted["http1"], "http1")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_inference_service_validates_as_a_kserve_triton_predictor(version):
    check_triton_inference_service(triton_isvc(), version)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["model"].update(modelformat={"name": "triton"}),  # misspelt ModelSpec field
        lambda p: p["model"].update(modelFormat={"name": "sklearn"}),  # not a format the runtime serves
        lambda p: p["model"].update(protocolVersion="v1"),  # Triton speaks v2 only
        lambda p: p["model"].update(runtime="kserve-mlserver"),
        lambda p: p["model"].pop("storageUri"),
        lambda p: p["model"].update(imagePullPolicy=3),  # Container type
        lambda p: p["model"]["ports"][1].update(containerPort=8081),  # not Triton's --grpc-port
        lambda p: p["model"]["ports"][0].update(name="http"),  # KServe routes http1 / h2c
        lambda p: p.update(containers=[{"name": KSERVE_CONTAINER, "image": "x"}]),  # two implementations
        lambda p: p.update(maxReplica=4),  # misspelt KServe field, read as a PodSpec field
    ],
)
def test_triton_inference_service_check_catches_mistakes(mutate):
    bad = copy.deepcopy(triton_isvc())
    mutate(bad["spec"]["predictor"])
    with pytest.raises((AssertionError, jsonschema.ValidationError)):
        check_triton_inference_service(bad, K8S_VERSIONS[-1])


# ---- the Job and what it writes ----------------------------------------------------------------------------------


def export_args() -> list[str]:
    c = pod_spec(export_job())["containers"][0]
    assert "command" not in c  # the image's entry point, `lgm`, runs the arguments
    return c["args"]


def parsed_export():
    from detector.export import ExportConfig
    from service.cli import build_parser
    from training.configargs import from_args

    args = build_parser().parse_args(export_args())
    assert args.command == "export"
    cfg = from_args(ExportConfig, args)
    cfg.validate()
    return args, cfg


def test_the_export_job_runs_a_real_lgm_export_after_training():
    args, cfg = parsed_export()
    assert cfg.triton_repo is not None and cfg.out is None
    # It reads the folder the training Job writes, on the same claim, and writes beside it.
    train = pod_spec(find(RENDERED[TARGET], "Job", "lgm-train"))
    trainer = train["containers"][0]
    artifact = next(e["value"] for e in trainer["env"] if e["name"] == "LGM_ARTIFACT")
    t_mount, t_sub = mount_of(trainer, artifact)
    pod = pod_spec(export_job())
    c = pod["containers"][0]
    mount, sub = mount_of(c, args.artifact)
    assert claim_of(pod, mount)["claimName"] == claim_of(train, t_mount)["claimName"] and sub == t_sub
    repo_mount, _ = mount_of(c, cfg.triton_repo)
    assert not repo_mount.get("readOnly")
    # Kubernetes does not order Jobs: it starts once training has written detector.json, its last file.
    wait = next(i for i in pod["initContainers"] if i["name"] == "wait-for-model")
    assert f"{args.artifact}/detector.json" in " ".join(wait["command"])
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    # Non-root as the image's user, read-only root filesystem, requests and limits.
    uid, gid = image_user()
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] and (ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (uid, gid, gid)
    for each in [*pod["initContainers"], *pod["containers"]]:
        sc = each["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(each["resources"][part]), f"{each['name']} {part}"


def test_the_inference_service_serves_what_the_job_writes(served_artifact, tmp_path):
    """Run the Job's own command line (paths on the claim moved under tmp_path, the tiny calibrated model as the
    trained one): the InferenceService's storageUri is the folder it writes, and the model Triton loads and
    probes is the one named in the config.pbtxt written there, with the outputs of lgm serve's /v2."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from google.protobuf import text_format
    from test_onnx_export import _model_config_class

    from detector.onnx_graph import INPUT, OUTPUTS
    from service.cli import main
    from service.schema_types import OIP_OUTPUTS

    args, cfg = parsed_export()
    pod = pod_spec(export_job())
    c = pod["containers"][0]
    mount, sub = mount_of(c, args.artifact)
    claim = claim_of(pod, mount)["claimName"]
    repo_mount, repo_sub = mount_of(c, cfg.triton_repo)
    assert claim_of(pod, repo_mount)["claimName"] == claim

    # storageUri pvc://CLAIM/PATH is mounted at /mnt/models, Triton's --model-store.
    isvc = triton_isvc()
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"pvc://{claim}/{repo_sub}"
    triton_args = TRITON_ARGS + model.get("args", [])
    assert runtime_flag(triton_args, "--model-store") == KSERVE_MOUNT

    # The Job's command, on a stand-in claim.
    on_claim = tmp_path / "claim"
    shutil.copytree(served_artifact, on_claim / sub)
    mount_path = PurePosixPath(mount["mountPath"])

    def moved(arg: str) -> str:
        return str(on_claim / PurePosixPath(arg).relative_to(mount_path)) if arg.startswith("/") else arg

    assert main([moved(a) for a in export_args()]) == 0
    repo = on_claim / repo_sub
    models = sorted(p.name for p in repo.iterdir())
    assert models == [cfg.name]
    folder = repo / cfg.name
    written = text_format.Parse((folder / "config.pbtxt").read_text(), _model_config_class()())
    assert written.name == cfg.name and written.platform == "onnxruntime_onnx"
    assert (folder / "1" / "model.onnx").is_file()
    assert all(p.stat().st_mode & 0o004 for p in folder.rglob("*"))  # readable by Triton's own user
    # Triton loads that model, and readiness waits for it.
    assert runtime_flag(triton_args, "--model-control-mode") == "explicit"
    assert runtime_flag(triton_args, "--load-model") == written.name
    assert model["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{written.name}/ready"
    # A client of lgm serve's /v2 sees the same input and outputs (the graph adds `score`).
    assert [t.name for t in written.input] == [INPUT]
    assert [t.name for t in written.output] == [*OIP_OUTPUTS, "score"] == list(OUTPUTS)
    # ONNX Runtime's threads per instance: the container's CPU limit shared by its instances, not Triton's
    # default of one per core of the node.
    params = {k: v.string_value for k, v in written.parameters.items()}
    limit = int(model["resources"]["limits"]["cpu"])
    count = sum(g.count for g in written.instance_group)
    assert params == {"intra_op_thread_count": str(limit // count), "inter_op_thread_count": "1"}


def test_the_image_has_what_the_export_job_runs(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "VENV": str(venv), "SRC": str(ROOT)}
    env["WHEELHOUSE"] = str(tmp_path / "no-wheels")
    proc = subprocess.run(
        ["sh", str(ROOT / "docker" / "install_python_deps.sh"), "deps"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    # `  requirement: NAME>=X` for each of the dependencies it installs, or the project with its extra
    names = set(re.findall(r"requirement: ([A-Za-z0-9_.-]+)", proc.stdout))
    assert "[onnx]" in proc.stdout or {"onnx", "onnxruntime"} <= names, sorted(names)
