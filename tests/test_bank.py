"""The `bank` fact memory, its store and `memlm.Memory`: dedup, gating, ranking, forgetting,
user isolation, history, persistence, concurrent writers, bad input."""

from __future__ import annotations

import hashlib
import multiprocessing
import re

import numpy as np
import pytest
import torch
from tiny import tiny_model

import memlm
from memlm.chat import ChatSession
from memlm.memories.bank import BankConfig, FactBank, fuse_facts
from memlm.store.facts import FactNotFoundError, FactStore, UnknownUserError

WORDS_DIM = 1024


def words_embed(texts: list[str]) -> np.ndarray:
    """A deterministic bag-of-words embedding: texts sharing words are similar; no model needed."""
    vectors = np.zeros((len(texts), WORDS_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % WORDS_DIM] += 1.0
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-6)


def text_embed(texts: list[str]) -> np.ndarray:
    """A random unit vector per distinct text (seeded by its hash): unrelated texts are never duplicates."""
    vectors = [np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(WORDS_DIM)
               for t in texts]
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def words_memory(path=None, **config) -> memlm.Memory:
    return memlm.Memory(path, config=BankConfig(**config), embed=words_embed, encoder="words", dimension=WORDS_DIM)


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def words_bank(clock=None, measure=None, **config) -> FactBank:
    store = FactStore(None, WORDS_DIM, "words", clock=clock or Clock())
    return FactBank(BankConfig(**config), store, words_embed, measure=measure)


# --- learning: duplicates and usefulness --------------------------------------------------------
def test_exact_duplicates_are_rejected_ignoring_case_spacing_and_final_punctuation():
    bank = words_bank()
    assert bank.learn("The user's dog is called Rex.").status == "stored"
    again = bank.learn("  the USER'S dog is called   rex!")
    assert again.status == "duplicate" and "exact" in again.reason
    assert bank.store.count("default") == 1


def test_near_duplicates_are_rejected_at_the_configured_cosine():
    fact, near = "Ada lives in Lisbon near the river", "Ada lives in Lisbon near the river Tagus"
    cosine = float(words_embed([fact])[0] @ words_embed([near])[0])
    strict = words_bank(duplicate_threshold=min(1.0, cosine + 0.01))
    strict.learn(fact)
    assert strict.learn(near).status == "stored"
    loose = words_bank(duplicate_threshold=cosine - 0.01)
    loose.learn(fact)
    result = loose.learn(near)
    assert result.status == "duplicate" and "near-duplicate" in result.reason


def test_facts_below_the_importance_threshold_are_not_stored():
    improvements = {"useful fact about zebras": 0.6, "obvious fact about water": 0.02}
    bank = words_bank(measure=improvements.__getitem__, min_importance=0.1,
                      category_weights={"trivia": 0.1})
    stored = bank.learn("useful fact about zebras")
    assert stored.stored and stored.importance == pytest.approx(0.6)
    rejected = bank.learn("obvious fact about water")
    assert rejected.status == "not useful" and rejected.fact is None
    # the category multiplier scales importance: 0.6 * 0.1 < 0.1
    assert bank.learn("useful fact about zebras", category="trivia", user="other").status == "not useful"
    assert bank.store.count("default") == 1


