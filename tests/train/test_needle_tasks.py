"""The `needle` and `passkey` trainer tasks: training needles (`memlm.data.needle_train`) become examples
as the BABILong tasks do, the fact sentences labelled relevant where they go through memory, the loss on
the answer and the end of its turn; the trainer evaluates them held out."""

from __future__ import annotations

import pytest
from tiny import tiny_model

import memlm
from memlm.data import needle_train
from memlm.train import TrainConfig, Trainer
from memlm.train.config import NEEDLE_TASKS
from memlm.train.data import TrainingData

HAYSTACK = "The river ran cold past the mill. Nobody asked the miller why. The wind rose at dusk. " * 60


def needle_config(tmp_path, tasks=("needle", "passkey"), **train):
    haystack = tmp_path / "haystack.txt"
    haystack.write_text(HAYSTACK)
    return TrainConfig.from_dict({
        "model": {"memories": [{"mechanism": "importance", "max_memory_size": 24, "score_layer": 0}],
                  "lora": {"r": 2, "layers": "above_memory"}},
        "data": {"tasks": list(tasks), "haystack": [str(haystack)], "lm_corpus": [], "lm_every": 0,
                 "curriculum": [{"step": 0, "lengths": [900]}]},
        "train": {"steps": 2, "batch_size": 2, "window": 300, "eval_every": 0, "save_every": 0, "log_every": 1,
                  **train},
        "output": str(tmp_path / "run")})


@pytest.mark.parametrize("task", list(NEEDLE_TASKS))
def test_a_needle_batch_learns_the_answer_and_labels_the_facts(tmp_path, tokenizer, task):
    config = needle_config(tmp_path, tasks=[task])
    data = TrainingData(config.data, tokenizer, 300, 16, 24, 2, 0)
    batch = data.task_batch(task, 2400, 11, 4)
    samples = needle_train.generate(NEEDLE_TASKS[task], 4, 2400, 11, data.count_tokens, data.haystack)
    assert batch.kind == task and batch.memorize_labels is not None
    memorized_facts = 0
    for row, sample in enumerate(samples):
        # The loss is on the answer and the first token of the end of its turn, nothing else.
        learned = [t for t in batch.targets[row].tolist() if t != -100]
        answer = tokenizer(sample.answer, add_special_tokens=False).input_ids
        assert learned[:-1] == answer and len(learned) == len(answer) + 1
        # Relevance: every fact read through memory is labelled, and nothing else is.
        count = int(batch.memorize_mask[row].sum())
        ids, labels = batch.memorize_ids[row, :count].tolist(), batch.memorize_labels[row, :count].tolist()
        memorized = tokenizer.decode(ids)
        relevant = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label])
        irrelevant = tokenizer.decode([t if not label else tokenizer.pad_token_id
                                       for t, label in zip(ids, labels, strict=True)])
        for fact in sample.facts:
            if fact in memorized:
                memorized_facts += 1
                assert fact in relevant and fact not in irrelevant
        assert len(relevant) <= sum(len(fact) for fact in sample.facts)
    # The check above ran: most facts went through memory (2,400 tokens, a window of 300).
    assert memorized_facts >= 0.6 * sum(len(sample.facts) for sample in samples)


@pytest.mark.parametrize("tasks", [["needle"], ["passkey"], ["qa1", "qa5", "followup", "needle", "passkey"]])
def test_a_config_accepts_the_needle_tasks(tasks):
    assert TrainConfig.from_dict({"data": {"tasks": tasks}}).data.tasks == tasks


@pytest.mark.parametrize("task", ["needles", "pass_key", "facts", "needle/facts"])
def test_a_config_refuses_other_task_names(task):
    with pytest.raises(memlm.ConfigError, match="data.tasks: unknown"):
        TrainConfig.from_dict({"data": {"tasks": ["needle", task]}})


def test_the_trainer_trains_on_needles_and_evaluates_them_held_out(tmp_path, tokenizer):
    config = needle_config(tmp_path, eval_every=2, eval_samples=2, eval_lengths=[900])
    trainer = Trainer(config, tiny_model("llama", num_layers=2), tokenizer, progress=False)
    assert {trainer.data.batch(step).kind for step in range(6)} == {"needle", "passkey"}
    result = trainer.train()
    assert result.steps == 2 and list(result.evaluations[-1]) == ["step", "needle@900", "passkey@900"]
    assert all(0.0 <= result.evaluations[-1][name] <= 1.0 for name in ("needle@900", "passkey@900"))
