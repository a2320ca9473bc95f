"""serving.reflection: v1 and v1alpha server reflection from one servicer.

The requests on the v1 path are written byte by byte, as a v1 client (grpcurl) sends
them, and the v1 file the server describes is checked against the layout of grpc's
published ``grpc/reflection/v1/reflection.proto``, written down here.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from recsvc.serving.reflection import (
    SERVICE_NAMES,
    V1_FILE_NAME,
    V1_SERVICE_NAME,
    enable_server_reflection,
    v1_file_descriptor,
)
from recsvc.v1 import recommender_pb2

pytestmark = pytest.mark.integration

V1_PATH = f"/{V1_SERVICE_NAME}/ServerReflectionInfo"
V1ALPHA_PATH = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
RECOMMENDER = "recsvc.v1.RecommenderService"
HEALTH = "grpc.health.v1.Health"

# grpc/reflection/v1/reflection.proto: message -> (field, number, descriptor type);
# 9 string, 11 message, 12 bytes, 5 int32
V1_LAYOUT = {
    "ServerReflectionRequest": [
        ("host", 1, 9),
        ("file_by_filename", 3, 9),
        ("file_containing_symbol", 4, 9),
        ("file_containing_extension", 5, 11),
        ("all_extension_numbers_of_type", 6, 9),
        ("list_services", 7, 9),
    ],
    "ExtensionRequest": [("containing_type", 1, 9), ("extension_number", 2, 5)],
    "ServerReflectionResponse": [
        ("valid_host", 1, 9),
        ("original_request", 2, 11),
        ("file_descriptor_response", 4, 11),
        ("all_extension_numbers_response", 5, 11),
        ("list_services_response", 6, 11),
        ("error_response", 7, 11),
    ],
    "FileDescriptorResponse": [("file_descriptor_proto", 1, 12)],
    "ExtensionNumberResponse": [("base_type_name", 1, 9), ("extension_number", 2, 5)],
    "ListServiceResponse": [("service", 1, 11)],
    "ServiceResponse": [("name", 1, 9)],
    "ErrorResponse": [("error_code", 1, 5), ("error_message", 2, 9)],
}


def string_field(number: int, text: str) -> bytes:
    """One length-delimited field (wire type 2) of a short string, encoded by hand."""
    data = text.encode()
    assert len(data) < 128  # one-byte length
    return bytes([number << 3 | 2, len(data)]) + data


def ask(path: str, *requests: bytes) -> list[reflection_pb2.ServerReflectionResponse]:
    """Send raw request messages on ``path`` of a fresh server with recsvc's services
    and reflection; the answers, read with the v1alpha message class."""

    async def scenario() -> list[bytes]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        enable_server_reflection((RECOMMENDER, HEALTH), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_stream(path)  # no (de)serializers: bytes as they are
                return [answer async for answer in call(iter(requests), timeout=5)]
        finally:
            await server.stop(None)

    return [reflection_pb2.ServerReflectionResponse.FromString(b) for b in asyncio.run(scenario())]


def files(
    answer: reflection_pb2.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = answer.file_descriptor_response.file_descriptor_proto
    parsed = [descriptor_pb2.FileDescriptorProto.FromString(p) for p in protos]
    return {p.name: p for p in parsed}


@pytest.mark.parametrize("path", [V1_PATH, V1ALPHA_PATH])
def test_both_versions_list_every_service_and_both_reflections(path: str) -> None:
    (answer,) = ask(path, string_field(7, ""))  # list_services

    listed = {s.name for s in answer.list_services_response.service}
    assert listed == {RECOMMENDER, HEALTH, *SERVICE_NAMES}
    assert answer.original_request.list_services == ""


def test_v1_describes_the_contract_with_its_dependencies() -> None:
    (answer,) = ask(V1_PATH, string_field(4, RECOMMENDER))  # file_containing_symbol

    found = files(answer)
    assert set(found) == {"recsvc/v1/recommender.proto", "google/protobuf/timestamp.proto"}
    contract = found["recsvc/v1/recommender.proto"]
    assert contract == descriptor_pb2.FileDescriptorProto.FromString(
        recommender_pb2.DESCRIPTOR.serialized_pb
    )
    assert contract.options.go_package  # what a Go client generated from reflection uses


def test_v1_describes_itself_as_grpc_publishes_it() -> None:
    # grpcurl's `describe` without a symbol resolves every listed service, these too
    answers = ask(
        V1_PATH,
        string_field(4, V1_SERVICE_NAME),
        string_field(4, "grpc.reflection.v1alpha.ServerReflection"),
    )

    (v1,) = files(answers[0]).values()
    (v1alpha,) = files(answers[1]).values()
    assert v1.name == V1_FILE_NAME and v1.package == "grpc.reflection.v1"
    assert v1.options.go_package == "google.golang.org/grpc/reflection/grpc_reflection_v1"
    assert not v1.options.deprecated and v1alpha.options.deprecated
    (service,) = v1.service
    (method,) = service.method
    assert (service.name, method.name) == ("ServerReflection", "ServerReflectionInfo")
    assert method.client_streaming and method.server_streaming
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


@pytest.mark.parametrize("proto", [v1_file_descriptor(), None], ids=["v1", "v1alpha"])
def test_the_messages_have_the_published_v1_layout(
    proto: descriptor_pb2.FileDescriptorProto | None,
) -> None:
    """The premise of answering v1 with v1alpha's code: the same fields, numbers and
    types in both (and message-typed fields point into their own package)."""
    if proto is None:
        proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    layout = {m.name: [(f.name, f.number, f.type) for f in m.field] for m in proto.message_type}
    assert layout == V1_LAYOUT
    for message in proto.message_type:
        for field in message.field:
            if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
                assert field.type_name.startswith(f".{proto.package}.")


def test_an_unknown_symbol_is_not_found_and_the_stream_goes_on() -> None:
    missing, listed = ask(V1_PATH, string_field(4, "recsvc.v1.Nope"), string_field(7, ""))

    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.original_request.file_containing_symbol == "recsvc.v1.Nope"
    assert V1_SERVICE_NAME in {s.name for s in listed.list_services_response.service}
