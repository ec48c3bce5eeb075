"""The Open Inference Protocol v2 over gRPC: ``inference.GRPCInferenceService`` (ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer) and the standard ``grpc.health.v1.Health`` service, on
``grpc_port``, served by ``grpc.aio`` on the worker's own event loop.

Each worker process (``lgm serve --workers N``) starts its own gRPC server beside its HTTP server, on the same
port with ``SO_REUSEPORT`` (gRPC's default on Linux): the kernel spreads incoming connections over the workers as
it does for the HTTP socket that uvicorn shares, and every request is scored by that worker's one model through
its micro-batcher, exactly as its HTTP requests are (``service/oip.py`` is the path both take past parsing).

Errors are gRPC status codes with the same one-line messages as HTTP: 422/400 -> INVALID_ARGUMENT, 401 ->
UNAUTHENTICATED, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED (also gRPC's own answer to a message above
``max_request_bytes``), 503 -> UNAVAILABLE. With API keys configured, ServerMetadata, ModelMetadata and ModelInfer
need metadata ``x-api-key``; liveness, readiness and health never do. Outputs always travel as
``raw_output_contents``; inputs as ``raw_input_contents`` or typed ``contents`` (``fp32_contents`` for FP32,
``uint_contents`` for UINT8).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import oip
from service.errors import APIError
from service.schemas import OIP_OUTPUTS
from service.state import ServiceState, valid_key
from service.stateful.setup import grpc_client, reveal_outputs, round_tensors, screened

log = logging.getLogger("uvicorn.error")
SERVICE = "inference.GRPCInferenceService"
DESCRIPTORS = Path(__file__).parent / "protos" / "inference.binpb"  # `make protos` from inference.proto
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,  # query_policy=block: a flagged client
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _messages() -> dict[str, Any]:
    """The protocol's message classes, from the compiled descriptor set, in a private descriptor pool (KServe's
    and Triton's clients each put their own ``inference.*`` in protobuf's default pool)."""
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
        pool.Add(f)
    svc = pool.FindServiceByName(SERVICE)
    out = {}
    for m in svc.methods:
        out[m.input_type.name] = message_factory.GetMessageClass(m.input_type)
        out[m.output_type.name] = message_factory.GetMessageClass(m.output_type)
    return out


M = _messages()
METHODS = {  # method -> (request, response, needs a key)
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse", False),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse", False),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse", False),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse", True),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse", True),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse", True),
}


class InferenceServicer:
    """The six methods, each ``async (request, context) -> response``, over one app's ``ServiceState``."""

    def __init__(self, st: ServiceState) -> None:
        self.st = st

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the protocol's names
        return M["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return M["ServerReadyResponse"](ready=self.st.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        oip.check_model(self.st, request.name, request.version if self.st.ready else None)
        return M["ModelReadyResponse"](ready=self.st.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return M["ServerMetadataResponse"](
            name=oip.SERVER_NAME, version=oip.server_version(), extensions=oip.EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        oip.check_model(self.st, request.name, request.version)
        meta = oip.model_metadata(self.st, request.name)
        tm = M["ModelMetadataResponse"].TensorMetadata
        return M["ModelMetadataResponse"](
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tm(**t) for t in meta["inputs"]],
            outputs=[tm(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        st = self.st
        oip.ready(st)
        oip.check_model(st, request.model_name, request.model_version)
        if len(request.inputs) != 1:
            raise APIError(422, f"inputs must hold exactly one tensor, got {len(request.inputs)}")
        t = request.inputs[0]
        shape = list(t.shape)
        oip.check_input(st, t.datatype, shape)
        raws = request.raw_input_contents
        if raws:
            if len(raws) != 1:
                raise APIError(422, f"raw_input_contents holds {len(raws)} entries for 1 input")
            x = oip.from_raw(raws[0], t.datatype, shape)
        else:
            values = t.contents.fp32_contents if t.datatype == "FP32" else t.contents.uint_contents
            x = oip.from_array(
                np.asarray(values, dtype=np.float32 if t.datatype == "FP32" else np.int64), t.datatype, shape
            )
        names = [o.name for o in request.outputs] or list(OIP_OUTPUTS)
        for nm in names:
            if nm not in OIP_OUTPUTS:
                raise APIError(422, f"unknown output {nm!r}; outputs are {', '.join(OIP_OUTPUTS)}")
        verdict, res = await screened(  # the query-attack defence, as on HTTP (429 -> RESOURCE_EXHAUSTED)
            st.guard,
            lambda: grpc_client(
                dict(context.invocation_metadata() or ()),
                context.peer(),
                st.settings,
                st.guard.trusted_proxies,
            ),
            x,
            oip.score(st, x),
        )
        reveal, digits = st.settings.query_reveal, st.settings.query_round_digits
        tensors = round_tensors(oip.outputs(res, reveal_outputs(names, reveal)), reveal, digits)
        out = M["ModelInferResponse"](
            model_name=request.model_name, model_version=st.model_version, id=request.id
        )
        out.parameters["client_flagged"].bool_param = verdict.flagged
        for o in tensors:
            out.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
        out.raw_output_contents.extend(o.raw() for o in tensors)
        return out


def _handler(st: ServiceState, servicer: InferenceServicer, method: str) -> grpc.RpcMethodHandler:
    req, resp, keyed = METHODS[method]
    fn = getattr(servicer, method)
    keys = st.settings.api_keys

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if keyed and keys:
                given = dict(context.invocation_metadata() or ()).get("x-api-key", "")
                if not valid_key(keys, given if isinstance(given, str) else given.decode(errors="replace")):
                    raise APIError(401, "missing or wrong x-api-key metadata")
            return await fn(request, context)
        except APIError as exc:
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=M[req].FromString, response_serializer=M[resp].SerializeToString
    )


def check_port_free(host: str, port: int) -> None:
    """ValueError (one line) when ``port`` is taken, by anything, another ``lgm serve`` included. The workers bind
    it with SO_REUSEPORT, which would let them share it silently with a server started earlier by the same user;
    a plain bind first (before any worker starts) refuses that."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # A stopped server's connections in TIME_WAIT are no conflict; a listening socket is.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ValueError(
                f"gRPC port {host}:{port} is in use ({exc.strerror}); set --grpc-port (0: off)"
            ) from None


class GRPCServer:
    """One worker's gRPC server: the inference service and the health service, on ``host:grpc_port``."""

    def __init__(self, st: ServiceState) -> None:
        s = st.settings
        self.st = st
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),  # every worker binds the same port; the kernel spreads connections
                ("grpc.max_receive_message_length", s.max_request_bytes),
            ]
        )
        servicer = InferenceServicer(st)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {m: _handler(st, servicer, m) for m in METHODS})]
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        host = f"[{s.host}]" if ":" in s.host and not s.host.startswith("[") else s.host
        try:
            self.port = self.server.add_insecure_port(f"{host}:{s.grpc_port}")
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind the gRPC port {host}:{s.grpc_port} ({exc})") from None
        if self.port == 0:  # older grpcio report a failed bind this way
            raise RuntimeError(f"cannot bind the gRPC port {host}:{s.grpc_port}")

    async def start(self) -> None:
        await self.server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE):
            await self.health.set(name, serving)
        log.info("lgm: gRPC (OIP v2) on %s:%d", self.st.settings.host, self.port)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first (probes see it), then let in-flight calls finish for up to ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
