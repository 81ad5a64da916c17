"""Crash campaign, bounded: each writer is SIGKILLed at random moments; after every kill the store
opens, passes its consistency check and holds every acknowledged write (campaign.py explains how).
The full campaign is `python benchmarks/reliability.py` (docs/reliability.md)."""

from __future__ import annotations

import os

import pytest
from campaign import WRITERS, Zygote, crash_campaign, power_loss_campaign, read_acks

KILLS = int(os.environ.get("MEMLM_RELIABILITY_KILLS", "20"))
# `memlm serve` restarts in ~1 s after each kill (forked from a zygote that has loaded everything): fewer kills
SERVER_KILLS = int(os.environ.get("MEMLM_RELIABILITY_SERVER_KILLS", "8"))


@pytest.fixture(scope="module")
def zygote():
    zygote = Zygote()
    yield zygote
    zygote.close()


@pytest.mark.parametrize("writer", WRITERS)
def test_every_acknowledged_write_survives_kill_9(writer, tmp_path, zygote):
    kills = SERVER_KILLS if writer == "server" else KILLS
    report = crash_campaign(writer, tmp_path, kills, seed=17, zygote=zygote)
    assert report.kills == kills
    assert report.acked > 0, "no write was acknowledged before the kills: the campaign measured nothing"
    assert (report.corrupt, report.lost, report.phantom) == (0, 0, 0), report.examples


@pytest.mark.parametrize("writer", WRITERS)
def test_a_copy_taken_mid_write_opens(writer, tmp_path, zygote):
    result = power_loss_campaign(writer, tmp_path, 5, seed=3, zygote=zygote)
    assert result["unopenable"] == 0, result["examples"]



@pytest.mark.parametrize("tail, acked_ids, in_flight", [
    ('K [1]\nB [2]\nK [2]\nB [3', [1, 2], None),  # torn begin: the store call never began
    ('K [1]\nB [2]\nK [2', [1], [2]),  # torn ack: done, not acknowledged
    ('K [1]\nB [2]\n', [1], [2]),  # whole lines: nothing dropped
], ids=["torn-begin", "torn-ack", "whole-lines"])
def test_a_torn_last_acknowledgement_line_is_dropped(tail, acked_ids, in_flight, tmp_path):
    # A kill inside the write of a long line leaves it without its newline (seen in CI with the
    # transcript writer, whose lines run to kilobytes).
    acks = tmp_path / "acks"
    acks.write_text("B [1]\n" + tail)
    assert read_acks(acks) == ([[i] for i in acked_ids], in_flight)
