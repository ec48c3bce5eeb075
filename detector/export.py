"""``lgm export``: the calibrated detector as one ONNX graph, and optionally a Triton model repository around it.

The graph is ``DetectorGraph`` (``detector/onnx_graph.py``): pixels (N, C, H, W) float32 in [0, 1] -> the Open
Inference Protocol outputs of ``/v2`` (class, probabilities, log_likelihood, abnormality_score, is_adversarial,
threshold) and the combined score, with a dynamic batch axis. It is written by PyTorch's TorchScript-based
exporter (``torch.onnx.export(..., dynamo=False)``: the module is traced, which needs no package beyond ``onnx``),
checked with ``onnx.checker``, run once with ONNX Runtime against ``Detector.score`` on a few inputs, and only
then renamed into place (a failed export leaves no file). The model's ``metadata_props`` name the source
artifact's files and their sha256, the detector's settings and the opset.

``onnx`` and ``onnxruntime`` are the optional extra ``lgm-detect[onnx]``, imported only here, inside the
functions that need them: a server on ``--engine torch`` (the default) never loads them. ``lgm serve --engine
onnxruntime`` (``service/onnx_engine.py``) exports its loaded detector in memory with ``build_in_memory`` (no
file) and runs it in a ``session`` made here.

Triton (``--triton-repo DIR``): ``DIR/<name>/config.pbtxt`` (platform ``onnxruntime_onnx``, the input and outputs
with their datatypes and per-item shapes, dynamic batching, an instance group) and ``DIR/<name>/1/model.onnx``,
following Triton's model configuration (``model_config.proto`` of triton-inference-server/common): with
``max_batch_size`` > 0 the dims leave out the batch axis, and an output of shape [N] is declared ``dims: [ 1 ]``
with ``reshape: { shape: [ ] }``.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.onnx_graph import INPUT, OUTPUTS, DetectorGraph
from detector.scoring import Detector
from detector.store import DETECTOR_FILE, TENSOR_FILE
from training.artifacts import META, WEIGHTS, atomic_write_bytes
from training.configargs import check_options, option
from training.hashing import file_sha256

OPSET = 17  # ONNX Runtime >= 1.12 and Triton's onnxruntime backend (22.x on) run it
MIN_OPSET, MAX_OPSET = (
    13,
    20,
)  # integer ReduceSum needs 13; PyTorch's TorchScript-based exporter writes up to 20
SCORE_RTOL, SCORE_ATOL = (
    1e-3,
    2e-2,
)  # ONNX Runtime's score against Detector.score's (measured: at most 8.5e-3)
SOURCE_FILES = (WEIGHTS, META, DETECTOR_FILE, TENSOR_FILE)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a Triton model folder and /v2 route name
TRITON_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL"}
ONNX_TYPES = {
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "INT64": "tensor(int64)",
    "BOOL": "tensor(bool)",
}


class ExportError(ValueError):
    """The export cannot be made; the message is one line (``lgm export: error: ...``)."""


@dataclass
class ExportConfig:
    """What ``lgm export`` can be told: each field declares its flag, help, group and bounds
    (``training/configargs.py`` builds the command line from them)."""

    out: str | None = option(None, "the ONNX file to write (FILE.onnx)", group="output")
    triton_repo: str | None = option(
        None,
        "a Triton model repository to write: DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx",
        group="output",
    )
    opset: int = option(OPSET, "ONNX opset of the graph", group="graph", ge=MIN_OPSET, le=MAX_OPSET)
    name: str = option(
        "lgm", "model name: the repository's folder and the /v2/models/{name} route", group="triton"
    )
    max_batch_size: int = option(
        64, "largest batch Triton forms (config.pbtxt max_batch_size)", group="triton", ge=1
    )
    instances: int = option(1, "model instances (instance_group count)", group="triton", ge=1)
    instance_kind: str = option("cpu", "where the instances run", group="triton", choices=("cpu", "gpu"))
    threads: int = option(
        0,
        "ONNX Runtime threads per instance (config.pbtxt's intra_op_thread_count; inter-op 1); set it to the "
        "container's CPU limit over --instances, since Triton's default is one thread per core of the node, "
        "not of the container (0: leave Triton's default)",
        group="triton",
        ge=0,
        le=1024,
    )

    def validate(self) -> None:
        check_options(self)
        if self.out is None and self.triton_repo is None:
            raise ExportError("say where to write: --out FILE.onnx and/or --triton-repo DIR")
        if not MODEL_NAME.fullmatch(self.name):
            raise ExportError(
                f"--name {self.name!r}: use letters, digits, '_', '.' and '-' (a folder and a route name)"
            )


def _onnx(who: str = "lgm export") -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or an ExportError saying that ``who`` needs the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(
            f"{who} needs onnx and onnxruntime ({exc.name} is missing): pip install 'lgm-detect[onnx]'"
        ) from None
    return onnx, onnxruntime


def _json(value: Any) -> str:
    """JSON with non-finite floats as null (a likelihood threshold is -inf when no likelihood is scored)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), sort_keys=True)