def test_loss_improvement_is_measured_with_the_model(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    bank = memory_model.memories["bank"]
    improvement = bank.loss_improvement("zq xv kw zq xv kw")
    assert 0.0 <= improvement <= 1.0
    result = bank.learn("zq xv kw zq xv kw")
    assert result.stored and result.importance == pytest.approx(improvement)
    # latent vectors are computed for latent fusion and used by the zero-gated reader
    assert bank.store.latents("default")[0] == [result.fact.id]


# --- retrieving: ranking ------------------------------------------------------------------------
def test_ranking_blends_similarity_and_importance():
    bank = words_bank(importance_weight=0.0)
    bank.learn("red apple pie recipe", importance=0.1)
    bank.learn("green apple tree in the garden", importance=5.0)
    by_similarity = [r.fact.text for r in bank.retrieve("red apple pie", 2, min_similarity=-1)]
    assert by_similarity[0] == "red apple pie recipe"
    bank.config.importance_weight = 1.0
    blended = bank.retrieve("red apple pie", 2, min_similarity=-1)
    assert blended[0].fact.text == "green apple tree in the garden"
    assert blended[0].score > blended[1].score
    assert blended[0].score == pytest.approx(blended[0].similarity + 5.0)


def test_recency_can_enter_the_blend():
    clock = Clock()
    bank = words_bank(clock=clock, importance_weight=0.0, recency_weight=1.0, recency_half_life=100.0)
    bank.learn("meeting on monday in room one")
    clock.now += 1000
    bank.learn("meeting on monday in room two")
    hits = bank.retrieve("meeting on monday", 2, min_similarity=-1)
    assert hits[0].fact.text == "meeting on monday in room two"


def test_retrieval_marks_facts_as_used():
    bank = words_bank()
    fact = bank.learn("the user plays the cello").fact
    bank.retrieve("cello")
    assert bank.store.get(fact.id).use_count == 1


# --- forgetting: capacity, eviction, decay ------------------------------------------------------
def test_capacity_evicts_lowest_importance_first():
    bank = words_bank(capacity=2)
    bank.learn("alpha fact", importance=0.9)
    bank.learn("beta fact", importance=0.1)
    bank.learn("gamma fact", importance=0.5)
    assert sorted(f.text for f in bank.store.facts("default")) == ["alpha fact", "gamma fact"]
    assert bank.store.history(2)[-1].actor == "eviction"


def test_capacity_with_oldest_policy_evicts_the_oldest():
    clock = Clock()
    bank = words_bank(clock=clock, capacity=2, eviction="oldest")
    for text in ("alpha fact", "beta fact", "gamma fact"):
        clock.now += 1
        bank.learn(text, importance=1.0 if text != "alpha fact" else 9.0)
    assert sorted(f.text for f in bank.store.facts("default")) == ["beta fact", "gamma fact"]


def test_importance_decays_with_disuse_and_decides_eviction():
    clock = Clock()
    bank = words_bank(clock=clock, capacity=2, importance_half_life=10.0)
    old = bank.learn("old but once important", importance=4.0).fact
    clock.now += 100  # ten half-lives: 4.0 -> ~0.004
    assert bank.decayed_importance(bank.store.get(old.id)) == pytest.approx(4.0 / 1024)
    bank.learn("fresh fact one", importance=1.0)
    bank.learn("fresh fact two", importance=1.0)
    assert "old but once important" not in [f.text for f in bank.store.facts("default")]


def test_retention_curve_shows_old_facts_forgotten_under_capacity():
    pairs = [(f"fact number {i} about item{i}", f"item{i}") for i in range(40)]
    unbounded = words_bank().retention_curve(pairs, bins=4)
    bounded = words_bank(capacity=10).retention_curve(pairs, bins=4)
    assert [b["recall"] for b in unbounded] == [1.0, 1.0, 1.0, 1.0]
    assert bounded[0]["recall"] == 1.0 and bounded[-1]["recall"] == 0.0  # newest kept, oldest evicted
    assert bounded[0]["age"] < bounded[-1]["age"]


# --- the mem0-style API: users, history, persistence --------------------------------------------
def test_a_user_never_sees_another_users_facts(tmp_path):
    memory = words_memory(tmp_path / "facts.sqlite")
    alice = memory.add("My password hint is purple elephant.", user="alice")[0]
    memory.add("My favourite animal is the elephant.", user="bob")
    hits = memory.search("purple elephant password hint", user="bob", min_similarity=-1)
    assert hits and all(hit["user"] == "bob" for hit in hits)
    with pytest.raises(FactNotFoundError):
        memory.get(alice["id"], user="bob")
    assert memory.delete(alice["id"], user="bob") is False
    with pytest.raises(FactNotFoundError):
        memory.update(alice["id"], "hacked", user="bob")
    with pytest.raises(FactNotFoundError):
        memory.history(alice["id"], user="bob")
    assert memory.get(alice["id"], user="alice")["memory"] == "The user's password hint is purple elephant."
    assert [f["user"] for f in memory.get_all(user="bob")] == ["bob"]


def test_update_and_history_record_who_changed_what():
    memory = words_memory()
    fact_id = memory.add("I live in Porto.", user="ada")[0]["id"]
    memory.update(fact_id, "The user lives in Lisbon.", user="ada")
    assert memory.search("where lisbon", user="ada", min_similarity=-1)[0]["memory"] == "The user lives in Lisbon."
    memory.delete(fact_id, user="ada")
    history = memory.history(fact_id, user="ada")
    assert [(h["action"], h["old_text"], h["new_text"]) for h in history] == [
        ("add", None, "The user lives in Porto."),
        ("update", "The user lives in Porto.", "The user lives in Lisbon."),
        ("delete", "The user lives in Lisbon.", None)]
    assert [h["actor"] for h in history] == ["chat", "api", "api"]
    assert memory.get_all(user="ada") == []  # a known user with nothing left: empty, not an error


def test_facts_survive_a_restart(tmp_path):
    path = tmp_path / "facts.sqlite"
    with words_memory(path) as memory:
        memory.add("I have two cats named Tom and Jerry.", user="ada")
    with words_memory(path) as reopened:
        facts = reopened.get_all(user="ada")
        assert [f["memory"] for f in facts] == ["The user has two cats named Tom and Jerry."]
        assert reopened.search("cats", user="ada")[0]["id"] == facts[0]["id"]


def _add_many(path: str, worker: int, count: int) -> None:
    with memlm.Memory(path, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        for number in range(count):
            memory.add(f"worker {worker} fact {number}", user="shared", infer=False)


def test_two_processes_adding_to_one_store_lose_nothing(tmp_path):
    path = str(tmp_path / "facts.sqlite")
    words_memory(path).close()  # create it first, as a chat would
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_many, args=(path, worker, 60)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    with memlm.Memory(path, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        facts = memory.get_all(user="shared")
        assert len(facts) == 120
        assert len({f["id"] for f in facts}) == 120
        # this process's index catches up with rows other processes wrote
        assert memory.search("worker 1 fact 59", user="shared", limit=1)[0]["memory"] == "worker 1 fact 59"


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("x" * 10_000_000, "too long"),
    (b"\x89PNG\r\n", "must be text"), ("abc\x00def", "control characters"), (42, "must be text"),
])
def test_bad_fact_text_is_refused_and_nothing_is_lost(text, message):
    memory = words_memory()
    memory.add("I like tea.", user="ada")
    with pytest.raises(memlm.ConfigError, match=message):
        memory.add(text, user="ada", infer=False)
    assert [f["memory"] for f in memory.get_all(user="ada")] == ["The user likes tea."]


def test_unknown_and_invalid_users_are_clear_errors():
    memory = words_memory()
    with pytest.raises(UnknownUserError, match="nobody"):
        memory.search("anything", user="nobody")
    with pytest.raises(UnknownUserError):
        memory.get_all(user="nobody")
    with pytest.raises(memlm.ConfigError, match="user id"):
        memory.add("I like tea.", user="../etc")


def test_a_corrupted_database_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "facts.sqlite"
    with words_memory(path) as memory:
        memory.add("I like tea.", user="ada")
    path.write_bytes(b"this is not a database" * 100)
    damaged = path.read_bytes()
    with pytest.raises(memlm.CorruptedFileError):
        words_memory(path)
    assert path.read_bytes() == damaged


def test_a_store_made_by_another_encoder_is_refused(tmp_path):
    path = tmp_path / "facts.sqlite"
    words_memory(path).close()
    with pytest.raises(memlm.IncompatibleMemoryError, match="words"):
        memlm.Memory(path, embed=words_embed, encoder="other-encoder", dimension=WORDS_DIM)


def test_a_damaged_bank_state_file_is_refused_and_state_kept(tokenizer, tmp_path):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", importance="constant"),
                                tokenizer=tokenizer)
    memory_model.memories["bank"].learn("the sky is green here")
    memory_model.save_state(tmp_path)
    (tmp_path / "bank" / "facts.sqlite").write_bytes(b"garbage" * 50)
    memory_model.memories["bank"].learn("a second fact")
    with pytest.raises(memlm.CorruptedFileError):
        memory_model.load_state(tmp_path)
    assert memory_model.memories["bank"].summary()["facts"] == 2


