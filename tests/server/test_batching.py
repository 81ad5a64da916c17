"""Continuous batching of chat turns (memlm.server.batching): rows of a batch give what the one-at-a-time
path gives, keep their users' memories apart, join and leave independently, and end their turns (facts,
journal, saved state) as unbatched turns do."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
import torch
from helpers import randomize_memory_weights
from tiny import EOS_ID, VOCAB_SIZE, tiny_model

from memlm import MemoryModel
from memlm.paths import home_dir
from memlm.server import server_memories
from memlm.server.batching import job_blocker, model_blocker
from memlm.server.engine import JOURNAL_FILE, ChatJob, Engine
from memlm.server.generation import cut_at_stop

BANK_RECURRENT = ("bank", "recurrent")
ENDINGS = itertools.count()
PROMPTS = {  # different lengths, so rows are left-padded differently
    "alice": "Hi.",
    "bob": "What do you know about me and my family, in a few words?",
    "carol": "Tell me a story.",
    "dave": "Where do I live, and what is my job? Answer briefly, please, if you can.",
}


OWN_OPTIONS = {"dave": {"presence_penalty": 0.8, "frequency_penalty": 0.5}}  # a row with processors of its own


def _sharp(model: Any, seed: int = 1) -> Any:
    """Weights large enough that the reply depends on every prompt token and position (a tiny random model
    at its init scale answers nearly the same whatever it is asked, which would hide padding mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def _ascii_only(tokenizer: Any) -> dict[int, float]:
    """A logit bias that keeps replies to printable ASCII, one character per token, and never ends them:
    the reply's text is then its tokens exactly, at full length."""
    bias = {EOS_ID: -100.0}
    for token in range(VOCAB_SIZE):
        text = tokenizer.decode([token])
        if not (len(text) == 1 and text.isascii() and text.isprintable()):
            bias[token] = -100.0
    return bias


def make_engine(tokenizer: Any, architecture: str = "llama", memories: tuple[str, ...] = BANK_RECURRENT,
                batch_size: int = 4, memory_scale: float = 0.05) -> Engine:
    home = home_dir()
    model = MemoryModel(_sharp(tiny_model(architecture)), server_memories(list(memories), home), tokenizer=tokenizer)
    # the recurrent memory's gates open: each user's state shapes the reply (at 0.5, it dominates it)
    randomize_memory_weights(model, scale=memory_scale)
    # A strong repetition penalty keeps the sharp tiny model from repeating one character: every step's
    # token then depends on the context (the cache, its padding, the positions), not only the first one.
    return Engine(model, tokenizer, home, batch_size=batch_size,
                  default_generation={"max_new_tokens": 12, "repetition_penalty": 3.0})


class Turn:
    """One chat job and what it emitted."""

    def __init__(self, engine: Engine, user: str, text: str, memories: tuple[str, ...] = BANK_RECURRENT,
                 learn: bool = False, max_new: int = 12, generation_overrides: dict[str, Any] | None = None,
                 **job: Any):
        self.events: list[tuple[str, Any]] = []
        self.done = threading.Event()
        self.on_delta: Any = None
        job.setdefault("logit_bias", _ascii_only(engine.tokenizer))
        self.job = ChatJob(user=user, messages=[{"role": "user", "content": text}], memories=memories,
                           generation=dict(engine.default_generation, max_new_tokens=max_new,
                                           **(generation_overrides or {})), learn=learn,
                           emit=self._emit, **job)

    def _emit(self, event: tuple[str, Any]) -> None:
        self.events.append(event)
        if event[0] == "delta" and self.on_delta is not None:
            self.on_delta(self)
        if event[0] in ("end", "error"):
            self.ended = next(ENDINGS)
            self.done.set()

    @property
    def text(self) -> str:
        assert self.done.wait(60) and self.events[-1][0] == "end", self.events[-1:]
        return "".join(value for kind, value in self.events if kind == "delta")

    @property
    def end(self) -> dict[str, Any]:
        assert self.done.wait(60) and self.events[-1][0] == "end", self.events[-1:]
        return self.events[-1][1]

    @property
    def deltas(self) -> int:
        return sum(kind == "delta" for kind, _ in self.events)


def alone(engine: Engine, *args: Any, **kwargs: Any) -> Turn:
    """A turn on the one-at-a-time path."""
    turn = Turn(engine, *args, **kwargs)
    engine.submit(engine.chat, turn.job).result()
    return turn


def together(engine: Engine, turns: list[Turn]) -> list[Turn]:
    """Turns queued while the worker is busy, so that they start as one batch."""
    gate = threading.Event()
    engine.submit(gate.wait)
    for turn in turns:
        engine.submit_chat(turn.job)
    gate.set()
    for turn in turns:
        assert turn.done.wait(60)
    return turns


def remember(engine: Engine) -> None:
    """Give each user facts and a recurrent state of their own (turns that learn, one at a time)."""
    for user, said in {"alice": "My dog is called Biscuit.", "bob": "My sister Maria lives in Porto.",
                       "carol": "I work as a baker.", "dave": "I live in Lisbon."}.items():
        alone(engine, user, said, learn=True).end  # noqa: B018 - waits for the turn


@pytest.fixture
def engine(tokenizer):
    engine = make_engine(tokenizer)
    yield engine
    engine.close()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])  # rotary and absolute positions
