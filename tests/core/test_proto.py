"""The wire contract: generated code is current, the .proto follows the style rules.

The lint test re-checks, on the compiled descriptors, the buf STANDARD rules this project
relies on (plus buf's COMMENTS rules), so no buf binary is needed to keep them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor, descriptor_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recsvc import protogen
from recsvc.v1 import recommender_pb2, recommender_pb2_grpc

PASCAL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
LOWER_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE_CASE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")

#: the RPCs of the contract; a change here is a change of the public API
RPCS = {
    "Recommend",
    "SimilarItems",
    "RecordEvents",
    "ForgetUser",
    "SetConsent",
    "ExportUser",
    "LinkIds",
    "UnlinkIds",
    "GetModelInfo",
    "UpsertItems",
    "WithdrawItems",
    "SetRules",
    "DeleteRules",
    "ListRules",
    "SetExperiments",
    "ListExperiments",
}


def upper_snake(name: str) -> str:
    """``RepeatPolicy`` -> ``REPEAT_POLICY`` (buf's enum value prefix)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def all_messages(
    messages: list[descriptor.Descriptor],
) -> Iterator[descriptor.Descriptor]:
    for message in messages:
        yield message
        yield from all_messages(list(message.nested_types))


def all_enums(file: descriptor.FileDescriptor) -> Iterator[descriptor.EnumDescriptor]:
    yield from file.enum_types_by_name.values()
    for message in all_messages(list(file.message_types_by_name.values())):
        yield from message.enum_types


def test_generated_code_is_current(tmp_path: Path) -> None:
    """Fails when the .proto was edited without ``make proto`` (or the code by hand)."""
    written = protogen.generate(tmp_path)

    assert written, "no .proto files found"
    for fresh in written:
        committed = protogen.REPO_ROOT / fresh.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `make proto`"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.relative_to(protogen.REPO_ROOT)} is stale: run `make proto`"
        )
    generated_dir = protogen.REPO_ROOT / "recsvc" / "v1"
    committed_names = {p.name for p in generated_dir.glob("*_pb2*.py*")}
    assert committed_names == {p.name for p in written}, "orphaned generated modules"


def test_descriptor_follows_style_rules() -> None:
    file = recommender_pb2.DESCRIPTOR

    # PACKAGE_VERSION_SUFFIX, PACKAGE_DIRECTORY_MATCH
    assert file.package == "recsvc.v1"
    assert file.name == "recsvc/v1/recommender.proto"

    # SERVICE_SUFFIX, RPC_REQUEST_STANDARD_NAME, RPC_RESPONSE_STANDARD_NAME,
    # RPC_REQUEST_RESPONSE_UNIQUE
    used_types: list[str] = []
    for service in file.services_by_name.values():
        assert service.name.endswith("Service"), service.name
        for method in service.methods:
            assert PASCAL_CASE.match(method.name), method.full_name
            assert method.input_type.name == f"{method.name}Request", method.full_name
            assert method.output_type.name == f"{method.name}Response", method.full_name
            assert method.input_type.file is file and method.output_type.file is file
            used_types += [method.input_type.full_name, method.output_type.full_name]
    assert len(used_types) == len(set(used_types)), "a message serves more than one rpc"
    assert {m.name for m in file.services_by_name["RecommenderService"].methods} == RPCS

    # MESSAGE_PASCAL_CASE, FIELD_LOWER_SNAKE_CASE, ONEOF_LOWER_SNAKE_CASE
    for message in all_messages(list(file.message_types_by_name.values())):
        assert PASCAL_CASE.match(message.name), message.full_name
        for field in message.fields:
            assert LOWER_SNAKE_CASE.match(field.name), field.full_name
        for oneof in message.oneofs:
            # proto3 `optional` fields sit in synthetic oneofs named `_<field>`
            synthetic = [f.name for f in oneof.fields] == [oneof.name.removeprefix("_")]
            assert synthetic or LOWER_SNAKE_CASE.match(oneof.name), oneof.full_name

    # ENUM_PASCAL_CASE, ENUM_VALUE_UPPER_SNAKE_CASE, ENUM_ZERO_VALUE_SUFFIX,
    # ENUM_VALUE_PREFIX
    enums = list(all_enums(file))
    assert enums
    for enum in enums:
        assert PASCAL_CASE.match(enum.name), enum.full_name
        prefix = upper_snake(enum.name) + "_"
        first = enum.values[0]
        assert (first.name, first.number) == (f"{prefix}UNSPECIFIED", 0), enum.full_name
        for value in enum.values:
            assert UPPER_SNAKE_CASE.match(value.name), value.name
            assert value.name.startswith(prefix), value.name
            assert value.number == 0 or not value.name.endswith("_UNSPECIFIED"), value.name


def test_other_languages_get_their_package_names() -> None:
    """go_package and java_package, as Go and Java code generated from the contract
    imports them (buf's PACKAGE_SAME_* rules: the same on every file of recsvc.v1)."""
    proto = descriptor_pb2.FileDescriptorProto()
    recommender_pb2.DESCRIPTOR.CopyToProto(proto)
    options = proto.options

    assert options.go_package == "github.com/recsvc/recsvc/gen/go/recsvc/v1;recsvcv1"
    assert options.java_package == "io.github.recsvc.v1"
    assert options.java_multiple_files is True


