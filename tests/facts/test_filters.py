"""mem0-style filters (`memlm.facts.filters`) on facts built by hand: every operator at its boundary,
missing fields, the time fields and their conversions, the logical combinators and every refusal."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from memlm.errors import ConfigError
from memlm.facts.filters import compile_filters, iso_time, to_unix_time

DAY = 86_400.0


def fact(**fields) -> SimpleNamespace:
    values = {"user": "ada", "agent_id": None, "run_id": None, "category": None, "text": "I like Green tea",
              "metadata": None, "created": 10 * DAY, "updated": 11 * DAY, "expires_at": None}
    return SimpleNamespace(**{**values, **fields})


def matches(filters, item) -> bool:
    return compile_filters(filters)(item)


PLAIN = fact(metadata={"priority": 2, "topic": "travel", "tags": ["a", "b"], "name": "Bob"}, category="work",
             agent_id="agent", run_id="r1")


@pytest.mark.parametrize("filters, expected", [
    ({"priority": 2}, True), ({"priority": 3}, False), ({"priority": {"eq": 2}}, True),
    ({"priority": {"ne": 2}}, False), ({"priority": {"ne": 3}}, True),
    ({"priority": {"gt": 2}}, False), ({"priority": {"gt": 1}}, True),
    ({"priority": {"gte": 2}}, True), ({"priority": {"gte": 3}}, False),
    ({"priority": {"lt": 2}}, False), ({"priority": {"lt": 3}}, True),
    ({"priority": {"lte": 2}}, True), ({"priority": {"lte": 1}}, False),
    ({"priority": {"gt": 1, "lt": 3}}, True), ({"priority": {"gt": 1, "lt": 2}}, False),
    ({"priority": {"gt": "x"}}, False),  # a number against a string: no match, no error
    ({"topic": {"in": ["food", "travel"]}}, True), ({"topic": {"in": ["food"]}}, False), ({"topic": {"in": []}}, False),
    ({"topic": {"nin": ["food"]}}, True), ({"topic": {"nin": ["travel"]}}, False),
    ({"tags": "a"}, True), ({"tags": "c"}, False), ({"tags": {"in": ["c", "b"]}}, True),  # a list holds a value
    ({"name": {"contains": "Bo"}}, True), ({"name": {"contains": "bo"}}, False),
    ({"name": {"icontains": "bO"}}, True), ({"name": {"icontains": "x"}}, False),
    ({"priority": {"contains": "2"}}, False), ({"priority": {"icontains": "2"}}, False),  # not a string
    ({"memory": {"contains": "Green"}}, True), ({"memory": {"contains": "green"}}, False),
    ({"memory": {"icontains": "GREEN TEA"}}, True), ({"memory": "I like Green tea"}, True),
    ({"category": "work"}, True), ({"categories": "work"}, True), ({"category": "home"}, False),
    ({"user_id": "ada"}, True), ({"user_id": "bob"}, False), ({"agent_id": "agent"}, True), ({"run_id": "r2"}, False),
    ({"run_id": "r1"}, True), ({"run_id": "*"}, True),
    ({"topic": "*"}, True), ({"missing": "*"}, False), ({"expires_at": "*"}, False), ({"created_at": "*"}, True),
])
def test_each_operator_at_its_boundary(filters, expected):
    assert matches(filters, PLAIN) is expected


@pytest.mark.parametrize("operator, expected", [
    ("eq", False), ("ne", True), ("in", False), ("nin", True), ("gt", False), ("gte", False), ("lt", False),
    ("lte", False), ("contains", False), ("icontains", False)])
def test_a_missing_field_fails_every_condition_but_ne_and_nin(operator, expected):
    value = ["x"] if operator in ("in", "nin") else "x"
    bare = fact()  # no metadata, category, agent, run or expiry
    for name in ("topic", "category", "agent_id", "run_id", "expires_at"):
        if name == "expires_at" and operator in ("contains", "icontains"):
            continue
        spec = {operator: value}
        if name == "expires_at":
            spec = {operator: [5.0] if operator in ("in", "nin") else 5.0}
        assert matches({name: spec}, bare) is expected, (name, operator)
    assert matches({"user_id": {operator: value}}, fact(user=None)) is expected


@pytest.mark.parametrize("name", ["category", "categories", "agent_id", "run_id", "expires_at", "topic"])
def test_a_field_that_is_none_is_absent(name):
    assert not matches({name: "*"}, fact(metadata={"other": 1}))
    assert not matches({"user_id": "*"}, fact(user=None)) and matches({"user_id": "*"}, fact())


def test_time_fields_compare_as_unix_seconds_from_any_spelling():
    item = fact(created=to_unix_time("2026-03-15T12:00:00Z"), updated=to_unix_time("2026-03-16"), expires_at=5.0)
    assert matches({"created_at": {"gte": "2026-03-15"}}, item)
    assert not matches({"created_at": {"lt": "2026-03-15"}}, item)
    assert matches({"created_at": {"gt": dt.date(2026, 3, 15), "lt": dt.datetime(2026, 3, 15, 13)}}, item)
    assert matches({"created_at": {"eq": dt.datetime(2026, 3, 15, 14, tzinfo=dt.timezone(dt.timedelta(hours=2)))}},
                   item)
    assert matches({"updated_at": {"lte": "2026-03-16T00:00:00+00:00"}}, item)
    assert matches({"expires_at": {"in": [5, 6]}}, item) and not matches({"expires_at": {"nin": [5.0]}}, item)
    assert matches({"created_at": {"in": ["2026-03-15T12:00:00Z"]}}, item)


def test_a_naive_time_is_utc_whatever_the_local_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert to_unix_time(dt.datetime(1970, 1, 2)) == DAY and to_unix_time("1970-01-02T00:00:00") == DAY
    finally:
        monkeypatch.undo()
        time.tzset()


def test_to_unix_time_and_iso_time():
    assert to_unix_time(5) == 5.0 and isinstance(to_unix_time(5), float) and to_unix_time(2.5) == 2.5
    assert to_unix_time("1970-01-02") == DAY and to_unix_time(" 1970-01-02T00:00:00Z ") == DAY
    assert to_unix_time(dt.date(1970, 1, 2)) == DAY and to_unix_time(dt.datetime(1970, 1, 2)) == DAY  # naive: UTC
    assert to_unix_time("1970-01-02T01:00:00+01:00") == DAY
    with pytest.raises(ConfigError, match="created must be a time"):
        to_unix_time(True, "created")
    with pytest.raises(ConfigError, match="^time must be a time"):
        to_unix_time(False)
    with pytest.raises(ConfigError, match="'soon' is not an ISO 8601"):
        to_unix_time("soon")
    with pytest.raises(ConfigError, match="got list"):
        to_unix_time([1])
    assert iso_time(None) is None and iso_time(DAY) == "1970-01-02T00:00:00+00:00"


def test_logical_combinators():
    item = fact(metadata={"p": 2, "t": "x"})
    assert matches({"AND": [{"p": 2}, {"t": "x"}]}, item) and not matches({"AND": [{"p": 2}, {"t": "y"}]}, item)
    assert matches({"OR": [{"p": 3}, {"t": "x"}]}, item) and not matches({"OR": [{"p": 3}, {"t": "y"}]}, item)
    assert matches({"NOT": [{"p": 3}, {"t": "y"}]}, item) and not matches({"NOT": [{"p": 3}, {"t": "x"}]}, item)
    assert matches({"AND": [{}]}, item) and not matches({"NOT": [{}]}, item)  # an empty filter matches all
    assert matches({"p": 2, "OR": [{"t": "x"}]}, item) and not matches({"p": 3, "OR": [{"t": "x"}]}, item)
    assert matches({"OR": []}, item) is False and matches({"AND": []}, item) is True


def test_no_filter_and_skipped_keys_give_none():
    assert compile_filters(None) is None and compile_filters({}) is None
    assert compile_filters({"user_id": "ada"}, skip=("user_id",)) is None
    only = compile_filters({"user_id": "bob", "p": 1}, skip=("user_id",))
    assert only(fact(metadata={"p": 1})) and not only(fact(metadata={"p": 2}))


@pytest.mark.parametrize("filters, message", [
    (["p"], "filters must be a dict, got list"), ({1: "x"}, "filter keys must be strings, got 1"),
    ({"p": {}}, "filter on 'p' has no operator"), ({"p": {"between": 1}}, "unknown filter operator 'between' on 'p'"),
    ({"p": {"in": "x"}}, "filter 'p': 'in' needs a list, got str"), ({"p": {"nin": 3}}, "'nin' needs a list"),
    ({"p": {"contains": 3}}, "filter 'p': 'contains' needs a string, got int"), ({"p": {"icontains": None}}, "string"),
    ({"p": {"eq": {"a": 1}}}, "filter 'p': the value of 'eq' cannot be a dict"),
    ({"AND": {"p": 1}}, "filter 'AND' needs a list of filter dicts"), ({"OR": ["p"]}, "'OR' needs a list"),
    ({"NOT": [{"p": {"gt": []}}, 3]}, "'NOT' needs a list"),
    ({"created_at": {"gte": "last week"}}, "created_at 'last week' is not an ISO 8601"),
    ({"updated_at": {"in": ["never"]}}, "updated_at 'never'"),
])
def test_malformed_filters_are_config_errors_before_anything_runs(filters, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        compile_filters(filters)