def test_greedy_rows_give_the_one_at_a_time_tokens(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture)
    try:
        remember(engine)
        for memories in (BANK_RECURRENT, ("bank",), ()):
            reference = {user: alone(engine, user, text, memories, **OWN_OPTIONS.get(user, {})).text
                         for user, text in PROMPTS.items()}
            batched = together(engine, [Turn(engine, user, text, memories, **OWN_OPTIONS.get(user, {}))
                                        for user, text in PROMPTS.items()])
            assert {turn.job.user: turn.text for turn in batched} == reference, memories
            assert len(set(reference.values())) == len(reference)  # the prompts (and memories) matter
            assert sum(len(set(text)) > 6 for text in reference.values()) >= 3  # not one character repeated
        assert engine.batcher.peak_rows == 4
    finally:
        engine.close()


@pytest.mark.parametrize("memory_scale", [0.05, 0.5])  # the recurrent state nudges, or dominates, the reply
def test_turns_with_different_memories_share_a_batch(tokenizer, memory_scale):
    engine = make_engine(tokenizer, memory_scale=memory_scale)
    try:
        remember(engine)
        mixes = {"alice": BANK_RECURRENT, "bob": (), "carol": ("bank",), "dave": ("recurrent",)}
        reference = {user: alone(engine, user, PROMPTS[user], mixes[user]).text for user in mixes}
        batched = together(engine, [Turn(engine, user, PROMPTS[user], mixes[user]) for user in mixes])
        assert {turn.job.user: turn.text for turn in batched} == reference
        assert engine.batcher.peak_rows == 4
    finally:
        engine.close()


def test_a_users_memory_shapes_only_their_row(tokenizer):
    engine = make_engine(tokenizer, memory_scale=0.5)
    remember(engine)
    question = "What do you remember about me?"
    for memories in (BANK_RECURRENT, ("bank",)):  # the bank alone: no state to load, only whose facts
        bob_alone = alone(engine, "bob", question, memories)
        alice, bob = together(engine, [Turn(engine, "alice", question, memories),
                                       Turn(engine, "bob", question, memories)])
        assert [m["memory"] for m in alice.events[0][1]["memories"]] == ["The user's dog is called Biscuit."]
        assert all("Biscuit" not in m["memory"] for m in bob.events[0][1]["memories"])
        assert bob.text == bob_alone.text and alice.text != bob.text
    # the recurrent state alone (no bank): bob's row reads bob's state, next to alice's
    bob_alone = alone(engine, "bob", question, ("recurrent",))
    alice, bob = together(engine, [Turn(engine, "alice", question, ("recurrent",)),
                                   Turn(engine, "bob", question, ("recurrent",))])
    assert bob.text == bob_alone.text and alice.text != bob.text
    engine.close()


