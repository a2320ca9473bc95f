"""Server reflection, as ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection (up to 1.85 at least) implements only the v1alpha service, while
current tools (grpcurl, grpcui, Postman) ask for v1 first. The two protos differ only
in their package: every message, field name, number and type is the same (grpc's
``src/proto/grpc/reflection/v1/reflection.proto`` against ``v1alpha``), so their bytes
on the wire are the same. One v1alpha servicer therefore answers both method paths
with the v1alpha (de)serializers, and ListServices names both services.

So that a tool can also *describe* the v1 service it was just told about (``grpcurl
describe`` with no symbol describes every listed service, and stops at the first it
cannot resolve), the v1 file descriptor is derived from the v1alpha one and looked up
after the process's default pool, in a pool of its own: nothing is added to the
process-global default pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["SERVICE_NAMES", "V1_FILE_NAME", "V1_SERVICE_NAME", "enable_server_reflection"]

V1_SERVICE_NAME: Final = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES: Final[tuple[str, ...]] = (V1_SERVICE_NAME, reflection.SERVICE_NAME)
"""Both reflection services, as ListServices names them."""
V1_FILE_NAME: Final = "grpc/reflection/v1/reflection.proto"
"""The name of the v1 file in grpc's tree, as other servers serve it."""

_METHOD: Final = "ServerReflectionInfo"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection file: v1alpha's messages and service under package
    ``grpc.reflection.v1``, with the file options of grpc's v1 proto."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."

    proto.name = V1_FILE_NAME
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):  # message fields; scalars have none
                field.type_name = new + field.type_name.removeprefix(old)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    proto.options.Clear()  # v1alpha's are deprecated = true and its own package names
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    return proto


class _PoolWithV1:
    """The lookups the reflection servicer makes: the default pool first (every
    generated module the process imported, recsvc.v1 and v1alpha included), then a
    private pool holding only the v1 reflection file."""

    def __init__(self) -> None:
        self._default = descriptor_pool.Default()
        self._v1 = descriptor_pool.DescriptorPool()
        self._v1.Add(v1_file_descriptor())

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:  # noqa: N802
        try:
            return self._default.FindFileByName(name)
        except KeyError:
            return self._v1.FindFileByName(name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:  # noqa: N802
        try:
            return self._default.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._v1.FindFileContainingSymbol(symbol)

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:  # noqa: N802
        try:
            return self._default.FindMessageTypeByName(name)
        except KeyError:
            return self._v1.FindMessageTypeByName(name)

    # Extensions live in the pool of the message they extend.
    def FindExtensionByNumber(  # noqa: N802
        self, message: descriptor.Descriptor, number: int
    ) -> descriptor.FieldDescriptor:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(  # noqa: N802
        self, message: descriptor.Descriptor
    ) -> list[descriptor.FieldDescriptor]:
        return message.file.pool.FindAllExtensions(message)


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) on ``server`` for ``service_names`` and the
    reflection services themselves."""
    servicer = reflection.aio.ReflectionServicer(
        (*service_names, *SERVICE_NAMES), pool=_PoolWithV1()
    )
    handlers = {
        _METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in SERVICE_NAMES:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        # as the generated add_*Servicer_to_server do: the faster registered-method path
        server.add_registered_method_handlers(name, handlers)
