"""A server on a trained LoRA with the bank (the chat preset's shape): the adapter is a part of model
ids, listed first with it; without it the same memories answer as the untrained prompt fusion, which is
what the blind comparison pits against it; a turn writes no memory state (no save on the response path)."""

from __future__ import annotations

import torch
from serverkit import BASE
from starlette.testclient import TestClient
from tiny import tiny_model

from memlm import MemoryModel
from memlm.paths import home_dir
from memlm.server import ServerSettings, create_app
from memlm.server.app import server_memories


def lora_app(tokenizer):
    home = home_dir()
    model = MemoryModel(tiny_model("llama"), server_memories(["bank"], home), tokenizer=tokenizer)
    model.add_lora({"r": 2})
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.lora.parameters():  # a trained adapter changes the output (B starts at zero)
            parameter.normal_(0, 0.5)
    return create_app(model, tokenizer, ServerSettings(home=home, generation={"max_new_tokens": 4}))


def test_the_lora_is_a_part_of_model_ids_and_switches_off_outside_them(tokenizer):
    app = lora_app(tokenizer)
    with TestClient(app, base_url=BASE) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids[0] == "tiny-llama+bank+lora" and "tiny-llama+bank" in ids and "tiny-llama" in ids
        engine = app.state.engine
        inputs = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            with engine._only(("bank", "lora")):
                with_lora = engine.model(input_ids=inputs, write_memory=False).logits
            with engine._only(("bank",)):
                without = engine.model(input_ids=inputs, write_memory=False).logits
            with engine._only(()):
                bare = engine.model(input_ids=inputs, write_memory=False).logits
        assert not torch.allclose(with_lora, without) and torch.allclose(without, bare)
        reply = client.post("/v1/chat/completions", json={"model": ids[0], "messages": [
            {"role": "user", "content": "My dog is called Rollo."}]})
        assert reply.status_code == 200, reply.text
        assert engine._dirty is False and engine.stateful == ()  # nothing to save after the turn


def test_the_blind_comparison_pits_the_untrained_fusion_against_the_preset(tokenizer):
    with TestClient(lora_app(tokenizer), base_url=BASE) as client:
        created = client.post("/v1/eval/comparisons", json={"prompt": "What is my dog's name?", "max_tokens": 3})
        assert created.status_code == 200, created.text
        voted = client.post(f"/v1/eval/comparisons/{created.json()['id']}/vote", json={"choice": "tie"})
        assert set(voted.json()["contenders"].values()) == {"tiny-llama+bank", "tiny-llama+bank+lora"}


def test_a_turn_answered_before_its_state_was_saved_is_replayed_from_the_journal(make_app):
    """The recurrent state is written and saved after the answer; a crash in between (simulated: the save
    fails once) leaves the turn in the journal, and the next load replays it."""
    from memlm.server.engine import JOURNAL_FILE

    app = make_app("bank", "recurrent")
    with TestClient(app, base_url=BASE) as client:
        engine = app.state.engine
        real_save = engine.model.save_state
        calls = []

        def crash_once(directory):
            calls.append(directory)
            if len(calls) == 1:
                raise RuntimeError("killed while saving")
            return real_save(directory)

        engine.model.save_state = crash_once
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello there."}]})
        assert reply.status_code == 200, reply.text  # answered before the state was written
        engine.submit(lambda: None).result()  # the worker has finished the turn (its failed save included)
        assert len(calls) == 1
        journal = engine.state_dir("local") / JOURNAL_FILE
        assert journal.is_file() and "Hello there." in journal.read_text()
        # a restart: the memories forget, the next job of the user loads the state and replays the journal
        def restart():
            engine._loaded_user, engine._dirty = None, False
            engine.model.memories["recurrent"].reset()
            engine._ensure_user("local")

        engine.submit(restart).result()
        assert engine.model.memories["recurrent"].summary()["updates"] == 1
        assert not journal.exists() and (engine.state_dir("local") / "memory_state.safetensors").is_file()