def test_a_turn_joins_a_batch_that_is_decoding(engine):
    remember(engine)
    long_reference = alone(engine, "alice", PROMPTS["alice"], max_new=40).text
    short_reference = alone(engine, "bob", PROMPTS["bob"], max_new=8).text
    long, short = Turn(engine, "alice", PROMPTS["alice"], max_new=40), Turn(engine, "bob", PROMPTS["bob"], max_new=8)
    joined_at: list[int] = []

    def join(turn: Turn) -> None:  # on the worker, mid-decode: the new turn joins at the next step
        if turn.deltas == 5 and not joined_at:
            joined_at.append(turn.deltas)
            engine.submit_chat(short.job)

    long.on_delta = join
    engine.submit_chat(long.job)
    assert long.text == long_reference and short.text == short_reference
    assert joined_at == [5] and engine.batcher.peak_rows == 2
    assert short.ended < long.ended  # the short row left while the long one went on


def test_cancelling_one_row_leaves_the_others(engine):
    remember(engine)
    reference = {user: alone(engine, user, text, max_new=20).text for user, text in PROMPTS.items()}
    turns = [Turn(engine, user, text, max_new=20) for user, text in PROMPTS.items()]

    def cancel(turn: Turn) -> None:
        if turn.deltas == 3:
            turn.job.cancelled.set()

    turns[1].on_delta = cancel
    together(engine, turns)
    cancelled = turns[1]
    cancelled_alone = Turn(engine, cancelled.job.user, PROMPTS[cancelled.job.user], max_new=20)
    cancelled_alone.on_delta = cancel
    engine.submit(engine.chat, cancelled_alone.job).result()
    # it stops one token after the one during which it was cancelled, as on the one-at-a-time path
    assert cancelled.end["usage"]["completion_tokens"] == cancelled_alone.end["usage"]["completion_tokens"] == 4
    assert reference[cancelled.job.user].startswith(cancelled.text)
    assert {t.job.user: t.text for t in turns if t is not cancelled} == \
        {user: text for user, text in reference.items() if user != cancelled.job.user}
    engine.submit(lambda: None).result()
    assert engine.pending == 0 and not engine.batcher.rows  # every row's place in the queue was given back


def test_stop_strings_are_per_row(engine):
    remember(engine)
    reference = {user: alone(engine, user, text, max_new=16).text for user, text in PROMPTS.items()}
    stop = reference["carol"][5:7]
    carol_alone = alone(engine, "carol", PROMPTS["carol"], max_new=16, stop=[stop])
    turns = together(engine, [Turn(engine, user, text, max_new=16, stop=[stop] if user == "carol" else [])
                              for user, text in PROMPTS.items()])
    for turn in turns:
        if turn.job.user == "carol":
            assert turn.text == carol_alone.text == cut_at_stop(reference["carol"], [stop])
            assert turn.end["finish_reason"] == carol_alone.end["finish_reason"] == "stop"
            # generation itself stopped there (not only the text sent)
            assert turn.end["usage"]["completion_tokens"] == carol_alone.end["usage"]["completion_tokens"] < 16
        else:
            assert turn.text == reference[turn.job.user] and turn.end["finish_reason"] == "length"