# --- the bank in a model and a chat -------------------------------------------------------------
def test_chat_puts_retrieved_facts_in_the_prompt_and_learns_from_turns(tokenizer, tmp_path):
    config = memlm.BankConfig(encoder="backbone", store=str(tmp_path / "facts.sqlite"), fusion="prompt")
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer)
    chat = ChatSession(memory_model, tokenizer, user="ada", generation={"max_new_tokens": 3, "do_sample": False})
    chat.ask("Hello! My cat is called Miso.")
    assert [r.status for r in chat.last_learned] == ["stored"]
    assert chat.last_learned[0].fact.source.startswith("user: Hello! My cat is called Miso.")
    assert chat.last_memories == []  # nothing was known before this turn
    messages, used = memory_model.memories["bank"].fuse_messages([{"role": "user", "content": "cat name?"}],
                                                                 query="My cat is called")
    assert used[0].fact.text == "The user's cat is called Miso."
    assert messages[0]["role"] == "system" and "Miso" in messages[0]["content"]

    # a restart with another process's view of the same store file; bob sees nothing of ada's
    fresh = memlm.attach(memory_model.detach(), config, tokenizer=tokenizer)
    resumed = ChatSession(fresh, tokenizer, user="ada", generation={"max_new_tokens": 3, "do_sample": False})
    assert resumed.resumed and resumed.turns == 1
    assert fresh.memories["bank"].summary()["facts"] == 1
    bob = ChatSession(fresh, tokenizer, user="bob", generation={"max_new_tokens": 3, "do_sample": False})
    bob.ask("What is my cat called?")
    assert bob.last_memories == [] and fresh.memories["bank"].summary()["facts"] == 0


