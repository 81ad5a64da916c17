"""The fact records' own checks (`memlm.facts.records`): what a fact text, id, time and metadata may be,
the duplicate key that files store, and when a fact counts as live."""

from __future__ import annotations

import hashlib

import pytest

from memlm.errors import ConfigError
from memlm.facts.records import (
    MAX_FACT_CHARS,
    Fact,
    FactNotFoundError,
    UnknownUserError,
    _check_metadata,
    _check_time,
    _metadata_json,
    check_id,
    check_text,
    text_key,
)


def test_lookup_errors_read_as_their_message_not_as_a_quoted_key():
    assert str(UnknownUserError("no memories were ever stored for user 'ada'")) == (
        "no memories were ever stored for user 'ada'")
    assert str(FactNotFoundError("no fact with id 3")) == "no fact with id 3"
    assert str(UnknownUserError()) == "" and str(FactNotFoundError()) == ""


def test_a_fact_is_live_while_active_and_before_its_expiry():
    fact = Fact(1, "ada", None, "Ada has a cat.", 1.0, 0.0, 0.0, 0, None, None, None, expires_at=100.0)
    assert fact.live(99.0) and not fact.expired(99.0)
    assert fact.expired(100.0) and not fact.live(100.0)  # expiry is inclusive
    fact.status = "superseded"
    assert not fact.live(50.0)


def test_fact_texts_are_checked_and_named():
    assert check_text("  Ada has a cat.  ") == "Ada has a cat."
    assert len(check_text("x" * MAX_FACT_CHARS)) == MAX_FACT_CHARS
    with pytest.raises(ConfigError, match=r"^fact is empty$"):
        check_text("   ")
    with pytest.raises(ConfigError, match=r"^fact must be text \(str\), got bytes; decode it first$"):
        check_text(b"Ada")
    with pytest.raises(ConfigError, match=r"^fact must be text \(str\), got int$"):
        check_text(3)
    with pytest.raises(ConfigError, match=r"^fact is too long \(20,001 characters; limit 20,000\)$"):
        check_text("x" * (MAX_FACT_CHARS + 1))
    with pytest.raises(ConfigError, match=r"^fact is not valid Unicode \(surrogates not allowed\)$"):
        check_text("Ada \ud800")


def test_the_duplicate_key_ignores_case_spacing_and_final_punctuation_and_stays_the_same_across_versions():
    assert text_key("Ada  LIVES in Ghent!") == text_key("ada lives in ghent") == hashlib.sha256(
        b"ada lives in ghent").hexdigest()  # stored in files: a changed key would miss old duplicates


@pytest.mark.parametrize(("given", "expected"), [
    (12, 12), ("12", 12), (" 12 ", 12), (-200, -200), (-2**63, -2**63), (2**63 - 1, 2**63 - 1)])
def test_fact_ids_are_integers_or_ascii_digit_strings_within_64_bits(given, expected):
    assert check_id(given) == expected


@pytest.mark.parametrize(("given", "message"), [
    (True, r"^a fact id must be an integer, got bool$"), (1.5, r"^a fact id must be an integer, got float$"),
    ("abc", r"^a fact id must be an integer, got 'abc'$"), ("\u00b2", "got '²'"), ("\u0663", "got '٣'"),
    (2**63, r"^a fact id must fit in 64 bits, got 9223372036854775808$"), (-2**63 - 1, "fit in 64 bits"),
])
def test_other_fact_ids_are_refused_by_name(given, message):
    with pytest.raises(ConfigError, match=message):
        check_id(given)


def test_times_are_finite_numbers_and_metadata_a_json_dict_with_string_keys():
    assert _check_time(None, "expires_at") is None and _check_time(5, "expires_at") == 5.0
    with pytest.raises(ConfigError, match=r"^expires_at must be a unix time"):
        _check_time(True, "expires_at")
    assert _metadata_json({"b": 1, "a": 2}) == '{"a": 2, "b": 1}' and _metadata_json({}) is None
    for bad, message in ((["a"], "got list"), ({1: "a"}, "got dict"), ({"a": object()}, "JSON-serialisable"),
                         ({"a": float("nan")}, "JSON-serialisable")):
        with pytest.raises(ConfigError, match=rf"^metadata must be .*{message}"):
            _check_metadata(bad)
