"""Concurrency, bounded: 8 users (4 threads sharing one `Memory`, 4 processes with their own) doing
mixed add / search / update / delete / get_all on one store file for 3 s, checked against each
user's model of its own facts; then `delete_all` of one user must remove exactly that user."""

from __future__ import annotations

import os

from campaign import concurrency_campaign

USERS = int(os.environ.get("MEMLM_RELIABILITY_USERS", "8"))
SECONDS = float(os.environ.get("MEMLM_RELIABILITY_SECONDS", "3"))


def test_concurrent_users_lose_nothing_and_see_only_their_own_facts(tmp_path):
    report = concurrency_campaign(tmp_path / "facts.sqlite", USERS, SECONDS, seed=5)
    assert report["ops"] > 100, report
    assert report["errors"] == 0, report["examples"]
    assert report["foreign_results"] == 0, report["examples"]
    assert (report["lost_writes"], report["phantom"]) == (0, 0), report
    assert report["delete_all_exact"], report
