"""``lgm export``: the ONNX graph gives ``Detector.score``'s answers under ONNX Runtime, names its source, refuses
what it cannot export, and its Triton repository's config.pbtxt matches the graph (``detector/export.py``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_service_common import client_fixture, detector_fixture, served_artifact_fixture  # noqa: F401

from detector.onnx_graph import OUTPUTS, DetectorGraph
from detector.scoring import Detector
from service.cli import main
from service.schema_types import OIP_OUTPUTS
from training.data import load_dataset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

PROTOS = (
    Path(__file__).parent / "protos"
)  # Triton's model_config.proto (triton-inference-server/common, BSD-3)
ORT_TYPES = {
    "INT64": "tensor(int64)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BOOL": "tensor(bool)",
}
NEAR = 1e-5  # inputs whose score lies this close to their threshold may be flagged either way


@pytest.fixture(scope="module", name="exported")
def exported_fixture(served_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "detector.onnx"
    assert main(["export", str(served_artifact), "--out", str(out)]) == 0
    return out


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _inputs(detector: Detector, art: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((art / "model.json").read_text())
    test = load_dataset("digits", seed=meta["dataset"]["split_seed"]).test
    gen = torch.Generator().manual_seed(1)
    x = test.x.float() / 255.0
    return {
        "digits test split": x,
        "noisy digits (gaussian, sd 0.15)": (x + 0.15 * torch.randn(x.shape, generator=gen)).clamp(0, 1),
        "uniform noise": torch.rand(300, *detector.input_shape, generator=gen),
    }


def test_the_outputs_are_those_of_the_v2_route_and_the_score() -> None:
    assert [k for k in OUTPUTS if k != "score"] == list(OIP_OUTPUTS)
    assert {k: dt for k, (dt, _) in OUTPUTS.items() if k != "score"} == OIP_OUTPUTS


def test_onnx_runtime_gives_the_detectors_class_and_flag(exported, detector, served_artifact, capsys) -> None:
    sess = _session(exported)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUTS)
    assert [o.type for o in sess.get_outputs()] == [ORT_TYPES[dt] for dt, _ in OUTPUTS.values()]
    assert sess.get_inputs()[0].name == "input" and sess.get_inputs()[0].type == "tensor(float)"
    figures = {}
    for what, x in _inputs(detector, served_artifact).items():
        ref = detector.score(x)
        got = dict(zip(OUTPUTS, sess.run(None, {"input": x.numpy()}), strict=True))
        thr = detector.thresholds[ref.pred.numpy()]
        near = np.abs(ref.score.numpy() - thr) <= NEAR
        np.testing.assert_array_equal(got["class"], ref.pred.numpy(), err_msg=what)
        np.testing.assert_array_equal(got["is_adversarial"][~near], ref.is_adversarial.numpy()[~near], what)
        np.testing.assert_allclose(got["probabilities"], ref.probs.numpy(), atol=1e-5, err_msg=what)
        np.testing.assert_allclose(got["log_likelihood"], ref.log_likelihood.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(got["abnormality_score"], ref.abnormality.numpy(), atol=1e-4, err_msg=what)
        np.testing.assert_array_equal(got["threshold"], ref.threshold.numpy(), err_msg=what)
        # float32 rounding of the network (ONNX Runtime's kernels against torch's, ~1e-5 on the logits) is
        # amplified by the boundary statistic -log(z_k - z_j) where the two top logits are close
        diff = float(np.abs(got["score"] - ref.score.numpy()).max())
        assert diff < 1e-2, (what, diff)
        within_diff = int((np.abs(ref.score.numpy() - thr) <= diff).sum())
        figures[what] = (len(x), int(ref.is_adversarial.sum()), int(near.sum()), within_diff, diff)
        assert int(near.sum()) <= 2, (what, figures[what])
    with capsys.disabled():
        for what, (n, flagged, n_near, n_diff, diff) in figures.items():
            print(
                f"\n[onnx] {what}: {n} inputs, {flagged} flagged, {n_near} within {NEAR} of the threshold, "
                f"largest score difference {diff:.2e} ({n_diff} inputs within it of the threshold)"
            )
    one = _inputs(detector, served_artifact)["uniform noise"][:1].numpy()  # the batch axis is dynamic
    assert sess.run(["class"], {"input": one})[0].shape == (1,)


def test_the_graph_in_torch_is_the_detector_exactly(detector, served_artifact) -> None:
    """Before export, ``DetectorGraph`` gives ``Detector.score``'s numbers bit for bit (same torch operations)."""
    graph = DetectorGraph(detector).eval()
    for x in _inputs(detector, served_artifact).values():
        ref = detector.score(x)
        with torch.no_grad():
            got = dict(zip(OUTPUTS, graph(x), strict=True))
        assert torch.equal(got["class"], ref.pred) and torch.equal(got["is_adversarial"], ref.is_adversarial)
        assert torch.equal(got["score"], ref.score) and torch.equal(got["abnormality_score"], ref.abnormality)
        assert torch.equal(got["threshold"], ref.threshold) and torch.equal(got["probabilities"], ref.probs)


