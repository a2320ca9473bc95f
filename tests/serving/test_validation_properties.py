"""Request validation, property-based: any message gives a domain input that keeps the
limits, or InvalidRequestError naming fields that exist — never another exception.

(The server-level fuzzer, tests/serving/test_fuzz.py, sends such messages over the wire;
this checks the validation itself, fast and exhaustively.)
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from recsvc.catalog import AttributeFilter
from recsvc.config import ServerSettings
from recsvc.errors import InvalidRequestError
from recsvc.serving import validation
from recsvc.serving.calls import FilterSpec
from recsvc.v1 import recommender_pb2 as pb

LIMITS = ServerSettings(max_k=50, max_session_events=5, max_batch_events=5, max_id_bytes=16)

# ids: mostly plausible, sometimes hostile (controls, separators, long, empty)
ids = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=24),
    st.sampled_from(["", "u1", " u1", "u1 ", "u\u00a01", "a\nb", "x" * 17, "é" * 9]),
)
timestamps = st.builds(
    lambda s, n: (s, n),
    st.integers(-(2**40), 2**40),
    st.integers(-5, 1_000_000_005),
)
enum_numbers = st.integers(-3, 9)


def _time(message: object, value: tuple[int, int] | None) -> None:
    if value is not None:
        stamp = message.event_time  # type: ignore[attr-defined]
        stamp.seconds, stamp.nanos = value


@st.composite
def recommend_requests(draw: st.DrawFn) -> pb.RecommendRequest:
    req = pb.RecommendRequest(
        user_id=draw(ids),
        session_id=draw(ids),
        k=draw(st.integers(-10, 100)),
        repeat_policy=draw(enum_numbers),  # type: ignore[arg-type]
        non_personalized=draw(st.booleans()),
        placement=draw(st.sampled_from(["", "home", "HOME", "a" * 40, "pdp_2"])),
    )
    for _ in range(draw(st.integers(0, 7))):
        e = req.session_events.add(item_id=draw(ids), event_type=draw(enum_numbers))  # type: ignore[arg-type]
        _time(e, draw(st.none() | timestamps))
    if draw(st.booleans()):
        req.filters.exclude_item_ids.extend(draw(st.lists(ids, max_size=3)))
        req.filters.in_stock_only = draw(st.booleans())
    return req


@st.composite
def event_requests(draw: st.DrawFn) -> pb.RecordEventsRequest:
    req = pb.RecordEventsRequest()
    for _ in range(draw(st.integers(0, 7))):
        e = req.events.add(
            user_id=draw(ids),
            session_id=draw(ids),
            item_id=draw(ids),
            event_type=draw(enum_numbers),  # type: ignore[arg-type]
            quantity=draw(st.floats(width=32, allow_nan=True, allow_infinity=True)),
            recommendation_id=draw(ids),
            event_id=draw(ids),
        )
        _time(e, draw(st.none() | timestamps))
    return req


def _fields_exist(error: InvalidRequestError, names: set[str]) -> None:
    assert error.violations
    for v in error.violations:
        root = v.field.split("[", 1)[0].split(".", 1)[0]
        assert root in names, v.field


def _id_ok(value: str) -> bool:
    return value == "" or (
        value.isprintable()
        and value[0] != " "
        and value[-1] != " "
        and len(value.encode()) <= LIMITS.max_id_bytes
    )


@given(recommend_requests())
def test_recommend_requests_validate_or_name_their_bad_fields(req: pb.RecommendRequest) -> None:
    try:
        out = validation.recommend_input(req, LIMITS)
    except InvalidRequestError as error:
        _fields_exist(error, set(pb.RecommendRequest.DESCRIPTOR.fields_by_name))
        return
    assert 1 <= out.k <= LIMITS.max_k
    assert _id_ok(out.user_id) and _id_ok(out.session_id)
    assert len(out.session_events) <= LIMITS.max_session_events
    assert all(e.item_id and _id_ok(e.item_id) for e in out.session_events)


@given(event_requests())
def test_event_batches_validate_or_name_their_bad_fields(req: pb.RecordEventsRequest) -> None:
    try:
        events = validation.event_inputs(req, LIMITS)
    except InvalidRequestError as error:
        _fields_exist(error, set(pb.RecordEventsRequest.DESCRIPTOR.fields_by_name))
        return
    assert len(events) <= LIMITS.max_batch_events
    for e in events:
        assert e.item_id and all(_id_ok(x) for x in (e.user_id, e.session_id, e.event_id))
        assert math.isfinite(e.quantity) and e.quantity > 0
        assert 0 <= e.timestamp < 253_402_300_800
        assert e.key  # every accepted event has the id that makes it idempotent


def test_a_checked_filter_is_reused_and_a_bad_one_is_refused_every_time() -> None:
    """Valid filters are kept by their bytes (a storefront repeats them); an invalid
    one is never kept, so it is refused on every call, naming its field."""
    good = pb.Filters(
        attributes=[pb.AttributeFilter(name="price", range=pb.NumberRange(min=1.0, max=9.0))]
    )
    first = validation.recommend_input(pb.RecommendRequest(k=5, filters=good), LIMITS)
    again = validation.recommend_input(
        pb.RecommendRequest(k=5, filters=pb.Filters.FromString(good.SerializeToString())), LIMITS
    )
    assert again.filters is first.filters
    assert first.filters.attributes[0].name == "price"
    other = pb.Filters(exclude_item_ids=["i1"])
    assert validation.recommend_input(
        pb.RecommendRequest(filters=other), LIMITS
    ).filters.exclude_item_ids == ("i1",)
    bad = pb.Filters(attributes=[pb.AttributeFilter(name="Price", range=pb.NumberRange(min=1.0))])
    for _ in range(2):
        try:
            validation.recommend_input(pb.RecommendRequest(filters=bad), LIMITS)
        except InvalidRequestError as exc:
            assert [v.field for v in exc.violations] == ["filters.attributes[0].name"]
        else:
            raise AssertionError("an invalid filter was accepted")
    # the id limit is part of what was checked: a stricter server checks again
    long_id = pb.Filters(exclude_item_ids=["x" * 12])
    validation.recommend_input(pb.RecommendRequest(filters=long_id), LIMITS)
    strict = ServerSettings(max_id_bytes=8)
    try:
        validation.recommend_input(pb.RecommendRequest(filters=long_id), strict)
    except InvalidRequestError as exc:
        assert [v.field for v in exc.violations] == ["filters.exclude_item_ids[0]"]
    else:
        raise AssertionError("a cached filter skipped a stricter id limit")


@given(
    st.lists(st.sampled_from(["i1", "i2", "i3"]), max_size=3),
    st.booleans(),
    st.one_of(st.none(), st.floats(0, 100)),
)
def test_a_filter_spec_hashes_as_its_fields_whenever_it_is_made(
    excluded: list[str], in_stock: bool, low: float | None
) -> None:
    """The spec keeps the hash it was made with (the engine keys its built filters on
    it): equal specs hash alike, however they were made, and a replaced one anew."""
    attributes = (AttributeFilter("price", low=low),) if low is not None else ()
    spec = FilterSpec(tuple(excluded), in_stock_only=in_stock, attributes=attributes)
    twin = FilterSpec(tuple(excluded), in_stock_only=in_stock, attributes=attributes)
    assert spec == twin and hash(spec) == hash(twin)
    flipped = replace(spec, in_stock_only=not in_stock)
    assert flipped != spec
    assert hash(flipped) == hash(FilterSpec(tuple(excluded), (), (), not in_stock, attributes))
    assert replace(flipped, in_stock_only=in_stock) == spec
    assert hash(replace(flipped, in_stock_only=in_stock)) == hash(spec)
