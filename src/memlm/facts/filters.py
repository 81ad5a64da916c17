"""mem0-style filters over facts: `{"category": "work", "priority": {"gte": 2}, "created_at": {"lt": "2026-01-01"}}`.

A filter is a dict of conditions that must all hold, with `AND` / `OR` / `NOT` (each a list of
filters) to combine them. A condition is `field: value` (equality) or `field: {operator: value}`:

| operator | meaning |
|---|---|
| `eq`, `ne` | equal, not equal |
| `in`, `nin` | in / not in a list |
| `gt`, `gte`, `lt`, `lte` | ordered comparison (numbers, strings, times) |
| `contains`, `icontains` | substring (case-sensitive / not) |
| `*` (as the value) | the field is present |

Fields: `user_id`, `agent_id`, `run_id`, `memory` (the text), the times `created_at`, `updated_at`,
`expires_at` (ISO 8601 strings, dates, `datetime`s or unix seconds), and any other name is a key of
the fact's `metadata` (also spelt `{"metadata": {"key": condition}}`). `category` and `categories`
are what the caller put in the metadata under that name, as in mem0 (`metadata={"category":
"movies"}`); a fact whose metadata has no such key is matched on memlm's own category (the one given
to `add(category=...)`, else the rules' guess). On a list value (`"categories": ["travel", "food"]`)
equality and `contains` / `icontains` test membership. A fact lacking the field fails every condition but
`ne` / `nin`. A malformed filter (unknown operator, `in` without a list, a time that is not one)
raises `ConfigError` before anything is searched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from memlm.errors import ConfigError
from memlm.facts.store import Fact

OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains", "icontains")
LOGICAL = ("AND", "OR", "NOT")
TIME_FIELDS = {"created_at": "created", "updated_at": "updated", "expires_at": "expires_at"}
_MISSING = object()


def to_unix_time(value: Any, what: str = "time") -> float:
    """Unix seconds from a number, a `datetime` / `date`, or an ISO 8601 string (naive means UTC)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what} {value!r} is not an ISO 8601 date or time") from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    raise ConfigError(f"{what} must be a unix time, a date or an ISO 8601 string, got {type(value).__name__}")


def iso_time(seconds: float | None) -> str | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()


def _field(fact: Fact, name: str) -> Any:
    if name in TIME_FIELDS:
        value = getattr(fact, TIME_FIELDS[name])
        return _MISSING if value is None else value
    if name in ("category", "categories"):
        metadata = fact.metadata or {}
        if name in metadata:  # the caller's own category, as mem0 reads it
            return metadata[name]
        return _MISSING if fact.category is None else fact.category
    if name == "memory":
        return fact.text
    if name in ("user_id", "agent_id", "run_id"):
        value = fact.user if name == "user_id" else getattr(fact, name)
        return _MISSING if value is None else value
    return (fact.metadata or {}).get(name, _MISSING)


def _compare(operator: str, actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return operator in ("ne", "nin")
    if operator == "eq":
        return actual == expected or (isinstance(actual, list) and expected in actual)
    if operator == "ne":
        return not _compare("eq", actual, expected)
    if operator == "in":
        return any(_compare("eq", actual, item) for item in expected)
    if operator == "nin":
        return not _compare("in", actual, expected)
    if operator in ("contains", "icontains") and isinstance(actual, list):  # a list of categories or tags
        return any(_compare(operator, item, expected) or _compare("eq", item, expected) for item in actual)
    if operator in ("contains", "icontains"):
        if not isinstance(actual, str):
            return False
        return expected in actual if operator == "contains" else expected.casefold() in actual.casefold()
    try:
        return {"gt": actual > expected, "gte": actual >= expected, "lt": actual < expected,
                "lte": actual <= expected}[operator]
    except TypeError:  # a string against a number: no match, as in mem0
        return False


def _condition(name: str, spec: Any) -> Callable[[Fact], bool]:
    if spec == "*":
        return lambda fact: _field(fact, name) is not _MISSING
    operations = spec if isinstance(spec, dict) else {"eq": spec}
    if not operations:
        raise ConfigError(f"filter on {name!r} has no operator")
    checks = []
    for operator, expected in operations.items():
        if operator not in OPERATORS:
            raise ConfigError(f"unknown filter operator {operator!r} on {name!r}; use one of {list(OPERATORS)}")
        if operator in ("in", "nin") and not isinstance(expected, (list, tuple, set)):
            raise ConfigError(f"filter {name!r}: {operator!r} needs a list, got {type(expected).__name__}")
        if operator in ("contains", "icontains") and not isinstance(expected, str):
            raise ConfigError(f"filter {name!r}: {operator!r} needs a string, got {type(expected).__name__}")
        if isinstance(expected, dict):
            raise ConfigError(f"filter {name!r}: the value of {operator!r} cannot be a dict")
        if name in TIME_FIELDS:
            expected = ([to_unix_time(v, name) for v in expected] if operator in ("in", "nin")
                        else to_unix_time(expected, name))
        checks.append((operator, expected))
    return lambda fact: all(_compare(op, _field(fact, name), value) for op, value in checks)


def compile_filters(filters: dict[str, Any] | None, skip: tuple[str, ...] = ()) -> Callable[[Fact], bool] | None:
    """A predicate over facts for `filters` (None: no filter). Top-level keys in `skip` are left out
    (the API resolves `user_id` itself: it picks whose facts are searched, not which of them)."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise ConfigError(f"filters must be a dict, got {type(filters).__name__}")
    parts: list[Callable[[Fact], bool]] = []
    for key, value in filters.items():
        if not isinstance(key, str):
            raise ConfigError(f"filter keys must be strings, got {key!r}")
        if key in skip:
            continue
        if key == "metadata":  # {"metadata": {"key": condition}}: the same as {"key": condition}
            if not isinstance(value, dict):
                raise ConfigError("filter 'metadata' needs a dict of metadata keys and conditions")
            inner = compile_filters(value)
            if inner is not None:
                parts.append(inner)
            continue
        if key in LOGICAL:
            if key == "NOT" and isinstance(value, dict):  # mem0 writes both {"NOT": {...}} and {"NOT": [...]}
                value = [value]
            # An empty list is the identity of its operator: AND of nothing holds, OR of nothing does not.
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise ConfigError(f"filter {key!r} needs a list of filter dicts")
            children = [compile_filters(item) or (lambda fact: True) for item in value]
            if key == "AND":
                parts.append(lambda fact, c=children: all(child(fact) for child in c))
            elif key == "OR":
                parts.append(lambda fact, c=children: any(child(fact) for child in c))
            else:
                parts.append(lambda fact, c=children: not any(child(fact) for child in c))
        else:
            parts.append(_condition(key, value))
    if not parts:
        return None
    return lambda fact: all(part(fact) for part in parts)