def test_every_element_is_commented(tmp_path: Path) -> None:
    """buf COMMENTS: every message, field, enum, enum value, service and rpc."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        protogen.write_descriptor_set(tmp_path / "contract.binpb").read_bytes()
    )
    files = [f for f in fds.file if f.name.startswith("recsvc/")]
    assert files

    def elements(
        proto: descriptor_pb2.FileDescriptorProto,
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        # Numbers are field numbers in descriptor.proto: the paths of source_code_info.
        def message(
            m: descriptor_pb2.DescriptorProto, path: tuple[int, ...]
        ) -> Iterator[tuple[tuple[int, ...], str]]:
            if m.options.map_entry:  # synthesized for map<,> fields; has no source
                return
            yield path, m.name
            for i, f in enumerate(m.field):
                yield (*path, 2, i), f"{m.name}.{f.name}"
            for i, n in enumerate(m.nested_type):
                yield from message(n, (*path, 3, i))
            for i, e in enumerate(m.enum_type):
                yield from enum(e, (*path, 4, i))

        def enum(
            e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...]
        ) -> Iterator[tuple[tuple[int, ...], str]]:
            yield path, e.name
            for i, v in enumerate(e.value):
                yield (*path, 2, i), v.name

        for i, m in enumerate(proto.message_type):
            yield from message(m, (4, i))
        for i, e in enumerate(proto.enum_type):
            yield from enum(e, (5, i))
        for i, s in enumerate(proto.service):
            yield (6, i), s.name
            for j, rpc in enumerate(s.method):
                yield (6, i, 2, j), f"{s.name}.{rpc.name}"

    for proto in files:
        commented = {
            tuple(loc.path)
            for loc in proto.source_code_info.location
            if loc.leading_comments.strip() or loc.trailing_comments.strip()
        }
        missing = [name for path, name in elements(proto) if path not in commented]
        assert not missing, f"{proto.name}: no comment on {missing}"


def test_recommend_request_round_trips() -> None:
    request = recommender_pb2.RecommendRequest(
        user_id="u-42",
        session_id="s-7",
        session_events=[
            recommender_pb2.SessionEvent(
                item_id="i-1",
                event_type=recommender_pb2.EVENT_TYPE_VIEW,
                event_time=Timestamp(seconds=1_700_000_000, nanos=5),
            ),
            recommender_pb2.SessionEvent(
                item_id="i-2", event_type=recommender_pb2.EVENT_TYPE_ADD_TO_CART
            ),
        ],
        k=25,
        filters=recommender_pb2.Filters(
            exclude_item_ids=["i-1"],
            include_categories=["shoes", "bags"],
            exclude_categories=["gift-cards"],
            in_stock_only=True,
        ),
        repeat_policy=recommender_pb2.REPEAT_POLICY_ALLOW_REPEATS,
        non_personalized=True,
        placement="pdp",
        max_per_category=2,
        explain=True,
        continuation="c1.eJwDAAAAAAE",
        paged=True,
        variant="candidate",
    )
    # every field is set, so the round trip covers the whole message
    assert {f.name for f, _ in request.ListFields()} == {f.name for f in request.DESCRIPTOR.fields}

    decoded = recommender_pb2.RecommendRequest.FromString(request.SerializeToString())

    assert decoded == request
    assert decoded.session_events[0].event_time.ToSeconds() == 1_700_000_000
    assert not decoded.session_events[1].HasField("event_time")
    assert list(decoded.filters.include_categories) == ["shoes", "bags"]
    assert decoded.repeat_policy == recommender_pb2.REPEAT_POLICY_ALLOW_REPEATS


@pytest.mark.integration
def test_generated_service_works_with_grpc_aio() -> None:
    """The generated stub and servicer base talk over a real loopback aio server."""

    class Servicer(recommender_pb2_grpc.RecommenderServiceServicer):
        async def GetModelInfo(  # noqa: N802 - the rpc's name, as gRPC dispatches it
            self,
            request: recommender_pb2.GetModelInfoRequest,
            context: grpc.aio.ServicerContext,
        ) -> recommender_pb2.GetModelInfoResponse:
            return recommender_pb2.GetModelInfoResponse(
                model_version="m-1", metrics={"ndcg_at_10": 0.25}
            )

    async def scenario() -> None:
        server = grpc.aio.server()
        # The generated *_pb2_grpc module has no type hints (grpcio-tools writes no .pyi).
        recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(Servicer(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = recommender_pb2_grpc.RecommenderServiceStub(channel)  # type: ignore[no-untyped-call]
                info = await stub.GetModelInfo(recommender_pb2.GetModelInfoRequest(), timeout=5)
                assert info.model_version == "m-1"
                assert info.metrics["ndcg_at_10"] == 0.25
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Recommend(recommender_pb2.RecommendRequest(), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(None)

    asyncio.run(scenario())