def test_metadata_names_the_source_artifact_and_settings(exported, served_artifact, detector) -> None:
    model = onnx.load(str(exported))
    props = {p.key: p.value for p in model.metadata_props}
    sources = json.loads(props["lgm.source_sha256"])
    for name in ("model.safetensors", "model.json", "detector.json", "detector.safetensors"):
        assert sources[name] == hashlib.sha256((served_artifact / name).read_bytes()).hexdigest()
    assert props["lgm.weights_sha256"] == detector.meta["weights_sha256"]
    settings = json.loads(props["lgm.detector"])
    assert settings["threshold_kind"] == detector.calibration["threshold_kind"]
    assert settings["score"]["statistics"] == detector.score_model.names
    assert json.loads(props["lgm.class_names"]) == detector.class_names
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [
        int(props["lgm.opset"])
    ]


def test_softmax_and_uncalibrated_artifacts_are_refused_in_one_line(
    tiny_artifact, tiny_config_factory, tmp_path, capsys
) -> None:
    from training.trainer import train

    softmax = tmp_path / "softmax"
    train(tiny_config_factory(head="softmax", epochs=1), softmax)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")
    for art, says in ((softmax, "softmax head"), (tiny_artifact, "lgm calibrate")):
        assert main(["export", str(art), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lgm export: error:") and says in err and err.count("\n") == 1, err
        assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]  # no temporary file left
        assert out.read_bytes() == b"an earlier export"  # and nothing half-written over the old one
    misuse = (([], "--out FILE.onnx"), (["--out", str(out), "--name", "a/b"], "--name"))
    for args, says in (*misuse, (["--out", str(out), "--opset", "9"], "--opset must be in [13, 20]")):
        assert main(["export", str(tiny_artifact), *args]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def _model_config_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    files = descriptor_pb2.FileDescriptorSet.FromString((PROTOS / "model_config.binpb").read_bytes())
    pool = descriptor_pool.DescriptorPool()  # private: no clash with a client's own inference.* messages
    for f in files.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def test_model_config_descriptor_is_compiled_from_the_proto(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "model_config.binpb"
    args = ["protoc", f"-I{PROTOS}", f"--descriptor_set_out={out}", str(PROTOS / "model_config.proto")]
    assert protoc.main(args) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert fresh == descriptor_pb2.FileDescriptorSet.FromString((PROTOS / "model_config.binpb").read_bytes())


def test_triton_repository_config_matches_the_graph(served_artifact, exported, detector, tmp_path) -> None:
    from google.protobuf import text_format

    repo = tmp_path / "repo"
    args = [
        "export",
        str(served_artifact),
        "--triton-repo",
        str(repo),
        "--name",
        "digits",
        "--instances",
        "2",
    ]
    assert main(args) == 0
    folder = repo / "digits"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
    ]
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), _model_config_class()())
    assert cfg.name == "digits" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    assert cfg.HasField("dynamic_batching")
    assert [(g.count, cfg.instance_group[0].Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (2, "KIND_CPU")
    ]
    assert not cfg.parameters  # no --threads: Triton's own default
    assert main([*args, "--threads", "3"]) == 0
    threaded = text_format.Parse((folder / "config.pbtxt").read_text(), _model_config_class()())
    assert {k: v.string_value for k, v in threaded.parameters.items()} == {
        "intra_op_thread_count": "3",
        "inter_op_thread_count": "1",
    }
    sess = _session(folder / "1" / "model.onnx")
    dtype = cfg.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type

    def as_onnx(t) -> tuple[str, str, list]:
        triton_type = dtype.values_by_number[t.data_type].name
        per_item = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        return t.name, ORT_TYPES[triton_type.removeprefix("TYPE_")], ["N", *per_item]

    def of_graph(t) -> tuple[str, str, list]:
        return t.name, t.type, list(t.shape)

    assert [as_onnx(t) for t in cfg.input] == [of_graph(t) for t in sess.get_inputs()]
    assert [as_onnx(t) for t in cfg.output] == [of_graph(t) for t in sess.get_outputs()]
    assert [t.name for t in cfg.output] == list(OUTPUTS)
    assert (folder / "1" / "model.onnx").read_bytes() == exported.read_bytes()  # the same graph as --out


def test_export_keeps_onnx_out_of_the_server() -> None:
    """``service.app`` and the scoring modules never import onnx or onnxruntime (the exporter does, lazily)."""
    import subprocess
    import sys

    code = (
        "import sys, service.app, detector.onnx_graph\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_a_copy_with_another_name_exports_the_same_graph(served_artifact, exported, tmp_path) -> None:
    """The graph depends on the artifact's files, not on its folder (the export is deterministic)."""
    copy = tmp_path / "copy"
    shutil.copytree(served_artifact, copy)
    assert main(["export", str(copy), "--out", str(tmp_path / "m.onnx")]) == 0
    a, b = onnx.load(str(exported)), onnx.load(str(tmp_path / "m.onnx"))
    assert a.graph == b.graph


VARIANTS = {
    "per-class Gaussians, no likelihood statistic, one global threshold": dict(
        gaussians="per_class", statistics=["boundary", "layers"], kind="global"
    ),
    "the head's own Gaussians, likelihood only": dict(gaussians="head", statistics=["likelihood"]),
    "the tapped layers pooled into one Gaussian": dict(statistics=["likelihood", "boundary", "layers-joint"]),
}


RESNET = "the CIFAR ResNet backbone (its stem and stage ends tapped)"
LOGISTIC = "a logistic combination (roc mode's form)"


@pytest.mark.parametrize("variant", [*VARIANTS, RESNET, LOGISTIC])
def test_every_detector_setting_exports(
    variant, tiny_artifact, tiny_config_factory, served_artifact, tmp_path
) -> None:
    """The graph follows the detector's settings: Gaussians tied, per class or the head's (a per-class whitening),
    any subset of statistics (no likelihood: threshold -inf), a global threshold, the logistic combination, and
    either backbone."""
    from detector.calibration import calibrate
    from detector.export import check_against, to_onnx_bytes
    from training.trainer import train

    if variant in (*VARIANTS, RESNET):
        art = tmp_path / "art"
        if variant == RESNET:
            train(tiny_config_factory(epochs=1, backbone="resnet", width=8), art)
        else:
            shutil.copytree(tiny_artifact, art)
        calibrate(art, mode="clean", device="cpu", progress=False, **VARIANTS.get(variant, {}))
        det = Detector.load(art, "cpu")
    else:  # the served detector's statistics, combined by a logistic regression's weights
        base = Detector.load(served_artifact, "cpu")
        sm = base.score_model
        sm.combine, sm.weights, sm.bias = "logistic", [0.5 + 0.1 * i for i in range(len(sm.names))], -1.5
        det = Detector(base.model, base.meta, base.calibration, sm, base.device)
    x = torch.cat([v[:120] for v in _inputs(det, served_artifact).values()])
    graph = DetectorGraph(det).eval()
    with torch.no_grad():
        mine = dict(zip(OUTPUTS, graph(x), strict=True))
    ref = det.score(x)
    assert torch.equal(mine["score"], ref.score) and torch.equal(mine["is_adversarial"], ref.is_adversarial)
    assert torch.equal(mine["abnormality_score"], ref.abnormality) and torch.equal(
        mine["threshold"], ref.threshold
    )
    got = check_against(det, to_onnx_bytes(graph, x[:2], 17), x)  # raises if a class or a clear flag differs
    np.testing.assert_allclose(got["score"], ref.score.numpy(), atol=1e-2)
    if "no likelihood" in variant:
        assert np.isneginf(got["threshold"]).all()


def test_the_export_check_catches_a_wrong_graph(detector) -> None:
    """``check_against``, which every export passes before its file is written, can fail: a graph whose
    thresholds or tail models are off is refused."""
    from detector.export import ExportError, check_against, to_onnx_bytes

    x = torch.rand(8, *detector.input_shape, generator=torch.Generator().manual_seed(3))
    for tamper, change in (("thresholds", 1e3), ("tail_beta", 0.5)):  # flags off; every tail surprise off
        graph = DetectorGraph(detector).eval()
        buf = getattr(graph, tamper)
        buf.add_(change) if tamper == "thresholds" else buf.mul_(change)
        with pytest.raises(ExportError, match="disagrees"):
            check_against(detector, to_onnx_bytes(graph, x[:2], 17), x)


def test_the_graph_declares_what_lgm_serves_v2_metadata_declares(exported, client) -> None:
    """``GET /v2/models/lgm`` of ``lgm serve`` and the graph agree on every input and output (name, datatype,
    shape with -1 for the batch axis), the graph adding only ``score``: what Triton reports for the export."""
    meta = client.get("/v2/models/lgm").json()
    ort_type = {v: k for k, v in ORT_TYPES.items()}
    sess = _session(exported)

    def of_graph(t) -> dict:
        shape = [-1 if isinstance(d, str) else d for d in t.shape]
        return {"name": t.name, "datatype": ort_type[t.type], "shape": shape}

    assert meta["inputs"] == [of_graph(t) for t in sess.get_inputs()]
    assert meta["outputs"] == [of_graph(t) for t in sess.get_outputs() if t.name != "score"]


def test_without_the_onnx_extra_the_command_says_what_to_install(
    served_artifact, tmp_path, monkeypatch, capsys
):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    assert main(["export", str(served_artifact), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is missing" in err and "lgm-detect[onnx]" in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())
