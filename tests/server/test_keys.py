"""API keys: made once, stored only as hashes, verified, revoked; and the `memlm keys` commands."""

from __future__ import annotations

import pytest

from memlm.errors import ConfigError
from memlm.server.keys import KeyStore


def test_a_key_verifies_as_its_user_and_only_its_hash_is_stored(tmp_path):
    path = tmp_path / "keys.sqlite"
    with KeyStore(path) as store:
        key = store.create("alice", label="laptop")
        admin = store.create("root", "admin")
        principal = store.verify(key)
        assert (principal.user, principal.role, principal.key_id) == ("alice", "user", key.split("-")[1])
        assert store.verify(admin).is_admin and not principal.is_admin
        listed = {info.user: info for info in store.list()}
        assert listed["alice"].label == "laptop" and listed["alice"].revoked is None
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    secret = key.split("-", 2)[2]  # mlm-<id>-<secret>; the secret (token_urlsafe) may itself hold '-'
    assert len(secret) >= 40
    assert secret.encode() not in raw and key.encode() not in raw  # neither the key nor its secret part
    assert (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("wrong", [None, "", "sk-whatever", "mlm-00000000-" + "A" * 43, "Bearer x"])
def test_anything_but_a_valid_key_is_refused(tmp_path, wrong):
    with KeyStore(tmp_path / "keys.sqlite") as store:
        key = store.create("alice")
        assert store.verify(wrong) is None
        tampered = key[:-1] + ("A" if key[-1] != "A" else "B")  # right id, wrong secret
        assert store.verify(tampered) is None


def test_revoking_by_id_or_user_stops_keys_at_once(tmp_path):
    with KeyStore(tmp_path / "keys.sqlite") as store:
        one, two, other = store.create("alice"), store.create("alice"), store.create("bob")
        assert store.revoke(key_id=one.split("-")[1]) == 1
        assert store.verify(one) is None and store.verify(two) is not None
        assert store.revoke(user="alice") == 1 and store.verify(two) is None
        assert store.verify(other).user == "bob" and store.active_count() == 1
        assert store.revoke(key_id=other) == 1  # the whole key works as its id too
        assert store.revoke(key_id="ffffffff") == 0
        with pytest.raises(ConfigError):
            store.revoke()


@pytest.mark.parametrize("user", ["../etc", "a/b", "", "x" * 200, ".hidden"])
def test_key_users_are_validated_names(tmp_path, user):
    with KeyStore(tmp_path / "keys.sqlite") as store, pytest.raises(ConfigError):
        store.create(user)
    with KeyStore(tmp_path / "keys.sqlite") as store, pytest.raises(ConfigError):
        store.create("alice", role="root")