def test_batched_turns_learn_journal_and_save_as_unbatched_ones(engine):
    """Each row's turn learns its user's facts, saves its user's recurrent state after the answer, and a
    save that fails leaves the turn in that user's journal, replayed at the next load."""
    store = engine.model.memories["bank"].store
    real_save, failed = engine.model.save_state, []

    def save_failing_for_bob(directory):
        if "bob" in str(directory) and not failed:
            failed.append(directory)
            raise RuntimeError("killed while saving")
        return real_save(directory)

    engine.model.save_state = save_failing_for_bob
    alice, bob = together(engine, [Turn(engine, "alice", "My dog is called Biscuit.", learn=True),
                                   Turn(engine, "bob", "My cat is called Tom.", learn=True)])
    assert [item["memory"] for item in alice.end["learned"]] == ["The user's dog is called Biscuit."]
    assert [item["memory"] for item in bob.end["learned"]] == ["The user's cat is called Tom."]
    assert [f.text for f in store.facts("alice")] == ["The user's dog is called Biscuit."]
    assert [f.text for f in store.facts("bob")] == ["The user's cat is called Tom."]
    engine.submit(lambda: None).result()
    assert (engine.state_dir("alice") / "memory_state.safetensors").is_file()
    assert not (engine.state_dir("alice") / JOURNAL_FILE).exists()
    journal = engine.state_dir("bob") / JOURNAL_FILE
    assert failed and journal.is_file() and "My cat is called Tom." in journal.read_text()
    # The failed save came after bob's answer had ended: it is logged, never sent as a second, error ending.
    assert [kind for kind, _ in bob.events if kind in ("end", "error")] == ["end"]

    def restart():
        engine._loaded_user, engine._dirty = None, False
        engine.model.memories["recurrent"].reset()
        engine._ensure_user("bob")

    engine.submit(restart).result()
    assert engine.model.memories["recurrent"].summary()["updates"] == 1 and not journal.exists()


def test_a_retrieval_is_marked_used_when_its_row_ends(engine):
    remember(engine)
    store = engine.model.memories["bank"].store
    turns = together(engine, [Turn(engine, "alice", "What is my dog called?", learn=True),
                              Turn(engine, "bob", "Where does my sister live?", learn=True),
                              Turn(engine, "carol", "What is my dog called?", learn=False)])
    for turn in turns:
        used = {m["id"] for m in turn.events[0][1]["memories"]}
        assert used or turn.job.user == "carol"  # alice and bob found their facts; carol has no dog
        assert {f.id: f.use_count for f in store.facts(turn.job.user)} == \
            {f.id: int(f.id in used) for f in store.facts(turn.job.user)}


def test_what_cannot_batch_runs_one_at_a_time(tokenizer):
    engine = make_engine(tokenizer, memories=("bank", "knn"))
    try:
        turn = Turn(engine, "alice", "Hello.", ("bank", "knn"))
        assert "knn" in job_blocker(engine, turn.job)
        plain = Turn(engine, "alice", "Hello.", ("bank",)).job
        assert job_blocker(engine, plain) is None
        plain.generation["num_beams"] = 2
        assert "num_beams" in job_blocker(engine, plain)
        engine.submit_chat(turn.job)
        assert turn.end["usage"]["completion_tokens"] == 12 and engine.batcher.peak_rows == 0
    finally:
        engine.close()
    assert "sliding-window" in model_blocker(MemoryModel(tiny_model("gemma3"), []))


