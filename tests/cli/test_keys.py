"""`memlm keys`: create prints the key once, list never shows keys, revoke by id or user."""

from __future__ import annotations

import json

from memlm.server.keys import KeyStore, keys_path


def test_keys_commands_create_list_revoke(run, tmp_path):
    home = tmp_path / "home"
    created = run("--home", home, "keys", "create", "--user", "alice", "--label", "ci")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("mlm-") and "store it now" in created.stderr
    with KeyStore(keys_path(home)) as store:
        assert store.verify(key).user == "alice"
    listed = run("--home", home, "keys", "list", "--json")
    assert listed.exit_code == 0 and key not in listed.output
    (entry,) = json.loads(listed.stdout)
    assert (entry["user"], entry["role"], entry["label"]) == ("alice", "user", "ci")
    admin = run("--home", home, "keys", "create", "--user", "ops", "--admin")
    assert admin.exit_code == 0
    assert json.loads(run("--home", home, "keys", "list", "--json").stdout)[1]["role"] == "admin"
    revoked = run("--home", home, "keys", "revoke", entry["id"])
    assert revoked.exit_code == 0 and "revoked 1 key(s)" in revoked.output
    assert run("--home", home, "keys", "revoke", entry["id"]).exit_code == 1  # already revoked
    assert run("--home", home, "keys", "revoke", "--user", "ops").exit_code == 0
    assert run("--home", home, "keys", "list", "--json").stdout.strip() == "[]"
    assert len(json.loads(run("--home", home, "keys", "list", "--json", "--all").stdout)) == 2
    bad = run("--home", home, "keys", "create", "--user", "../x")
    assert bad.exit_code == 2 and "invalid user id" in bad.output
