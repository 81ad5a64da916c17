"""The `chat` task: chat turns over fused facts become examples with nothing to memorize and the loss
on the reply and the end of its turn; the trainer learns from them and ships the bank with the LoRA."""

from __future__ import annotations

import json
import random

import pytest
from tiny import tiny_model

from memlm.train import TrainConfig, Trainer
from memlm.train.data import TrainingData


def chat_config(tmp_path, **train):
    return TrainConfig.from_dict({
        "model": {"memories": [{"mechanism": "bank", "fusion": "prompt", "top_k": 4, "fact_token_bias": 0.0}],
                  "lora": {"r": 2}},
        "data": {"tasks": ["chat"], "haystack": [], "lm_corpus": [], "lm_every": 0,
                 "chat": {"max_facts": 3, "max_stream": 3}},
        "train": {"steps": 2, "batch_size": 2, "window": 1024, "eval_every": 0, "save_every": 0, "log_every": 1,
                  **train},
        "output": str(tmp_path / "run")})


def test_chat_examples_learn_only_the_reply_and_its_end(tmp_path, tokenizer):
    config = chat_config(tmp_path)
    data = TrainingData(config.data, tokenizer, 1024, 64, 0, 4, 0)
    turn = data.chat_turns.turn(random.Random(3))
    example = data.chat_example(turn)
    assert example.memorize == [] and len(example.prompt) == len(example.targets)
    learned = [t for t in example.targets if t != -100]
    reply = tokenizer(turn.reply, add_special_tokens=False).input_ids
    assert learned[:len(reply)] == reply and len(learned) == len(reply) + 1  # + the end of the turn
    assert example.targets[-len(learned):] == learned  # nothing after the reply
    batch = data.batch(0)
    assert batch.kind == "chat" and batch.memorize_ids.shape[1] == 0 and (batch.targets != -100).any()


def test_a_chat_config_refuses_unknown_chat_options(tmp_path):
    with pytest.raises(Exception, match="data.chat"):
        TrainConfig.from_dict({"model": {"memories": ["bank"], "lora": {"r": 2}},
                               "data": {"tasks": ["chat"], "chat": {"gossip": 1}}})


def test_the_trainer_runs_on_chat_turns_and_saves_bank_and_lora(tmp_path, tokenizer):
    config = chat_config(tmp_path, eval_every=2, eval_samples=2)
    trainer = Trainer(config, tiny_model("llama", num_layers=2), tokenizer, progress=False)
    result = trainer.train()
    assert result.steps == 2
    assert "chat" in result.evaluations[-1] and 0.0 <= result.evaluations[-1]["chat"] <= 1.0
    saved = json.loads((result.final / "memlm_config.json").read_text())
    assert [m["mechanism"] for m in saved["memories"]] == ["bank"] and saved["lora"]["r"] == 2
    assert saved["memories"][0]["fusion"] == "prompt" and saved["memories"][0]["top_k"] == 4