def metadata(det: Detector, artifact: Path, opset: int) -> dict[str, str]:
    """The ONNX model's ``metadata_props``: source files' sha256, the detector's settings, classes, the opset."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        producer_version = version("lgm-detect")
    except PackageNotFoundError:
        producer_version = "unknown"
    sources = {name: file_sha256(artifact / name) for name in SOURCE_FILES}
    return {
        "lgm.source_artifact": str(artifact.resolve().name),
        "lgm.source_sha256": _json(sources),
        "lgm.weights_sha256": sources[WEIGHTS],
        "lgm.detector": _json(det.info()),
        "lgm.class_names": _json(det.class_names),
        "lgm.input_shape": _json(["N", *det.input_shape]),
        "lgm.outputs": _json({k: {"datatype": dt, "shape": ["N", *s]} for k, (dt, s) in OUTPUTS.items()}),
        "lgm.opset": str(opset),
        "lgm.producer": f"lgm-detect {producer_version}",
    }


def to_onnx_bytes(graph: DetectorGraph, example: torch.Tensor, opset: int) -> bytes:
    """Trace ``graph`` on ``example`` and return the ONNX model's bytes, batch axis dynamic."""
    buf = io.BytesIO()
    axes = {INPUT: {0: "N"}, **{k: {0: "N"} for k in OUTPUTS}}
    with warnings.catch_warnings(), torch.no_grad():
        # known and harmless: the legacy exporter's deprecation notice, and the feature dimension read as a
        # Python int (a constant of the graph, as it should be)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            buf,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            opset_version=opset,
            dynamic_axes=axes,
            dynamo=False,
            do_constant_folding=True,
        )
    return buf.getvalue()


def check_against(det: Detector, model_bytes: bytes, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the ONNX model with ONNX Runtime on ``x`` and return its outputs by name. ExportError if a class differs
    from ``Detector.score``'s, a score differs by more than float32 rounding can explain (``SCORE_RTOL``/``ATOL``:
    the boundary statistic magnifies the logits' rounding, ``docs/deployment.md``), or a flag differs on an
    input whose two scores lie on the same side of its threshold."""
    _, ort = _onnx()
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = dict(zip(OUTPUTS, sess.run(list(OUTPUTS), {INPUT: x.numpy()}), strict=True))
    ref = det.score(x)
    score, thr = ref.score.numpy(), det.thresholds[ref.pred.numpy()]
    same_side = (score > thr) == (got["score"] > thr)
    if (
        (got["class"] != ref.pred.numpy()).any()
        or not np.allclose(got["score"], score, rtol=SCORE_RTOL, atol=SCORE_ATOL)
        or (got["is_adversarial"][same_side] != ref.is_adversarial.numpy()[same_side]).any()
    ):
        raise ExportError("the exported graph disagrees with the detector on a check input; nothing written")
    return got


def _write(path: Path, data: bytes) -> None:
    """Atomically (a temporary name, then a rename), readable by all: a Triton container often runs as another
    user than the one who exported."""
    atomic_write_bytes(path, data)
    path.chmod(0o644)


def _checked_model(det: Detector, opset: int, seed: int, props: dict[str, str], who: str) -> bytes:
    """Trace ``DetectorGraph(det)``, add ``props`` as ``metadata_props``, pass ``onnx.checker`` and
    ``check_against`` on a few random inputs; the model's bytes. ``det`` must be on the CPU."""
    onnx, _ = _onnx(who)
    graph = DetectorGraph(det).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, *det.input_shape, generator=gen)
    model = onnx.load_from_string(to_onnx_bytes(graph, x[:2], opset))
    model.producer_name = "lgm-detect"
    model.doc_string = "L-GM adversarial-example detector (lgm export): pixels in [0, 1] -> the /v2 outputs"
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    blob = model.SerializeToString()
    check_against(det, blob, x)
    return blob


