"""The gRPC service's messages: the checked-in descriptor set is what ``make protos`` compiles from the .proto,
and every message and method it defines agrees, field by field (name, number, type, label), with the definitions
that Triton's and KServe's clients ship (KServe's in a child process: the two clash in one process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "service" / "protos"

# Prints {message: {field: [number, type, label, type name]}} and {method: [input, output]} of a FileDescriptor.
DUMP = """
import json, sys
from google.protobuf import descriptor_pb2
def dump(fd):
    msgs = {}
    def walk(prefix, ms):
        for d in ms:
            msgs[prefix + d.name] = {f.name: [f.number, f.type, f.label, f.type_name.split('.')[-1]] for f in d.field}
            walk(prefix + d.name + '.', d.nested_type)
    walk('', fd.message_type)
    svc = {s.name + '.' + m.name: [m.input_type, m.output_type] for s in fd.service for m in s.method}
    return {'package': fd.package, 'messages': msgs, 'methods': svc}
"""


def _ours() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorSet.FromString((PROTOS / "inference.binpb").read_bytes()).file[0]


def _dump(fd: descriptor_pb2.FileDescriptorProto) -> dict:
    scope: dict = {}
    exec(DUMP, scope)  # noqa: S102 - the same code the child process runs
    return json.loads(json.dumps(scope["dump"](fd)))


def _theirs(module: str) -> dict:
    code = DUMP + (
        f"import {module} as m\nfd = descriptor_pb2.FileDescriptorProto()\nm.DESCRIPTOR.CopyToProto(fd)\n"
        "print(json.dumps(dump(fd)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def test_descriptor_set_is_compiled_from_the_proto(tmp_path: Path) -> None:
    from grpc_tools import protoc

    out = tmp_path / "inference.binpb"
    rc = protoc.main(
        ["protoc", f"-I{PROTOS}", f"--descriptor_set_out={out}", str(PROTOS / "inference.proto")]
    )
    assert rc == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert fresh == descriptor_pb2.FileDescriptorSet.FromString((PROTOS / "inference.binpb").read_bytes()), (
        "run `make protos`"
    )


@pytest.mark.parametrize(
    "module", ["tritonclient.grpc.service_pb2", "kserve.protocol.grpc.grpc_predict_v2_pb2"]
)
def test_messages_agree_with_the_stock_clients(module: str) -> None:
    ours, theirs = _dump(_ours()), _theirs(module)
    assert ours["package"] == theirs["package"] == "inference"
    for method, types in ours["methods"].items():
        assert theirs["methods"].get(method) == types, method
    for name, fields in ours["messages"].items():
        assert name in theirs["messages"], name
        common = fields.keys() & theirs["messages"][name].keys()
        assert {f: fields[f] for f in common} == {f: theirs["messages"][name][f] for f in common}, name
        # a field of ours they lack must be one they may not know yet (InferParameter's newer choices)
        assert set(fields) - common <= {"double_param", "uint64_param"}, name
        # and every field they send for the messages we read, we know
        if name.startswith(("ModelInferRequest", "InferTensorContents", "ModelMetadataRequest")):
            assert set(theirs["messages"][name]) <= set(fields), name
