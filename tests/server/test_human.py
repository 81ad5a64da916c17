"""Human evaluation: blind pairs, one vote each, win rates with Wilson intervals, and the report section."""

from __future__ import annotations

import json

import pytest
from serverkit import bearer

from memlm.eval.human import VoteStore, mechanism_of, summarise, wilson, write_human_report
from memlm.eval.report import write_report


def test_comparisons_are_blind_voted_once_and_summarised(keyed_client, keys):
    alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
    keyed_client.post("/v1/memories", headers=alice, json={"messages": "My dog is called Biscuit."})
    seen = set()
    for round_ in range(6):
        created = keyed_client.post("/v1/eval/comparisons", headers=alice,
                                    json={"prompt": "What is my dog's name?", "max_tokens": 4})
        assert created.status_code == 200, created.text
        comparison = created.json()
        assert set(comparison) == {"id", "prompt", "answers"} and set(comparison["answers"]) == {"A", "B"}
        assert "tiny-llama" not in json.dumps(comparison)  # nothing says which contender is which
        assert keyed_client.post(f"/v1/eval/comparisons/{comparison['id']}/vote", headers=bob,
                                 json={"choice": "A"}).status_code == 404  # not bob's comparison
        choice = ["A", "B", "tie"][round_ % 3]
        voted = keyed_client.post(f"/v1/eval/comparisons/{comparison['id']}/vote", headers=alice,
                                  json={"choice": choice})
        assert voted.status_code == 200, voted.text
        result = voted.json()
        assert set(result["contenders"].values()) == {"tiny-llama", "tiny-llama+bank+recurrent"}
        assert result["winner"] == ("tie" if choice == "tie" else result["contenders"][choice])
        seen.add(result["contenders"]["A"])
        again = keyed_client.post(f"/v1/eval/comparisons/{comparison['id']}/vote", headers=alice,
                                  json={"choice": "B"})
        assert again.status_code == 409 and "already voted" in again.json()["error"]["message"]
    summary = keyed_client.get("/v1/eval/summary", headers=bob).json()
    assert summary["votes"] == 6 and len(summary["pairs"]) == 1
    rows = {row["contender"]: row for row in summary["contenders"]}
    assert sum(r["wins"] for r in rows.values()) == 4 and all(r["ties"] == 2 and r["n"] == 6 for r in rows.values())
    assert all(r["ci_low"] <= r["win_rate"] <= r["ci_high"] for r in rows.values())
    assert sum(r["win_rate"] for r in rows.values()) == pytest.approx(1.0)
    # the memories were only read: no new facts from the comparisons
    assert len(keyed_client.get("/v1/memories", headers=alice).json()["results"]) == 1
    bad = [({"prompt": ""}, 422), ({"prompt": "x", "contenders": ["tiny-llama", "tiny-llama"]}, 400),
           ({"prompt": "x", "contenders": ["tiny-llama", "gpt-4"]}, 404), ({"prompt": "x", "contenders": ["a"]}, 422),
           ({"prompt": "x", "max_tokens": 5000}, 400)]
    for body, status in bad:
        assert keyed_client.post("/v1/eval/comparisons", headers=alice, json=body).status_code == status, body
    assert keyed_client.post("/v1/eval/comparisons/cmp-x/vote", headers=alice, json={"choice": "C"}).status_code == 422


def test_wilson_interval():
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # the textbook values for 8/10
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(0, 5)
    assert low == 0.0 and 0 < high < 0.5
    assert mechanism_of("SmolLM2-135M-Instruct+bank+recurrent") == "bank+recurrent"
    assert mechanism_of("SmolLM2-135M-Instruct") == "none"


def test_votes_join_the_evaluation_report(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    for index, choice in enumerate(["A", "A", "B", "tie", "A"]):
        comparison = store.add("ada", f"prompt {index}", "m+bank", "m", "yes", "no")
        store.vote(comparison.id, "ada", choice)
    store.add("ada", "not voted", "m+bank", "m", "x", "y")
    summary = summarise(store.votes())
    bank = next(row for row in summary["contenders"] if row["mechanism"] == "bank")
    assert (bank["n"], bank["wins"], bank["ties"], bank["losses"]) == (5, 3, 1, 1)
    assert bank["win_rate"] == pytest.approx(0.7)

    report = tmp_path / "report"
    write_report([{"task": "babilong/qa1", "mechanism": "none", "length": 0, "metric": "accuracy", "value": 0.5},
                  {"task": "babilong/qa1", "mechanism": "bank", "length": 0, "metric": "accuracy", "value": 0.7}],
                 report, title="Quick", command="memlm eval --suite quick")
    written = write_human_report(report, store)
    assert {"results.json", "results.md", "human_eval.png"} <= set(written)
    saved = json.loads((report / "results.json").read_text())
    assert saved["title"] == "Quick" and len(saved["records"]) == 4  # the two results kept, two win rates added
    human = [r for r in saved["records"] if r["task"] == "human/pairwise"]
    assert {r["mechanism"]: round(r["value"], 2) for r in human} == {"bank": 0.7, "none": 0.3}
    assert all(r["ci_low"] < r["value"] < r["ci_high"] for r in human)
    markdown = (report / "results.md").read_text()
    assert "## Human evaluation" in markdown and "| bank | 5 | 3 | 1 | 1 | 70% [" in markdown
    assert markdown.count("## Human evaluation") == 1
    write_human_report(report, store)  # again: replaced, not doubled
    assert (report / "results.md").read_text().count("## Human evaluation") == 1
    assert len(json.loads((report / "results.json").read_text())["records"]) == 4
    assert (report / "human_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store.close()

