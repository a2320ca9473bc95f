"""A/B experiments: named variants with traffic shares, sticky assignment, and the
recommendation ids that carry a variant to the events that follow.

An :class:`Experiment` splits the shoppers of some placements (all by default) between
its :class:`Variant` s. A variant is a model version (the published one by default)
and ranking settings: merchandising rules on or off, the placement's rotation and
trending share, or popularity only (``non_personalized``). Experiments are shared
records (:class:`recsvc.store.records.RecordLog`): set through the SetExperiments RPC
(``recsvc experiment set FILE``) or a file every replica watches
(``[server] experiments_file``), read from a TOML file by :func:`read_experiments`::

    [[experiment]]
    name = "new-model"                       # [A-Za-z0-9_-], unique
    placements = ["home"]                    # optional; none: every placement
    salt = "2026-12"                         # optional; default: the name

    [[experiment.variant]]
    name = "control"                         # the first variant is the control
    share = 0.9

    [[experiment.variant]]
    name = "candidate"
    share = 0.1
    model = "20261206T110358Z-9dfb3920"      # optional; default: the published model

**Assignment** is weighted rendezvous hashing (Schindelhauer and Schomaker's
logarithmic method): every variant draws ``u = hash(salt, variant, unit) in (0, 1)``
and the unit (the request's user id, else its session id) goes to the variant with the
largest ``share / -ln(u)``. Each variant gets its share of units, the same unit gets
the same variant on every replica and after restarts (the hash is BLAKE2b, not
Python's salted ``hash``), and changing shares moves only the units it must: ramping a
variant from 10% to 50% moves 40% of the units, all of them into that variant. A new
salt reshuffles everyone (a new experiment).

**Recommendation ids** are ``<model>.<experiment>.<variant>.<issued>.<owner><nonce>``:
the model version, the experiment and variant (empty outside experiments), the Unix
second it was issued (hex), 8 hex digits of a digest of the shopper it was issued to
and 16 random hex digits. RecordEvents attributes an event carrying one to its variant
only when the event's shopper is the owner and the event falls inside the attribution
window after ``issued`` -- no state is read or written for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from recsvc.errors import DataError, FieldViolation
from recsvc.rulefile import read_toml
from recsvc.v1 import recommender_pb2 as pb

__all__ = [
    "Experiment",
    "RecommendationId",
    "Variant",
    "check_experiments",
    "experiment_message",
    "owner_digest",
    "parse_recommendation_id",
    "read_experiments",
    "recommendation_id",
]

NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,40}")
"""Experiment and variant names: they are labels on metrics and parts of ids."""
RECORD_VERSION: Final = 1
MAX_VARIANTS: Final = 8
"""Variants of one experiment at most (each may load a model)."""
_TWO_64: Final = float(2**64)
_TAIL_RE: Final = re.compile(r"[0-9a-f]{24}")
_ISSUED_RE: Final = re.compile(r"[0-9a-f]{1,12}")


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a model and ranking settings."""

    name: str
    share: float
    """Its traffic share (> 0); an experiment's shares sum to 1."""
    model: str | None = None
    """A model version under the artifact root; None: the published one (CURRENT)."""
    non_personalized: bool = False
    """Popularity only, as a request's ``non_personalized`` (a no-personalisation arm)."""
    rules: bool = True
    """Whether the merchandising rules apply to its answers."""
    rotate_after: int | None = None
    """Overrides the placement's ``rotate_after`` (0: no rotation); None: as set."""
    trending_weight: float | None = None
    """Overrides the placement's ``trending_weight``; None: as set."""

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "share": self.share}
        if self.model is not None:
            record["model"] = self.model
        if self.non_personalized:
            record["non_personalized"] = True
        if not self.rules:
            record["rules"] = False
        if self.rotate_after is not None:
            record["rotate_after"] = self.rotate_after
        if self.trending_weight is not None:
            record["trending_weight"] = self.trending_weight
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Variant:
        return cls(
            name=str(record["name"]),
            share=float(record["share"]),
            model=None if record.get("model") is None else str(record["model"]),
            non_personalized=bool(record.get("non_personalized", False)),
            rules=bool(record.get("rules", True)),
            rotate_after=None
            if record.get("rotate_after") is None
            else int(record["rotate_after"]),
            trending_weight=(
                None if record.get("trending_weight") is None else float(record["trending_weight"])
            ),
        )


