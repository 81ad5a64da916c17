"""The evaluation harness on a tiny model: every pair runs, the report builds, runs resume from the
cache, and a newly registered mechanism shows up without any change to the harness."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from tiny import tiny_model

import memlm
from memlm.eval.contenders import Contender
from memlm.eval.harness import Harness, Suite, run_suite
from memlm.eval.tasks.babilong import BabilongTask
from memlm.memories.base import Memory

TINY_SUITE = dict(babilong_tasks=("qa1",), unseen_babilong_tasks=("qa1",),
                  lengths=(0, 400), long_lengths=(), samples=1, recall_users=1,
                  recall_sessions=2, recall_filler_turns=1, ppl_corpus="pg-essays", ppl_tokens=256, facts=8,
                  fact_questions=2, generation_samples=2, max_new_tokens=4, answer_tokens=4)


@dataclass
class DummyConfig(memlm.MemoryConfig):
    mechanism = "dummy"


class DummyMemory(Memory):
    """A memory that remembers nothing (checks the harness is generic over the registry)."""

    config_class = DummyConfig

    def attach(self, layout) -> None:
        pass


@pytest.fixture
def dummy_mechanism():
    memlm.register_memory(DummyMemory)
    yield "dummy"
    memlm.registry.unregister_memory("dummy")


def test_a_tiny_run_builds_the_report_and_a_new_mechanism_appears(tokenizer, tmp_path, dummy_mechanism):
    written = run_suite(tiny_model("llama"), tokenizer, "quick", ["none", "full", "rag", "bank", "dummy"], tmp_path,
                        window=160, backbone_name="tiny-llama", command="pytest", progress=False, **TINY_SUITE)
    results = json.loads(written["results.json"].read_text())
    records = results["records"]
    by_task = {(r["task"], r["mechanism"]) for r in records}
    for mechanism in ("none", "full", "rag", "bank", "dummy"):
        assert ("babilong/qa1", mechanism) in by_task
        assert ("babilong-unseen/qa1", mechanism) in by_task  # the unseen cast, side by side
        assert ("recall/multi-session", mechanism) in by_task
        assert ("continual/facts", mechanism) in by_task or mechanism == "full"
        assert ("generation/qa", mechanism) in by_task
    assert ("ppl/pg-essays", "rag") not in by_task and ("ppl/pg-essays", "dummy") in by_task
    # `full` is left out where the input exceeds the native window (512 positions); none never is.
    assert {r["length"] for r in records if r["task"] == "babilong/qa1" and r["mechanism"] == "none"} == {0, 400}
    assert {r["length"] for r in records if r["task"] == "babilong/qa1" and r["mechanism"] == "full"} == {0}
    # Each score is what the replies behind it say: accuracy = share of correct replies, per length.
    for name in ("none", "full", "bank"):
        pair = json.loads((tmp_path / "pairs" / f"babilong__qa1__{name}.json").read_text())
        for record in pair["records"]:
            replies = [d for d in pair["details"] if d["length"] == record["length"]]
            assert record["n"] == len(replies) == TINY_SUITE["samples"]
            assert record["value"] == sum(d["correct"] for d in replies) / len(replies)
        recall = json.loads((tmp_path / "pairs" / f"recall__multi-session__{name}.json").read_text())
        assert recall["records"][0]["value"] == (sum(d["recalled"] for d in recall["details"])
                                                 / len(recall["details"]))
    markdown = written["results.md"].read_text()
    assert "| dummy " in markdown and "| bank " in markdown and "pytest" in markdown
    assert "babilong-unseen" in markdown and "needle" not in markdown  # needle is opt-in
    assert written["accuracy_vs_length.png"].read_bytes().startswith(b"\x89PNG")
    assert written["perplexity.png"].stat().st_size > 1000


def test_finished_pairs_are_reused_and_changed_settings_rerun(tokenizer, tmp_path, monkeypatch):
    backbone = tiny_model("llama")
    suite = Suite("tiny", **TINY_SUITE)
    harness = Harness(backbone, tokenizer, suite, ["none"], tmp_path, window=160, families=["babilong"],
                      progress=False)
    first = harness.run()
    calls = []
    original = BabilongTask.run
    monkeypatch.setattr(BabilongTask, "run", lambda self, *a: calls.append(a) or original(self, *a))
    assert harness.run() == first and calls == []  # everything came from the cache
    suite = Suite("tiny", **{**TINY_SUITE, "samples": 2})
    Harness(backbone, tokenizer, suite, ["none"], tmp_path, window=160, families=["babilong"], progress=False).run()
    assert len(calls) == 1  # the changed suite setting invalidated the pair
    backbone.config.name_or_path = "/elsewhere/same-weights"
    Harness(backbone, tokenizer, suite, ["none"], tmp_path, window=160, families=["babilong"], progress=False).run()
    assert len(calls) == 1  # the same weights loaded from another path reuse the pairs
    with torch.no_grad():
        backbone.get_input_embeddings().weight.mul_(2)
    Harness(backbone, tokenizer, suite, ["none"], tmp_path, window=160, families=["babilong"], progress=False).run()
    assert len(calls) == 2  # other weights do not


def test_a_revised_mechanism_recomputes_its_cached_pairs(tokenizer, tmp_path, monkeypatch, dummy_mechanism):
    backbone = tiny_model("llama")
    suite = Suite("tiny", **TINY_SUITE)
    calls = []
    original = BabilongTask.run
    monkeypatch.setattr(BabilongTask, "run", lambda self, *a: calls.append(a) or original(self, *a))

    def run() -> None:
        Harness(backbone, tokenizer, suite, ["dummy"], tmp_path, window=160, families=["babilong"],
                progress=False).run()

    run()
    run()
    assert len(calls) == 1  # cached
    monkeypatch.setattr(DummyMemory, "revision", 1)  # its outputs changed for the same config
    run()
    assert len(calls) == 2
    run()
    assert len(calls) == 2  # and the new results are cached in turn


def test_single_babilong_tasks_share_the_cache_and_a_stopped_pair_resumes_at_its_last_length(tokenizer, tmp_path,
                                                                                             monkeypatch):
    backbone = tiny_model("llama")
    suite = Suite("tiny", **{**TINY_SUITE, "babilong_tasks": ("qa1", "qa2")})
    only_qa2 = Harness(backbone, tokenizer, suite, ["none"], tmp_path, window=160, families=["babilong/qa2"],
                       progress=False)
    assert only_qa2.tasks() == [("babilong", "babilong/qa2")]
    asked = []
    original = Contender.answer_batch
    monkeypatch.setattr(Contender, "answer_batch", lambda self, *a, **k: asked.append(a) or original(self, *a, **k))
    only_qa2.run()
    assert len(asked) == 2  # two lengths, one sample each
    (tmp_path / "pairs" / "babilong__qa2__none.json").unlink()  # as if stopped before the pair was finished
    asked.clear()
    everything = Harness(backbone, tokenizer, suite, ["none"], tmp_path, window=160, families=["babilong"],
                         progress=False).run()
    assert len(asked) == 2  # qa1 ran; qa2's lengths came from the per-length cache
    assert {(r["task"], r["length"]) for r in everything} == {(f"babilong/{t}", n) for t in ("qa1", "qa2")
                                                              for n in (0, 400)}
    with pytest.raises(memlm.ConfigError, match="qa9"):
        Harness(backbone, tokenizer, suite, ["none"], tmp_path, families=["babilong/qa9"])


def test_a_token_memory_shows_each_sample_whether_the_answer_was_held_when_asked(tokenizer, tmp_path, monkeypatch):
    from memlm.memories.importance import ImportanceMemory

    rooms = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
    texts = iter(["Mary went to the " + " … the ".join(rooms)] * 2 + ["nothing at all"] * 2)
    monkeypatch.setattr(ImportanceMemory, "kept_text", lambda self, row=0: next(texts))  # one call a sample
    Harness(tiny_model("llama"), tokenizer, Suite("tiny", **{**TINY_SUITE, "samples": 2}), ["none", "importance"],
            tmp_path, window=160, families=["babilong/qa1"], progress=False).run()
    details = json.loads((tmp_path / "pairs" / "babilong__qa1__importance.json").read_text())["details"]
    assert len(details) == 4 and details[3]["memory_text"] == "nothing at all"
    assert {d["answer"] for d in details} <= set(rooms)
    assert [d["answer_in_memory"] for d in details] == [True, True, False, False]
    plain = json.loads((tmp_path / "pairs" / "babilong__qa1__none.json").read_text())["details"]
    assert not any("answer_in_memory" in d or "memory_text" in d for d in plain)  # a baseline holds nothing


def test_unknown_contenders_and_families_are_clear_errors(tokenizer, tmp_path):
    with pytest.raises(memlm.ConfigError, match="hippocampus"):
        Harness(tiny_model("llama"), tokenizer, Suite("tiny"), ["none", "hippocampus"], tmp_path)
    with pytest.raises(memlm.ConfigError, match="families"):
        Harness(tiny_model("llama"), tokenizer, Suite("tiny"), ["none"], tmp_path, families=["vibes"])


def test_contenders_see_the_tail_and_memories_get_what_left_the_window(tokenizer):
    backbone = tiny_model("llama")
    memory = Contender("bank", backbone, tokenizer, window=120, max_new_tokens=2)
    memory.feed("alpha " * 100)
    memory.ask("Q?")
    stored = memory.model.memories["bank"].store.facts("default")
    assert stored and sum(len(f.text) for f in stored) < 600  # the head went to memory, the tail stayed
    assert memory.written == len(memory.buffer) - (120 - memory._prompt_ids([{"role": "user", "content": "\n\nQ?"}]
                                                                             ).shape[1] - 2)
    memory.close()
    full = Contender("full", backbone, tokenizer, window=120, max_new_tokens=2)
    full.feed("beta " * 200)
    assert full.ask("Q?") is None  # 1,000 bytes do not fit 512 positions
    full.close()


def test_a_base_model_without_chat_template_is_asked_in_a_plain_transcript():
    from tiny import tiny_tokenizer

    from memlm.eval.contenders import PLAIN_CHAT_TEMPLATE

    base_tokenizer = tiny_tokenizer()
    base_tokenizer.chat_template = None
    contender = Contender("none", tiny_model("llama"), base_tokenizer, window=160, max_new_tokens=2)
    assert base_tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    prompt = base_tokenizer.decode(contender._prompt_ids([{"role": "user", "content": "Hi?"}])[0])
    assert prompt == "User: Hi?\nAssistant:"
    assert isinstance(contender.ask("Where is Mary?"), str)
    contender.close()


def test_facts_learned_one_by_one_are_stored_as_facts_not_as_stream_segments(tokenizer):
    from memlm.data import continual_facts

    items = continual_facts.generate(6, seed=0)
    bank = Contender("bank", tiny_model("llama"), tokenizer, window=120, max_new_tokens=2)
    for item in items:
        bank.learn(item.fact)
    bank.ask("Q?")  # the stream's head leaves the window here
    stored = sorted(f.text for f in bank.model.memories["bank"].store.facts("default"))
    assert stored == sorted(item.fact for item in items)
    bank.close()
    none = Contender("none", tiny_model("llama"), tokenizer, window=120, max_new_tokens=2)
    none.learn(items[0].fact)
    assert not none.facts_learned and none.buffer  # baselines only read it
    none.close()
