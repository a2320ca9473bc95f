"""Ids round-trip exactly: one rule at the API boundary, one unambiguous erasure list.

The defect these pin: ``ForgetUser(user_id="u00090\\u00a0")`` was accepted, the erasure
list was read back stripped, and the innocent ``u00090`` lost their profile and their
training data.
"""

from __future__ import annotations

import os
import stat
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recsvc.client import RecommenderClient
from recsvc.config import ServerSettings
from recsvc.erasure import HEADER, ErasureList, append_erasure, read_erasure_list
from recsvc.errors import DataError, InvalidRequestError
from recsvc.serving.validation import forget_user_id
from recsvc.v1 import recommender_pb2 as pb

from factories import small_settings
from server_harness import ServerThread, publish_block_model

LIMITS = ServerSettings()


def _unprintable() -> list[str]:
    """Every whitespace, control, format and separator character (and the other
    characters Python does not print: non-ASCII spaces)."""
    chars = []
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        category = unicodedata.category(c)
        if c.isspace() or category in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            chars.append(c)
    return chars


UNPRINTABLE = _unprintable()


def test_every_whitespace_and_control_character_is_refused_anywhere_in_an_id() -> None:
    assert len(UNPRINTABLE) > 200 and "\u00a0" in UNPRINTABLE and "\u2028" in UNPRINTABLE
    for c in UNPRINTABLE:
        for user_id in (f"u00090{c}", f"{c}u00090", f"u000{c}90"):
            if c == " " and user_id == "u000 90":
                assert forget_user_id(pb.ForgetUserRequest(user_id=user_id), LIMITS) == user_id
                continue
            with pytest.raises(InvalidRequestError, match="printable"):
                forget_user_id(pb.ForgetUserRequest(user_id=user_id), LIMITS)


def test_printable_ids_are_kept_byte_for_byte() -> None:
    for user_id in ("u00090", "café", "a b", '"quoted"', "über|pipe", "\U0001f600", "x\u0301"):
        assert forget_user_id(pb.ForgetUserRequest(user_id=user_id), LIMITS) == user_id


def test_the_erasure_list_reads_back_exactly_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "erased.txt"
    ids = ["u00090", "café", " lead", "trail ", "a\u00a0b", 'q"uote', "#hash", "x\ny"]
    for user_id in ids:
        append_erasure(path, user_id)
    assert read_erasure_list(path) == frozenset(ids)
    assert path.read_text().splitlines()[0] == HEADER
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it names customers


def test_a_first_format_list_is_read_without_stripping_and_kept_in_its_format(
    tmp_path: Path,
) -> None:
    path = tmp_path / "erased.txt"
    path.write_text("u1\nu00090\u00a0\n\n")
    assert read_erasure_list(path) == {"u1", "u00090\u00a0"}
    append_erasure(path, "u2")
    assert read_erasure_list(path) == {"u1", "u00090\u00a0", "u2"}
    assert "u00090" not in ErasureList(path)


def test_a_damaged_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "erased.txt"
    path.write_text(f'{HEADER}\n"ok"\nnot json\n')
    with pytest.raises(DataError, match=r"erased.txt:3"):
        read_erasure_list(path)


@pytest.fixture()
def server(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[ServerThread]:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    settings = small_settings(
        None,
        artifact_root=str(root),
        erasure_list=str(tmp_path / "erased.txt"),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={"port": 0, "metrics_port": None, "event_log_dir": str(tmp_path / "log")},
    )
    running = ServerThread(settings)
    yield running
    running.stop()


@pytest.mark.integration
def test_forgetting_a_lookalike_never_erases_the_innocent(
    server: ServerThread, tmp_path: Path
) -> None:
    with RecommenderClient(server.target, timeout=5.0) as c:
        assert c.recommend("g0u01", k=3).strategy == pb.STRATEGY_PERSONALIZED
        for c_ in ("\u00a0", " ", "\t", "\u2028", "\u200b", "\ufeff", "\x85"):
            with pytest.raises(grpc.RpcError) as caught:
                c.forget_user(f"g0u01{c_}")
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # a printable lookalike is its own customer: erasing it leaves g0u01 alone
        assert c.forget_user("g0u01é").added_to_erasure_list
        assert c.recommend("g0u01", k=3).strategy == pb.STRATEGY_PERSONALIZED
    assert read_erasure_list(tmp_path / "erased.txt") == {"g0u01é"}
