"""The OpenAI-compatible API, driven by the official `openai` client against a live server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
import urllib.request

import openai
import pytest
import torch
from openai import OpenAI
from serverkit import BASE, bearer
from starlette.testclient import TestClient

from memlm import MemoryModel
from memlm.serialization import load_tensors
from memlm.server.generation import OpenAIPenalties, StopTrimmer

BANK = "tiny-llama+bank+recurrent"
BARE = "tiny-llama"


def memlm_info(completion) -> dict:
    return completion.model_extra["memlm"]


def test_reply_stream_and_memory_per_user_with_the_openai_client(live, keys, home):
    with live() as (url, _):
        alice = OpenAI(base_url=f"{url}/v1", api_key=keys["alice"], max_retries=0)
        bob = OpenAI(base_url=f"{url}/v1", api_key=keys["bob"], max_retries=0)
        assert {m.id for m in alice.models.list()} == {BARE, "tiny-llama+bank", "tiny-llama+recurrent", BANK}
        assert alice.models.list().data[0].id == BANK  # a client taking the first model gets the memory

        told = alice.chat.completions.create(model=BANK, max_tokens=5,
                                             messages=[{"role": "user", "content": "My dog is called Biscuit."}])
        assert told.object == "chat.completion" and told.id.startswith("chatcmpl-") and told.model == BANK
        assert isinstance(told.choices[0].message.content, str) and told.choices[0].finish_reason in ("stop", "length")
        assert 1 <= told.usage.completion_tokens <= 5 and told.usage.total_tokens > told.usage.prompt_tokens
        assert [m["memory"] for m in memlm_info(told)["learned"]] == ["The user's dog is called Biscuit."]
        assert memlm_info(told)["memories"] == [] and memlm_info(told)["user"] == "alice"

        question = [{"role": "user", "content": "What is my dog's name?"}]
        chunks = list(alice.chat.completions.create(model=BANK, max_tokens=6, messages=question, stream=True,
                                                    stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        used = chunks[0].model_extra["memlm"]["memories"]  # the memories used, before the first token
        assert [m["memory"] for m in used] == ["The user's dog is called Biscuit."]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finals) == 1 and finals[0].model_extra["memlm"]["timings"]["generate_ms"] > 0
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2 and text

        # the same question from bob recalls nothing: alice's fact never reaches him
        theirs = bob.chat.completions.create(model=BANK, max_tokens=4, messages=question)
        assert memlm_info(theirs)["memories"] == [] and memlm_info(theirs)["user"] == "bob"
        bobs = list(bob.chat.completions.create(model=BANK, max_tokens=4, messages=question, stream=True))
        assert bobs[0].model_extra["memlm"]["memories"] == []
        # an admin key acts for the end user the request names
        root = OpenAI(base_url=f"{url}/v1", api_key=keys["root"], max_retries=0)
        for_alice = root.chat.completions.create(model=BANK, max_tokens=3, messages=question, user="alice")
        assert [m["memory"] for m in memlm_info(for_alice)["memories"]] == ["The user's dog is called Biscuit."]
        # the bare backbone reads no memory at all
        bare = alice.chat.completions.create(model=BARE, max_tokens=3, messages=question)
        assert memlm_info(bare)["memories"] == []
        with pytest.raises(openai.NotFoundError, match="not found"):
            bob.chat.completions.create(model=BANK, max_tokens=3, messages=question, user="alice")
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="sk-nope", max_retries=0).models.list()
    # each user's recurrent state is kept apart, on disk: alice's turns (the admin's for her included), bob's two
    state = "sessions/server.recurrent/memory_state.safetensors"
    updates = {user: int(load_tensors(home / "users" / user / state)[0]["recurrent.updates"][0])
               for user in ("alice", "bob")}
    assert updates == {"alice": 3, "bob": 2}


def test_errors_reach_the_openai_client_as_its_exceptions(live):
    with live(max_tokens_limit=16) as (url, _):
        client = OpenAI(base_url=f"{url}/v1", api_key="unused-in-local-mode", max_retries=0)
        hello = [{"role": "user", "content": "hello"}]
        cases = [({"model": "gpt-4o"}, openai.NotFoundError, "model 'gpt-4o' not found"),
                 ({"n": 2}, openai.BadRequestError, "n must be 1"),
                 ({"max_tokens": 17}, openai.BadRequestError, "limit of 16"),
                 ({"logprobs": True}, openai.BadRequestError, "logprobs"),
                 ({"temperature": 3}, openai.UnprocessableEntityError, "temperature"),
                 ({"logit_bias": {"999999": 5}}, openai.BadRequestError, "token id"),
                 ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools"),
                 ({"stop": ["a", "b", "c", "d", "e"]}, openai.UnprocessableEntityError, "stop")]
        for extra, error, words in cases:
            with pytest.raises(error, match=words):
                client.chat.completions.create(**{"model": BANK, "messages": hello, **extra})
        with pytest.raises(openai.UnprocessableEntityError, match="messages"):
            client.chat.completions.create(model=BANK, messages=[])
        with pytest.raises(openai.BadRequestError, match="user message"):
            client.chat.completions.create(model=BANK, messages=[{"role": "system", "content": "be brief"}])
        with pytest.raises(openai.BadRequestError, match="context"):
            client.chat.completions.create(model=BANK, max_tokens=16,
                                           messages=[{"role": "user", "content": "x " * 300}])


def test_stream_and_plain_answers_agree_and_stop_sequences_are_cut(live):
    with live() as (url, _):
        client = OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        ask = {"model": BARE, "max_tokens": 12, "messages": [{"role": "user", "content": "Tell me a story."}]}
        plain = client.chat.completions.create(**ask).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True)
                           if c.choices)
        assert plain and streamed.strip() == plain
        stop = plain[4:6]
        cut = client.chat.completions.create(**ask, stop=[stop])
        assert cut.choices[0].message.content == plain[:plain.index(stop)].strip()
        assert cut.choices[0].finish_reason == "stop"
        cut_stream = "".join(c.choices[0].delta.content or "" for c in
                             client.chat.completions.create(**ask, stop=stop, stream=True) if c.choices)
        assert cut_stream.strip() == plain[:plain.index(stop)].strip() and stop not in cut_stream


def test_streaming_streams_while_the_server_stays_responsive(live):
    with live() as (url, app):
        engine = app.state.engine

        passes = []

        def slow(*_):  # every forward pass of the backbone takes 40 ms: a 40-token answer takes > 1.6 s
            passes.append(1)
            time.sleep(0.04)

        hook = engine.model.backbone.register_forward_pre_hook(slow)
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
            arrivals, answered = [], []
            started = time.perf_counter()

            def probe() -> None:  # a memory request while the model is busy
                time.sleep(0.3)
                with urllib.request.urlopen(f"{url}/v1/memories", timeout=60) as response:
                    assert response.status == 200
                answered.append(len(passes))  # how far generation had got when the answer came

            thread = threading.Thread(target=probe)
            thread.start()
            # a bias towards one token keeps the random model from ending early
            (space,) = engine.tokenizer.encode(" ", add_special_tokens=False)
            stream = client.chat.completions.create(model=BARE, max_tokens=40, stream=True,
                                                    logit_bias={str(space): 100},
                                                    messages=[{"role": "user", "content": "Say many things."}])
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.perf_counter() - started)
            thread.join()
        finally:
            hook.remove()
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] > 0.4  # pieces arrive as tokens are made, not all at the end
    # Answered while generation ran: fewer forward passes had been made than the whole answer took (a
    # request blocked behind generation is answered after the last pass). No wall-clock limit: the
    # order of events does not depend on how fast the machine is.
    assert answered and answered[0] < len(passes), (answered, len(passes))


def test_decoding_options_map_to_generate(client, monkeypatch):
    calls = []
    original = MemoryModel.generate

    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MemoryModel, "generate", recording)
    hello = [{"role": "user", "content": "hello"}]
    assert client.post("/v1/chat/completions", json={"messages": hello}).status_code == 200
    sampled = client.post("/v1/chat/completions", json={
        "messages": hello, "max_completion_tokens": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 5,
        "repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.2, "seed": 3,
        "logit_bias": {"65": 2.0}, "stop": "zz", "memlm": {"learn": False}})
    assert sampled.status_code == 200, sampled.text
    assert sampled.json()["memlm"]["learned"] == [] and sampled.json()["memlm"]["timings"]["memory_write_ms"] == 0
    default, options = calls
    assert (default["do_sample"], default["max_new_tokens"], default["repetition_penalty"]) == (False, 6, 1.1)
    assert "temperature" not in default and "top_p" not in default and "stop_strings" not in default
    assert {k: options[k] for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                                    "max_new_tokens", "stop_strings")} == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "repetition_penalty": 1.3,
        "max_new_tokens": 3, "stop_strings": ["zz"]}
    kinds = {type(p).__name__ for p in options["logits_processor"]}
    assert {"OpenAIPenalties", "LogitBias"} <= kinds and options["streamer"] is not None
    seeded = [client.post("/v1/chat/completions", json={"messages": hello, "temperature": 1.0, "seed": 11,
                                                        "model": BARE}).json()["choices"][0]["message"]["content"]
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_penalties_follow_openais_formula():
    penalties = OpenAIPenalties(presence=0.5, frequency=0.25)
    scores = torch.zeros(1, 6)
    prompt = torch.tensor([[1, 2]])
    assert torch.equal(penalties(prompt, scores), scores)  # nothing generated yet; prompt tokens do not count
    generated = torch.tensor([[1, 2, 3, 3, 4]])
    expected = torch.tensor([[0, 0, 0, -(0.5 + 2 * 0.25), -(0.5 + 0.25), 0]])
    assert torch.allclose(penalties(generated, scores), expected)


@pytest.mark.parametrize(("pieces", "stops", "sent", "stopped"), [
    (["Hel", "lo wor", "ld"], [], "Hello world", False),
    (["Hel", "lo ST", "OP more"], ["STOP"], "Hello ", True),
    (["ab", "c"], ["abd"], "abc", False),
    (["xx", "S", "TOP"], ["STOP", "yy"], "xx", True),
])
def test_stop_sequences_are_held_back_then_cut(pieces, stops, sent, stopped):
    trimmer = StopTrimmer(stops)
    out = "".join(trimmer.feed(piece) for piece in pieces) + trimmer.flush()
    assert (out, trimmer.stopped) == (sent, stopped)


def test_a_full_queue_answers_503(make_app):
    app = make_app(max_queue=1)
    with TestClient(app, base_url=BASE) as client:
        gate = threading.Event()
        app.state.engine.submit(gate.wait, 10)  # the worker is busy with this one
        busy = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        gate.set()
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]["message"]
        time.sleep(0.05)
        ok = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                         headers=bearer("ignored"))
        assert ok.status_code == 200


def test_a_client_that_leaves_stops_its_generation(live):
    import httpx2

    with live() as (url, app):
        engine = app.state.engine
        passes = []
        slow = engine.model.backbone.register_forward_pre_hook(lambda *_: passes.append(1) or time.sleep(0.04))
        (space,) = engine.tokenizer.encode(" ", add_special_tokens=False)
        body = {"model": BANK, "max_tokens": 100, "stream": True, "logit_bias": {str(space): 100},
                "messages": [{"role": "user", "content": "My cat is called Tom."}]}
        try:
            with httpx2.Client(timeout=30) as client, client.stream("POST", f"{url}/v1/chat/completions",
                                                                     json=body) as response:
                for line in response.iter_lines():
                    if '"content": " "' in line:
                        break  # the first token arrived: leave
            engine.submit(lambda: None).result(timeout=60)  # the worker is free once generation stopped
        finally:
            slow.remove()
        # generation stopped early: the 100 tokens asked for take 100 forward passes (no wall-clock limit)
        assert len(passes) < 100, len(passes)
        assert app.state.facts.get_all("local") == []  # an abandoned turn teaches nothing


def test_users_key_value_memories_stay_in_their_own_folders(make_app, keys, home):
    import sqlite3

    with TestClient(make_app("knn-joint"), base_url=BASE) as client:
        for user, text in (("alice", "alpha alpha"), ("bob", "bravo bravo"), ("alice", "again")):
            response = client.post("/v1/chat/completions", headers=bearer(keys[user]), json={
                "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            assert response.status_code == 200, response.text
    counts = {}
    for user in ("alice", "bob"):
        path = home / "users" / user / "sessions" / "server.knn" / "knn" / "records.sqlite"
        with sqlite3.connect(path) as db:
            counts[user] = dict(db.execute("SELECT user, COUNT(*) FROM records GROUP BY user").fetchall())
            assert db.execute("SELECT COUNT(*) FROM records WHERE deleted_at IS NOT NULL").fetchone()[0] == 0
    assert set(counts["alice"]) == {"alice"} and set(counts["bob"]) == {"bob"}  # nothing of one in the other's
    assert counts["alice"]["alice"] > counts["bob"]["bob"] > 0  # alice's two turns, bob's one