def build(artifact: str | Path, opset: int = OPSET, seed: int = 0) -> tuple[bytes, Detector]:
    """The ONNX model of a calibrated L-GM artifact, with its metadata, checked; and the loaded detector.

    Refuses (ExportError, NotCalibratedError or ValueError, one line each) a softmax artifact, an uncalibrated
    one, or a missing onnx/onnxruntime."""
    art = Path(artifact)
    _onnx()  # a missing extra is said before the artifact is loaded
    det = Detector.load(art, "cpu")
    return _checked_model(det, opset, seed, metadata(det, art, opset), "lgm export"), det


def build_in_memory(det: Detector, who: str, opset: int = OPSET, seed: int = 0) -> bytes:
    """The checked ONNX model of an already loaded detector, made in memory and never written: what
    ``lgm serve --engine onnxruntime`` runs (``service/onnx_engine.py``). The metadata names the weights and the
    detector's settings only (no files are read). ``who`` names the caller in a missing-extra message."""
    if det.device.type != "cpu":
        raise ExportError(f"{who}: the detector must be loaded on the CPU, not {det.device}")
    props = {
        "lgm.weights_sha256": str(det.meta.get("weights_sha256")),
        "lgm.detector": _json(det.info()),
        "lgm.class_names": _json(det.class_names),
        "lgm.opset": str(opset),
    }
    return _checked_model(det, opset, seed, props, who)


def session(model: bytes, threads: int, who: str = "lgm export") -> Any:
    """An ONNX Runtime ``InferenceSession`` over ``model`` on the CPU provider: ``threads`` intra-op threads, one
    inter-op thread, operators run one after another (``ExecutionMode.ORT_SEQUENTIAL``), as the server runs
    torch (``service/engine.py``)."""
    _, ort = _onnx(who)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def triton_config(
    name: str, det: Detector, max_batch_size: int, instances: int, kind: str, threads: int = 0
) -> str:
    """``config.pbtxt`` for the exported graph (Triton's ``ModelConfig`` in protobuf text format)."""
    c, h, w = det.input_shape

    def dims(shape: tuple[str, ...]) -> str:
        return "[ " + ", ".join(str(det.num_classes) if s == "K" else s for s in shape) + " ]"

    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        f'  {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {c}, {h}, {w} ] }}',
        "]",
        "output [",
    ]
    outs = []
    for nm, (dt, shape) in OUTPUTS.items():
        if shape:
            outs.append(f'  {{ name: "{nm}" data_type: {TRITON_TYPES[dt]} dims: {dims(shape)} }}')
        else:  # shape [N]: one element per item, reshaped to a scalar per item
            outs.append(
                f'  {{ name: "{nm}" data_type: {TRITON_TYPES[dt]} dims: [ 1 ] reshape: {{ shape: [ ] }} }}'
            )
    lines += [",\n".join(outs), "]"]
    lines += [
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        f"instance_group [ {{ count: {instances} kind: KIND_{kind.upper()} }} ]",
    ]
    if threads:  # Triton's onnxruntime backend reads these parameters (strings) when it makes each session
        lines += [
            f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}',
            'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }',
        ]
    return "\n".join(lines) + "\n"


def write_triton_repo(
    repo: str | Path,
    name: str,
    blob: bytes,
    det: Detector,
    max_batch_size: int,
    instances: int,
    kind: str,
    threads: int = 0,
) -> Path:
    """``repo/<name>/config.pbtxt`` and ``repo/<name>/1/model.onnx``; returns the model's folder."""
    folder = Path(repo) / name
    _write(folder / "1" / "model.onnx", blob)
    cfg = triton_config(name, det, max_batch_size, instances, kind, threads)
    _write(folder / "config.pbtxt", cfg.encode())
    return folder


def export(artifact: str | Path, cfg: ExportConfig) -> list[Path]:
    """What ``lgm export`` runs: the graph to ``cfg.out`` and/or a Triton repository; returns the files written."""
    cfg.validate()
    blob, det = build(artifact, cfg.opset)
    written = []
    if cfg.out is not None:
        _write(Path(cfg.out), blob)
        written.append(Path(cfg.out))
    if cfg.triton_repo is not None:
        folder = write_triton_repo(
            cfg.triton_repo,
            cfg.name,
            blob,
            det,
            cfg.max_batch_size,
            cfg.instances,
            cfg.instance_kind,
            cfg.threads,
        )
        written += [folder / "config.pbtxt", folder / "1" / "model.onnx"]
    return written
