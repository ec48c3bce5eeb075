"""KServe's stock clients with their defaults, run as a child process by ``test_oip_clients.py`` (KServe's and
Triton's clients register clashing ``inference.*`` protobuf messages, so they cannot share one process).

    python oip_kserve_client.py HTTP_ADDR GRPC_ADDR KEYED_GRPC_ADDR KEY X.npy

Prints one JSON line: for each way of calling, the classes and abnormality scores the server returned (and, for
a request asking for one output, the names of the outputs that came back).
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def _request(x: np.ndarray, binary: bool, outputs: list[str] | None = None) -> InferRequest:
    inp = InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    asked = [RequestedOutput(name) for name in outputs] if outputs else None
    return InferRequest(model_name="lgm", infer_inputs=[inp], request_outputs=asked)


def _scores(response) -> dict[str, list]:
    out = {o.name: o.as_numpy().tolist() for o in response.outputs}
    return {"class": out["class"], "abnormality_score": out["abnormality_score"]}


async def main(http: str, grpc_addr: str, keyed: str, key: str, x: np.ndarray) -> dict:
    results: dict = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    for binary in (True, False):
        r = await rest.infer(f"http://{http}", _request(x, binary), model_name="lgm")
        results["rest binary" if binary else "rest json"] = _scores(r)
    r = await rest.infer(f"http://{http}", _request(x, True, ["class"]), model_name="lgm")
    results["rest outputs"] = [o.name for o in r.outputs]
    await rest.close()
    client = InferenceGRPCClient(grpc_addr, timeout=30)
    assert await client.is_server_ready()
    results["grpc"] = _scores(await client.infer(_request(x, True)))
    await client.close()
    client = InferenceGRPCClient(keyed, timeout=30)
    results["grpc keyed"] = _scores(await client.infer(_request(x, True), headers=(("x-api-key", key),)))
    await client.close()
    return results


if __name__ == "__main__":
    http, grpc_addr, keyed, key, path = sys.argv[1:6]
    print(json.dumps(asyncio.run(main(http, grpc_addr, keyed, key, np.load(path)))))
