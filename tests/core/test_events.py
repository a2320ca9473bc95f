"""The event vocabulary is declared once (recsvc/events.py); everything else agrees."""

from __future__ import annotations

import pytest

from recsvc.client import EVENT_TYPES as CLIENT_EVENT_TYPES
from recsvc.config import WeightingSettings
from recsvc.events import EVENT_SPECS, EventType, LiveEvent
from recsvc.serving.validation import EVENT_TYPE_FROM_PB
from recsvc.store.codec import decode_event, encode_event
from recsvc.v1 import recommender_pb2 as pb
from recsvc.weighting import EVENT_TYPES, event_type_weights


def test_every_type_has_one_spec_and_the_proto_agrees() -> None:
    assert set(EVENT_SPECS) == set(EventType)
    proto = {
        v.name.removeprefix("EVENT_TYPE_"): v.number
        for v in pb.DESCRIPTOR.enum_types_by_name["EventType"].values
        if v.number != pb.EVENT_TYPE_UNSPECIFIED
    }
    assert proto == {t.name: t.spec.proto_number for t in EventType}


def test_validation_and_the_client_map_every_proto_number() -> None:
    assert {n: t for n, t in EVENT_TYPE_FROM_PB.items()} == {
        t.spec.proto_number: t for t in EventType
    }
    assert {t.value: t.spec.proto_number for t in EventType} == CLIENT_EVENT_TYPES


def test_live_state_codes_are_distinct_letters_and_round_trip() -> None:
    codes = [t.spec.state_code for t in EventType]
    assert len(set(codes)) == len(codes) and all(len(c) == 1 and c != "|" for c in codes)
    for t in EventType:
        event = LiveEvent("sku", t, 1_700_000_000, 2.0)
        assert decode_event(encode_event(event)) == event


def test_default_weights_and_taste_come_from_the_specs() -> None:
    weights = event_type_weights(WeightingSettings())
    assert weights.tolist() == pytest.approx([t.spec.default_weight for t in EVENT_TYPES])
    # what a shopper merely saw says nothing about taste, and weighs nothing
    assert [t for t in EventType if not t.spec.taste] == [
        EventType.IMPRESSION,
        EventType.NOT_INTERESTED,
        EventType.RETURN,
    ]
    assert EventType.IMPRESSION.spec.default_weight == 0.0
    # turning an item down is not taste either, and training reads it apart (returns
    # take purchases back), never through a weight
    assert [t for t in EventType if t.spec.dismisses] == [
        EventType.NOT_INTERESTED,
        EventType.RETURN,
    ]
    assert all(t.spec.default_weight == 0.0 for t in EventType if t.spec.dismisses)