def _maybe(kind: type[int] | type[float], value: Any) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True)
class Experiment:
    """Named variants splitting the shoppers of some placements; a shared record."""

    name: str
    variants: tuple[Variant, ...]
    """The first is the control the report compares the others with."""
    placements: tuple[str, ...] = ()
    """Placements it applies to; empty: every placement."""
    salt: str = ""
    """Mixed into the assignment hash; empty: the name."""
    deleted: bool = False
    """A tombstone: the experiment was removed."""
    updated_at: int = 0
    """Unix seconds of the change that wrote this record."""
    _keys: tuple[bytes, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        salt = (self.salt or self.name).encode()
        keys = tuple(salt + b"\x00" + v.name.encode() + b"\x00" for v in self.variants)
        object.__setattr__(self, "_keys", keys)

    @property
    def key(self) -> str:
        """Its key in the shared store."""
        return self.name

    @property
    def control(self) -> Variant:
        return self.variants[0]

    def applies(self, placement: str) -> bool:
        return not self.deleted and (not self.placements or placement in self.placements)

    def variant(self, name: str) -> Variant | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None

    def assign(self, unit: str) -> Variant:
        """The variant of ``unit`` (a user or session id): weighted rendezvous hashing."""
        data = unit.encode()
        best, best_score = self.variants[0], -math.inf
        for key, v in zip(self._keys, self.variants, strict=True):
            h = int.from_bytes(hashlib.blake2b(key + data, digest_size=8).digest(), "big")
            u = (h + 0.5) / _TWO_64  # in (0, 1)
            score = v.share / -math.log(u)
            if score > best_score:
                best, best_score = v, score
        return best

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "v": RECORD_VERSION,
            "name": self.name,
            "variants": [v.to_record() for v in self.variants],
        }
        if self.placements:
            record["pl"] = list(self.placements)
        if self.salt:
            record["salt"] = self.salt
        if self.deleted:
            record["del"] = True
        if self.updated_at:
            record["at"] = self.updated_at
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_record(cls, record: Any) -> Experiment:
        """The experiment of a decoded record; ValueError for one it cannot read."""
        try:
            if record.get("v") != RECORD_VERSION:
                raise ValueError(f"unknown experiment record version {record.get('v')!r}")
            return cls(
                name=str(record["name"]),
                variants=tuple(Variant.from_record(v) for v in record["variants"]),
                placements=tuple(str(p) for p in record.get("pl", ())),
                salt=str(record.get("salt", "")),
                deleted=bool(record.get("del", False)),
                updated_at=int(record.get("at", 0)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed experiment record: {exc}") from exc

    @classmethod
    def tombstone(cls, name: str, now: int) -> Experiment:
        """The record a removal writes."""
        return cls(name, (), deleted=True, updated_at=now)


def check_experiments(
    experiments: Sequence[Experiment], known_versions: Iterable[str] | None = None
) -> list[FieldViolation]:
    """Every reason ``experiments`` (a whole set) cannot run, by field path
    (``experiments[0].variants[1].share``); empty when they can. ``known_versions``:
    the model versions a variant may name (None: not checked)."""
    known = None if known_versions is None else set(known_versions)
    bad: list[FieldViolation] = []
    names: set[str] = set()
    everywhere: str | None = None  # the experiment of every placement, if any
    claimed: dict[str, str] = {}  # placement -> experiment
    for i, e in enumerate(experiments):
        p = f"experiments[{i}]"
        if not NAME_RE.fullmatch(e.name):
            bad.append(FieldViolation(f"{p}.name", f"must match {NAME_RE.pattern}, got {e.name!r}"))
        elif e.name in names:
            bad.append(FieldViolation(f"{p}.name", f"experiment {e.name!r} is declared twice"))
        names.add(e.name)
        for j, placement in enumerate(e.placements):
            if not placement:
                bad.append(FieldViolation(f"{p}.placements[{j}]", "must not be empty"))
        shared = [q for q in e.placements if q in claimed] if e.placements else list(claimed)
        other = everywhere or (claimed[shared[0]] if shared else None)
        if other is not None:
            bad.append(
                FieldViolation(
                    f"{p}.placements",
                    f"shares placements with experiment {other!r} (one experiment per placement)",
                )
            )
        elif e.placements:
            claimed.update(dict.fromkeys(e.placements, e.name))
        else:
            everywhere = e.name
        if not 1 <= len(e.variants) <= MAX_VARIANTS:
            bad.append(
                FieldViolation(
                    f"{p}.variants", f"needs 1 to {MAX_VARIANTS} variants, got {len(e.variants)}"
                )
            )
        seen: set[str] = set()
        total = 0.0
        for j, v in enumerate(e.variants):
            q = f"{p}.variants[{j}]"
            if not NAME_RE.fullmatch(v.name):
                bad.append(
                    FieldViolation(f"{q}.name", f"must match {NAME_RE.pattern}, got {v.name!r}")
                )
            elif v.name in seen:
                bad.append(FieldViolation(f"{q}.name", f"variant {v.name!r} is declared twice"))
            seen.add(v.name)
            if not (math.isfinite(v.share) and 0.0 < v.share <= 1.0):
                bad.append(FieldViolation(f"{q}.share", f"must be in (0, 1], got {v.share!r}"))
            else:
                total += v.share
            if v.model is not None and known is not None and v.model not in known:
                bad.append(FieldViolation(f"{q}.model", f"model version {v.model!r} not found"))
            if v.rotate_after is not None and not 0 <= v.rotate_after <= 100:
                bad.append(
                    FieldViolation(
                        f"{q}.rotate_after", f"must be in [0, 100], got {v.rotate_after}"
                    )
                )
            if v.trending_weight is not None and not 0.0 <= v.trending_weight <= 1.0:
                bad.append(
                    FieldViolation(
                        f"{q}.trending_weight", f"must be in [0, 1], got {v.trending_weight!r}"
                    )
                )
        if (
            e.variants
            and abs(total - 1.0) > 1e-6
            and not any(f.field.endswith(".share") and f.field.startswith(p) for f in bad)
        ):
            bad.append(FieldViolation(f"{p}.variants", f"shares must sum to 1, got {total:g}"))
    return bad


_EXPERIMENT_KEYS: Final = frozenset({"name", "placements", "salt", "variant"})
_VARIANT_KEYS: Final = frozenset(
    {"name", "share", "model", "non_personalized", "rules", "rotate_after", "trending_weight"}
)


def read_experiments(path: Path) -> list[Experiment]:
    """The experiments of the TOML file at ``path`` (see the module docstring), in file
    order; DataError naming the file and the key for anything malformed. What the file
    says is checked by :func:`check_experiments` (the server does that too)."""
    doc = read_toml(path, "experiments")
    unknown = set(doc) - {"experiment"}
    if unknown:
        raise DataError(f"{path}: unknown top-level keys {sorted(unknown)} (want [[experiment]])")
    tables = doc.get("experiment", [])
    if not isinstance(tables, list):
        raise DataError(f"{path}: 'experiment' must be an array of tables ([[experiment]])")
    out: list[Experiment] = []
    for i, t in enumerate(tables):
        where = f"{path}: experiment {i + 1}"
        extra = set(t) - _EXPERIMENT_KEYS
        if extra:
            raise DataError(f"{where}: unknown keys {sorted(extra)}")
        if not isinstance(t.get("name"), str):
            raise DataError(f"{where}: 'name' (a string) is required")
        variants: list[Variant] = []
        for j, v in enumerate(t.get("variant", [])):
            extra = set(v) - _VARIANT_KEYS
            if extra:
                raise DataError(f"{where}, variant {j + 1}: unknown keys {sorted(extra)}")
            try:
                variants.append(Variant.from_record(v))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{where}, variant {j + 1}: needs 'name' and a numeric 'share' ({exc})"
                ) from exc
        placements = t.get("placements", [])
        if not isinstance(placements, list) or not all(isinstance(p, str) for p in placements):
            raise DataError(f"{where}: 'placements' must be a list of strings")
        out.append(
            Experiment(
                name=t["name"],
                variants=tuple(variants),
                placements=tuple(placements),
                salt=str(t.get("salt", "")),
            )
        )
    return out


def experiment_message(e: Experiment) -> pb.Experiment:
    """The wire form of ``e`` (what SetExperiments takes and ListExperiments gives)."""
    return pb.Experiment(
        name=e.name,
        placements=e.placements,
        salt=e.salt,
        variants=[
            pb.Variant(
                name=v.name,
                share=v.share,
                model_version=v.model or "",
                non_personalized=v.non_personalized,
                without_rules=not v.rules,
                rotate_after=v.rotate_after,
                trending_weight=v.trending_weight,
            )
            for v in e.variants
        ],
    )


# --- recommendation ids ---------------------------------------------------------------


@dataclass(frozen=True)
class RecommendationId:
    """What a recommendation id says (see the module docstring)."""

    model_version: str
    experiment: str
    """Empty outside experiments."""
    variant: str
    issued_at: int
    """Unix seconds; 0 for an id of an older server (not attributable)."""
    owner: str
    """8 hex digits of the digest of the shopper it was issued to ("" if older)."""

    def owned_by(self, *ids: str) -> bool:
        """Whether one of ``ids`` (user or session ids, empty ones ignored) is the owner."""
        return bool(self.owner) and any(i and owner_digest(i) == self.owner for i in ids)


def owner_digest(unit: str) -> str:
    """8 hex digits naming the shopper ``unit`` in recommendation ids."""
    return hashlib.blake2b(unit.encode(), digest_size=4).hexdigest()


def recommendation_id(
    model_version: str, experiment: str, variant: str, issued_at: int, owner: str, nonce: int
) -> str:
    """The id of one answer; ``owner``: the user or session id it was issued to (may be
    empty), ``nonce``: 64 random bits."""
    digest = owner_digest(owner) if owner else "00000000"
    return f"{model_version}.{experiment}.{variant}.{issued_at:x}.{digest}{nonce:016x}"


def parse_recommendation_id(text: str) -> RecommendationId | None:
    """What ``text`` says, or None when it is no recommendation id of this server. An
    id of an older server (``<model>.<32 hex>``) gives its model and nothing else."""
    parts = text.rsplit(".", 4)
    if len(parts) == 5:
        version, experiment, variant, issued, tail = parts
        if (
            version
            and _ISSUED_RE.fullmatch(issued)
            and _TAIL_RE.fullmatch(tail)
            and (not experiment or NAME_RE.fullmatch(experiment))
            and (not variant or NAME_RE.fullmatch(variant))
        ):
            owner = "" if tail[:8] == "00000000" else tail[:8]
            return RecommendationId(version, experiment, variant, int(issued, 16), owner)
    version, dot, tail = text.rpartition(".")
    if dot and version and len(tail) == 32:
        return RecommendationId(version, "", "", 0, "")
    return None
