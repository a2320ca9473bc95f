"""Merchandising rules from a TOML file: what ``recsvc rules load FILE`` sends.

One ``[[rule]]`` table per rule::

    [[rule]]
    id = "summer-garden"                 # required, unique in the file
    action = "boost"                     # boost | bury | pin
    categories = ["garden"]              # the items: categories and/or attributes ...
    attributes = { brand = ["acme"], price = { min = 10, max = 50 } }
    weight = 2.0                         # boost: > 1; bury: in (0, 1)
    placements = ["home", "pdp"]         # optional; none: every placement
    starts_at = 2026-06-01T00:00:00Z     # optional window (TOML dates, UTC if no offset)
    ends_at = 2026-09-01T00:00:00Z

    [[rule]]
    id = "hero"
    action = "pin"
    items = ["sku-1", "sku-2"]           # ... or item ids
    position = 1                         # pin: where the first goes, 1 = first

An attribute is a list of strings (equal to one of them) or a table with ``min`` and/or
``max`` (a numeric attribute in the range). The file only shapes the messages; the
server checks every rule and names each bad field (``rules[2].weight``) before any is
applied.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any, Final

from recsvc.errors import DataError
from recsvc.v1 import recommender_pb2 as pb

__all__ = ["read_rules", "read_toml"]

_KEYS: Final = frozenset(
    {
        "id", "action", "items", "categories", "attributes", "weight", "position",
        "placements", "starts_at", "ends_at",
    }
)  # fmt: skip
_ACTIONS: Final = {
    "boost": pb.RULE_ACTION_BOOST,
    "bury": pb.RULE_ACTION_BURY,
    "pin": pb.RULE_ACTION_PIN,
}


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document at ``path`` (a ``what`` file); DataError naming the file when
    it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a TOML file: {exc}") from exc


def read_rules(path: Path) -> list[pb.Rule]:
    """The rules of the TOML file at ``path``, in file order. DataError naming the file,
    the rule and the key for anything that is not a rule."""
    doc = read_toml(path, "rules")
    extra = sorted(set(doc) - {"rule"})
    if extra:
        raise DataError(f"{path}: unknown top-level key {extra[0]!r}; rules are [[rule]] tables")
    tables = doc.get("rule", [])
    if not isinstance(tables, list):
        raise DataError(f"{path}: 'rule' must be [[rule]] tables")
    rules = []
    ids: set[str] = set()
    for n, table in enumerate(tables, 1):
        where = f"{path}: rule {n}"
        if not isinstance(table, dict):
            raise DataError(f"{where}: not a table")
        if isinstance(table.get("id"), str):
            where += f" ({table['id']})"
        rule = _rule(table, where)
        if rule.rule_id in ids:
            raise DataError(f"{where}: id {rule.rule_id!r} appears twice in the file")
        ids.add(rule.rule_id)
        rules.append(rule)
    return rules


def _rule(table: dict[str, Any], where: str) -> pb.Rule:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    rule_id = _typed(table, "id", str, where, required=True)
    action = _typed(table, "action", str, where, required=True)
    if action not in _ACTIONS:
        raise DataError(f"{where}: action must be one of {', '.join(_ACTIONS)}, not {action!r}")
    rule = pb.Rule(
        rule_id=rule_id,
        action=_ACTIONS[action],
        item_ids=_strings(table, "items", where),
        categories=_strings(table, "categories", where),
        placements=_strings(table, "placements", where),
    )
    weight = table.get("weight")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise DataError(f"{where}: weight must be a number")
        rule.weight = float(weight)
    position = table.get("position")
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int):
            raise DataError(f"{where}: position must be a whole number")
        if not 0 <= position < 2**31:
            raise DataError(f"{where}: position {position} is out of range")
        rule.position = position
    attributes = _typed(table, "attributes", dict, where)
    for name, value in (attributes or {}).items():
        rule.attributes.append(_attribute(str(name), value, f"{where}: attributes.{name}"))
    for key in ("starts_at", "ends_at"):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, dt.datetime):
            raise DataError(f"{where}: {key} must be a TOML date-time (2026-06-01T00:00:00Z)")
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        getattr(rule, key).FromDatetime(value.astimezone(dt.UTC).replace(tzinfo=None))
    return rule


def _attribute(name: str, value: Any, where: str) -> pb.AttributeFilter:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return pb.AttributeFilter(name=name, values=pb.StringValues(values=value))
    if isinstance(value, dict) and value and set(value) <= {"min", "max"}:
        bounds = pb.NumberRange()
        for key, bound in value.items():
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise DataError(f"{where}.{key} must be a number")
            setattr(bounds, key, float(bound))
        return pb.AttributeFilter(name=name, range=bounds)
    raise DataError(f"{where}: a list of strings, or a table with min and/or max")


def _typed(
    table: dict[str, Any], key: str, kind: type, where: str, *, required: bool = False
) -> Any:
    value = table.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: {key} is required")
        return None
    if not isinstance(value, kind):
        raise DataError(f"{where}: {key} must be a {'string' if kind is str else 'table'}")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key} must be a list of strings")
    return value