def test_prompt_fusion_puts_the_most_relevant_fact_next_to_the_question():
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "What is my job?"}]
    best, second = "The user works as a luthier.", "The user's hobby is pottery."
    fused = fuse_facts(messages, [best, second])
    assert fused[0]["content"].startswith("Be kind.") and fused[0]["content"].index(second) < fused[0][
        "content"].index(best)
    assert fused[1:3] == messages[1:3]  # earlier turns are kept, in order
    recap_question, recap, question = fused[3:]
    assert recap_question["role"] == "user" and recap["role"] == "assistant" and question == messages[-1]
    assert recap["content"].endswith(best) and second in recap["content"]
    assert fuse_facts(messages, []) == messages


def test_the_next_reply_is_biased_toward_the_tokens_of_the_facts_in_the_prompt(tokenizer):
    fact = "The user's cat is called Miso."
    fact_tokens = set(tokenizer(fact, add_special_tokens=False).input_ids) | set(
        tokenizer(" " + fact, add_special_tokens=False).input_ids)

    def reply_tokens(bias: float) -> tuple[set[int], list]:
        memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt",
                                                                          fact_token_bias=bias), tokenizer=tokenizer)
        memory_model.memories["bank"].learn(fact, importance=1.0)
        messages, used = memory_model.augment_messages([{"role": "user", "content": "cat?"}], query=fact)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        reply = memory_model.generate(ids, max_new_tokens=12, do_sample=False, write_memory=False)[0, ids.shape[1]:]
        return set(reply.tolist()), memory_model.memories["bank"].logits_processors()

    biased, left_over = reply_tokens(20.0)
    assert biased <= fact_tokens  # a bonus of 20 logits leaves a random model nothing else to say
    assert left_over == []  # the bonus applied to that one generate call only
    unbiased, _ = reply_tokens(0.0)
    assert not unbiased <= fact_tokens
    with pytest.raises(memlm.ConfigError, match="fact_token_bias"):
        memlm.BankConfig(fact_token_bias=-1.0)


def test_segments_written_through_the_model_become_passages(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    memory_model.memorize("alpha beta gamma. " * 8 + "delta epsilon zeta. " * 8, segment_length=40, progress=False)
    bank = memory_model.memories["bank"]
    facts = bank.store.facts("default")
    assert len(facts) >= 3 and all(f.category == "segment" for f in facts)
    assert "".join(f.text for f in facts).replace(" ", "").startswith("alphabetagamma.")
    assert bank.store.latents("default")[0] == [f.id for f in facts]


def test_latent_fusion_reads_only_the_rows_own_facts(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone"), tokenizer=tokenizer)
    with torch.no_grad():
        memory_model.memories["bank"].reader.gate.fill_(1.0)
    probe = torch.tensor([[5, 6, 7, 8]])
    memory_model.write(torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]]))
    row0_reads = memory_model(probe, write_memory=False).logits
    memory_model.reset()
    memory_model.write(torch.tensor([[10, 11, 12, 13], [90, 91, 92, 93]]))
    assert torch.allclose(memory_model(probe, write_memory=False).logits, row0_reads, atol=1e-6)


def test_the_classic_six_facts_scenario_retrieves_relativity_first():
    # The real MiniLM, no language model: what `memlm demo` shows with the model attached.
    memory = memlm.Memory(None)
    facts = [("Einstein developed the theory of relativity.", "science"),
             ("The Great Wall of China is over 21,000 kilometres long.", "history"),
             ("Photosynthesis turns sunlight, water and carbon dioxide into sugar.", "biology"),
             ("Mount Everest is the highest mountain on Earth.", "geography"),
             ("Shakespeare wrote Hamlet around 1600.", "literature"),
             ("Water boils at 100 degrees Celsius at sea level.", "physics")]
    for text, category in facts:
        assert memory.add(text, user="classic", category=category, infer=False)[0]["event"] == "ADD"
    assert memory.add("Einstein developed the theory of relativity!", user="classic", infer=False)[0]["event"] == "NONE"
    listed = memory.get_all(user="classic")
    assert [(f["memory"], f["category"]) for f in listed] == facts
    hits = memory.search("Einstein's theory", user="classic", limit=3)
    assert hits[0]["memory"] == "Einstein developed the theory of relativity."
    assert len(hits) == 1 or hits[0]["score"] > hits[1]["score"]