def test_concurrent_streams_through_the_openai_client_are_batched(live, keys):
    """Four users stream at once from a live server with `batch_size=4`: one batch, each stream what the
    same request gets alone (answered by the one-at-a-time path of a server without batching)."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    users = ["alice", "bob", "alice", "bob"]
    questions = [[{"role": "user", "content": text}] for text in
                 ("What is my dog called?", "What is my dog called?", "Tell me about my dog, please.", "Hi.")]

    def ask(url: str, index: int, stream: bool) -> str:
        client = OpenAI(base_url=f"{url}/v1", api_key=keys[users[index]], max_retries=0)
        if not stream:
            reply = client.chat.completions.create(model="tiny-llama+bank", max_tokens=8, messages=questions[index],
                                                   extra_body={"memlm": {"learn": False}})
            return reply.choices[0].message.content
        chunks = list(client.chat.completions.create(model="tiny-llama+bank", max_tokens=8, stream=True,
                                                     messages=questions[index], extra_body={"memlm": {"learn": False}}))
        used = [m["memory"] for m in chunks[0].model_extra["memlm"]["memories"]]
        assert used == (["The user's dog is called Biscuit."] if users[index] == "alice" else []), index
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    with live("bank", batch_size=0) as (url, app):
        assert app.state.engine.batcher is None
        OpenAI(base_url=f"{url}/v1", api_key=keys["alice"], max_retries=0).chat.completions.create(
            model="tiny-llama+bank", max_tokens=2, messages=[{"role": "user", "content": "My dog is called Biscuit."}])
        alone_replies = [ask(url, index, stream=False) for index in range(4)]
    with live("bank", batch_size=4) as (url, app):
        engine, gate = app.state.engine, threading.Event()
        engine.submit(gate.wait)  # the worker is busy: the four requests queue, then start as one batch
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(ask, url, index, True) for index in range(4)]
            deadline = time.monotonic() + 30
            while len(engine.batcher.waiting) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            gate.set()
            streamed = [future.result(timeout=60) for future in futures]
        assert engine.batcher.peak_rows == 4
    assert streamed == alone_replies


def test_turns_with_and_without_the_lora_adapter_take_turns(tokenizer):
    """The adapter is on or off for the whole backbone: queued turns with it and without it run as batches of
    one setting each, and every turn answers as it does alone."""
    home = home_dir()
    model = MemoryModel(_sharp(tiny_model("llama")), server_memories(["bank"], home), tokenizer=tokenizer)
    model.add_lora({"r": 2})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.lora.parameters():  # a trained adapter changes the output (B starts at zero)
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    engine = Engine(model, tokenizer, home, batch_size=4,
                    default_generation={"max_new_tokens": 12, "repetition_penalty": 3.0})
    try:
        mixes = [("bank", "lora"), ("bank", "lora"), ("bank",), ("bank",)]
        users = list(PROMPTS)
        reference = [alone(engine, user, PROMPTS[user], memories).text
                     for user, memories in zip(users, mixes, strict=True)]
        assert reference[0] != alone(engine, users[0], PROMPTS[users[0]], ("bank",)).text  # the adapter matters
        batched = together(engine, [Turn(engine, user, PROMPTS[user], memories)
                                    for user, memories in zip(users, mixes, strict=True)])
        assert [turn.text for turn in batched] == reference
        assert engine.batcher.peak_rows == 2  # two with the adapter, then two without
    finally:
        engine.close()


def test_sampled_rows_follow_their_own_seed(engine):
    def sample(seed: int) -> list[str]:
        turns = [Turn(engine, user, text, generation_overrides={"do_sample": True, "temperature": 1.5, "top_k": 50,
                                                                "top_p": 0.95}, seed=seed + index)
                 for index, (user, text) in enumerate(PROMPTS.items())]
        return [turn.text for turn in together(engine, turns)]

    first = sample(1)
    assert sample(1) == first and sample(2) != first
    greedy = [alone(engine, user, text).text for user, text in PROMPTS.items()]
    assert first != greedy
    # top_k=1 leaves each row one token to draw: the greedy one (the rows' warpers are applied)
    narrowed = [Turn(engine, user, text, generation_overrides={"do_sample": True, "temperature": 1.5, "top_k": 1},
                     seed=7) for user, text in PROMPTS.items()]
    assert [turn.text for turn in together(engine, narrowed)] == greedy


def test_a_save_that_fails_after_a_turn_alone_ends_is_logged_and_the_turn_kept_in_the_journal(engine, caplog):
    real_save, failed = engine.model.save_state, []

    def failing_once(directory):
        if not failed:
            failed.append(directory)
            raise RuntimeError("disk full")
        return real_save(directory)

    engine.model.save_state = failing_once
    turn = alone(engine, "bob", "My cat is called Tom.", learn=True)
    assert turn.end["learned"] and [kind for kind, _ in turn.events if kind in ("end", "error")] == ["end"]
    engine.submit(lambda: None).result()
    assert failed and "not written or saved" in caplog.text
    assert "My cat is called Tom." in (engine.state_dir("bob") / JOURNAL_FILE).read_text()
    assert engine._loaded_user is None  # the next turn reloads the saved state and replays the journal
