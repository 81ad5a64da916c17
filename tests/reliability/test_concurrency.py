"""Concurrency, bounded: 8 users on one store file for 3 s: 2 HTTP clients of a running `memlm serve`
on that file (each with its own API key), 3 processes with their own `Memory` and 3 threads sharing
one, doing mixed add / search / update / delete / get_all, checked against each user's model of its
own facts; then `delete_all` of one user must remove exactly that user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from campaign import concurrency_campaign, rest_of_output

USERS = int(os.environ.get("MEMLM_RELIABILITY_USERS", "8"))
SECONDS = float(os.environ.get("MEMLM_RELIABILITY_SECONDS", "3"))


def test_concurrent_users_lose_nothing_and_see_only_their_own_facts(tmp_path):
    server_clients = max(1, USERS // 4)
    report = concurrency_campaign(tmp_path / "facts.sqlite", USERS, SECONDS, seed=5, server_clients=server_clients)
    assert report["server_clients"] == server_clients and report["processes"] > 0 and report["threads"] > 0
    assert report["ops"] > 50 and report["ops_via_server"] > 10, report
    assert report["errors"] == 0, report["examples"]
    assert report["foreign_results"] == 0, report["examples"]
    assert (report["lost_writes"], report["phantom"]) == (0, 0), report
    assert report["delete_all_exact"], report


def test_a_user_process_that_finishes_before_its_ready_line_is_read_still_reports():
    # The campaign reads each process's "ready" line, then its result once it exits. A process can
    # finish before the parent reads "ready" (a loaded CI machine); readline then buffers the result
    # too, and the result must still come back (CI once lost it: IndexError on an empty output).
    child = subprocess.Popen([sys.executable, "-c", "print('ready'); print('{\"ops\": 3}')"],
                             stdout=subprocess.PIPE, text=True)
    child.wait()  # both lines are in the pipe before the first is read
    assert child.stdout.readline().strip() == "ready"
    assert rest_of_output(child, timeout=60).strip() == '{"ops": 3}'


def test_a_hung_user_process_is_killed_when_its_time_is_up():
    child = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    assert rest_of_output(child, timeout=1) == ""
    assert child.returncode == -signal.SIGKILL
