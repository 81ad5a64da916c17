"""`memlm eval --ray`: the pairs fanned out over a (local) Ray cluster give the serial run's results."""

from __future__ import annotations

import json

import pytest

import memlm
from memlm.eval.harness import run_suite

ray = pytest.importorskip("ray", reason="the Ray tests need `pip install memlm[ray]`")

TINY_SUITE = dict(babilong_tasks=("qa1",), lengths=(0, 400), long_lengths=(), samples=1, recall_users=1,
                  recall_sessions=2, recall_filler_turns=1, facts=8, fact_questions=2, max_new_tokens=4,
                  answer_tokens=4)
CONTENDERS = ["none", "full", "bank"]
FAMILIES = ["babilong", "recall"]


def _pairs(folder):
    """Every cached pair's records, without the wall time (the only field allowed to differ)."""
    pairs = {}
    for path in sorted((folder / "pairs").glob("*.json")):
        saved = json.loads(path.read_text())
        pairs[path.name] = [{k: v for k, v in record.items() if k != "seconds"} for record in saved["records"]]
    return pairs


def test_eval_on_a_local_ray_cluster_equals_the_serial_run(tiny_folder, tmp_path):
    model, tokenizer = memlm.load_backbone(tiny_folder)
    serial, fanned = tmp_path / "serial", tmp_path / "ray"
    run_suite(model, tokenizer, "quick", CONTENDERS, serial, window=160, backbone_name="tiny", families=FAMILIES,
              progress=False, report=False, **TINY_SUITE)
    run_suite(model, tokenizer, "quick", CONTENDERS, fanned, window=160, backbone_name="tiny", families=FAMILIES,
              progress=False, report=False, ray="local", ray_backbone=str(tiny_folder), **TINY_SUITE)
    expected = _pairs(serial)
    assert len(expected) >= len(CONTENDERS) * 2 and all(expected.values())
    assert _pairs(fanned) == expected
