"""The servers a user would run instead of ``lgm serve``, each serving the same ``Detector.score`` with its own
dynamic batching (``bench/serving/serve.py --protocols`` starts them, one at a time, in their own virtual environment):

- LitServe (Lightning AI): a ``LitAPI`` whose ``decode_request`` takes the ``/v1/predict`` body (base64 PNG) and
  the Open Inference Protocol's JSON body alike, batched by LitServe (``max_batch_size``, ``batch_timeout``);
- MLServer (Seldon): a custom runtime (``MLModel``) speaking the Open Inference Protocol natively over REST and
  gRPC, with MLServer's adaptive batching (``max_batch_size``, ``max_batch_time``).

Images are decoded by the project's own ``service.images`` and scored by the project's ``Detector``, so the
peers differ from ``lgm serve`` only in the serving stack. MLServer pins older fastapi and starlette than the
project's, so the peers live in their own virtual environment (``make .venv-peers``):

    python bench/serving/peers.py litserve ARTIFACT PORT --max-batch-size 64 --max-wait-ms 1 --workers 2
    python bench/serving/peers.py mlserver ARTIFACT PORT --grpc-port P --max-batch-size 64 --max-wait-ms 1 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])


def _load(artifact: str, threads: int):
    import torch

    from detector.scoring import Detector

    torch.set_num_threads(threads)
    det = Detector.load(artifact, "cpu")
    det.score(torch.rand(8, *det.input_shape))  # warm-up
    return det


def _result(det, x) -> list[dict]:
    """Scores of a batch (N, C, H, W) as one dict per image: the fields /v1/predict's answer is built from."""
    import torch

    with torch.inference_mode():
        s = det.score(x)
    return [
        {
            "class_index": int(s.pred[i]),
            "label": det.class_names[int(s.pred[i])],
            "abnormality_score": float(s.abnormality[i]),
            "log_likelihood": float(s.log_likelihood[i]),
            "is_adversarial": bool(s.is_adversarial[i]),
        }
        for i in range(len(s.pred))
    ]


# -- LitServe ------------------------------------------------------------------------------------------------------
try:
    import litserve as ls

    class DetectorAPI(ls.LitAPI):
        """Decodes one image per request (either body), LitServe batches them, ``Detector.score`` scores them.
        (At module level: LitServe pickles the API into its worker processes.)"""

        def setup(self, device: str) -> None:
            self.det = _load(os.environ["LGM_PEER_ARTIFACT"], 1)

        def decode_request(self, request: dict):  # noqa: ANN201 - a torch tensor
            import numpy as np
            import torch

            from service.images import decode_b64, decode_image

            if "instances" in request:  # the /v1/predict body: one base64 PNG
                img = decode_image(
                    decode_b64(request["instances"][0]["b64"]), self.det.input_shape, 4096 * 4096
                )
                return torch.from_numpy(img)
            t = request["inputs"][0]  # the Open Inference Protocol's JSON body
            return torch.from_numpy(np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])[0])

        def batch(self, inputs: list):  # noqa: ANN201
            import torch

            return torch.stack(inputs)

        def predict(self, x) -> list[dict]:  # noqa: ANN001
            return _result(self.det, x)

        def unbatch(self, output: list[dict]) -> list[dict]:
            return output

        def encode_response(self, output: dict) -> dict:
            return {"predictions": [output]}
except ImportError:  # not in the peers' environment
    pass


def run_litserve(args: argparse.Namespace) -> None:
    os.environ["LGM_PEER_ARTIFACT"] = str(Path(args.artifact).resolve())
    api = DetectorAPI(max_batch_size=args.max_batch_size, batch_timeout=args.max_wait_ms / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


# -- MLServer ------------------------------------------------------------------------------------------------------
try:
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

    class LGMRuntime(MLModel):
        """A custom MLServer runtime: one input [N, C, H, W] (FP32 in [0, 1] or UINT8 in 0..255), outputs
        ``class`` and ``abnormality_score``."""

        async def load(self) -> bool:
            extra = self.settings.parameters.extra
            self.det = _load(extra["artifact"], extra["threads"])
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            import numpy as np
            import torch

            arr = NumpyCodec.decode_input(payload.inputs[0])
            x = torch.from_numpy(
                arr.astype(np.float32) * np.float32(1 / 255) if arr.dtype == np.uint8 else arr
            )
            res = _result(self.det, x.float())
            n = len(res)
            return InferenceResponse(
                model_name=self.name,
                outputs=[
                    ResponseOutput(
                        name="class", shape=[n], datatype="INT64", data=[r["class_index"] for r in res]
                    ),
                    ResponseOutput(
                        name="abnormality_score",
                        shape=[n],
                        datatype="FP32",
                        data=[r["abnormality_score"] for r in res],
                    ),
                ],
            )
except ImportError:  # the project's own environment: only the LitServe part or none is used
    pass


def run_mlserver(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="lgm-mlserver-"))
    settings = {
        "http_port": args.port,
        "grpc_port": args.grpc_port,
        "host": "127.0.0.1",
        "metrics_endpoint": None,
        # MLServer's inference pool (parallel_workers > 0) dies at start-up under this Python ("no current event
        # loop"), so the model runs in MLServer's own process (one torch thread, as each lgm worker).
        "parallel_workers": 0,
        "debug": False,
    }
    model = {
        "name": "lgm",
        "implementation": "bench.serving.peers.LGMRuntime",
        "max_batch_size": args.max_batch_size,
        "max_batch_time": args.max_wait_ms / 1000.0,
        "parameters": {"extra": {"artifact": str(Path(args.artifact).resolve()), "threads": 1}},
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # MLServer imports bench.serving.peers.LGMRuntime
    mlserver = Path(sys.executable).with_name("mlserver")
    os.execve(str(mlserver), [str(mlserver), "start", str(folder)], env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=["litserve", "mlserver"])
    p.add_argument("artifact")
    p.add_argument("port", type=int)
    p.add_argument("--grpc-port", type=int, default=0, help="MLServer's gRPC port")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2, help="LitServe's inference worker processes")
    args = p.parse_args()
    (run_litserve if args.peer == "litserve" else run_mlserver)(args)


if __name__ == "__main__":
    main()
