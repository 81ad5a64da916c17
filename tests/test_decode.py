"""Fast greedy decoding (`memlm.decode`): the static-cache path gives eager `generate()`'s tokens, bare
and with each memory; what it cannot reproduce runs transformers' loop; the step a CUDA graph records
never reads the device. (Recording and replaying itself needs a GPU: tests/test_gpu.py.)"""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_memory_weights, token_batch
from tiny import EOS_ID, PAD_ID, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

import memlm
from memlm.decode import _DecodeSession

GREEDY = dict(do_sample=False, pad_token_id=PAD_ID, write_memory=False)


def both(memory_model, ids, mask=None, prepare=None, **options):
    """(eager tokens, static tokens) for the same call; `prepare()` runs before each (e.g. put facts in)."""
    outputs = []
    for decode in ("eager", "static"):
        if prepare is not None:
            prepare()
        outputs.append(memory_model.generate(ids, attention_mask=mask, decode=decode, **{**GREEDY, **options}))
    return outputs


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = token_batch(batch_size=2, length=9, seed=3)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    return ids.masked_fill(mask == 0, PAD_ID), mask


def test_static_decoding_gives_eager_tokens_on_every_backbone(architecture):
    memory_model = memlm.MemoryModel(tiny_model(architecture), [])
    eager, static = both(memory_model, token_batch(batch_size=1, length=7), max_new_tokens=20)
    assert eager.shape == (1, 27) and torch.equal(static, eager)
    assert memory_model.greedy_decoder.last_path == "static"
    eager, static = both(memory_model, *padded_batch(), max_new_tokens=12)  # left padding: positions, masks
    assert torch.equal(static, eager)
    # Gemma 3's sliding-window cache layers count in a Python int: its steps run, but are not recorded
    assert all(s.graph_ready() == (architecture != "gemma3") for s in memory_model.greedy_decoder.sessions.values())


def _open(memory_model):
    randomize_memory_weights(memory_model, seed=4)  # open gates: the memory really changes the logits
    return memory_model


MEMORY_SETUPS = {
    "recurrent": lambda: _open(memlm.attach(tiny_model("llama"), "recurrent")),
    "slots": lambda: _open(memlm.attach(tiny_model("llama"), "slots")),
    "importance": lambda: memlm.attach(tiny_model("llama"), "importance"),
    "bank-latent": lambda: memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="latent")),
}


@pytest.mark.parametrize("name", sorted(MEMORY_SETUPS))
def test_static_decoding_gives_eager_tokens_with_each_memory(name, tokenizer):
    memory_model = MEMORY_SETUPS[name]()
    if name == "importance":
        memory_model.memories["importance"].add_tokens(token_batch(batch_size=1, length=5, seed=9))
    elif name == "bank-latent":
        with torch.no_grad():
            memory_model.memories["bank"].reader.gate.fill_(1.0)
    ids = token_batch(batch_size=1, length=8, seed=1)
    memory_model.write(token_batch(batch_size=1, length=10, seed=2))
    with memory_model.paused() as bare:
        bare_tokens = bare.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=PAD_ID)
    eager, static = both(memory_model, ids, max_new_tokens=16)
    assert torch.equal(static, eager)
    assert memory_model.greedy_decoder.last_path == "static"
    if name != "importance":  # the importance memory's kept tokens go in front; the reply is what differs
        assert not torch.equal(eager, bare_tokens)  # the memory was read while decoding


def test_the_banks_fact_token_bonus_is_applied_as_eager_applies_it(tokenizer):
    fact = "The user's cat is called Miso."
    memory_model = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt",
                                                                      fact_token_bias=3.0), tokenizer=tokenizer)
    memory_model.memories["bank"].learn(fact, importance=1.0)
    ids = tokenizer.apply_chat_template(
        memory_model.augment_messages([{"role": "user", "content": "cat?"}], query=fact)[0],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]

    def put_facts_in():  # each generate() takes the bonus of the facts put in just before it
        memory_model.augment_messages([{"role": "user", "content": "cat?"}], query=fact)

    eager, static = both(memory_model, ids, prepare=put_facts_in, max_new_tokens=12)
    assert torch.equal(static, eager)
    unbiased = memory_model.generate(ids, max_new_tokens=12, decode="static", **GREEDY)
    assert not torch.equal(unbiased, eager)  # the bonus changed the reply


def test_end_of_sequence_padding_and_min_new_tokens_follow_eager():
    memory_model = memlm.MemoryModel(tiny_model("llama"), [])
    ids, mask = padded_batch()
    free = memory_model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None, **GREEDY)
    # End tokens that row 0 says 4th and row 1 says 7th: the rows finish apart, the first one is padded.
    stops = [EOS_ID, int(free[0, ids.shape[1] + 3]), int(free[1, ids.shape[1] + 6])]
    for options in ({}, {"min_new_tokens": 9}):
        eager, static = both(memory_model, ids, mask, max_new_tokens=12, eos_token_id=stops, **options)
        assert torch.equal(static, eager)
        assert (eager.shape[1] < free.shape[1]) == (not options)  # stopped early, unless held back
    assert eager[0, -1] == PAD_ID or eager.shape[1] == free.shape[1]


class RecordingStreamer:
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def test_a_streamer_gets_what_eager_gives_it_up_to_the_end_of_sequence():
    memory_model = memlm.MemoryModel(tiny_model("llama"), [])
    ids = token_batch(batch_size=1, length=6, seed=8)
    free = memory_model.generate(ids, max_new_tokens=10, eos_token_id=None, **GREEDY)
    streamers = {decode: RecordingStreamer() for decode in ("eager", "static")}
    for decode, streamer in streamers.items():  # ends at the 4th new token
        memory_model.generate(ids, max_new_tokens=10, eos_token_id=int(free[0, 9]), streamer=streamer, decode=decode,
                              **GREEDY)
    assert streamers["static"].puts == streamers["eager"].puts and len(streamers["eager"].puts) == 1 + 4
    assert streamers["static"].ended


def test_calls_reuse_one_cache_and_read_each_turns_memory():
    def turns(decode: str) -> list[torch.Tensor]:
        memory_model = _open(memlm.attach(tiny_model("llama"), ["recurrent", "slots"]))
        replies = []
        for turn in range(3):  # each turn writes memory; prompts of different lengths share a cache
            ids = token_batch(batch_size=1, length=5 + 3 * turn, seed=turn)
            replies.append(memory_model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=PAD_ID,
                                                 decode=decode))
        if decode == "static":
            assert len(memory_model.greedy_decoder.sessions) == 1
        return replies

    for eager, static in zip(turns("eager"), turns("static"), strict=True):
        assert torch.equal(static, eager)


@pytest.mark.parametrize("options", [
    {"do_sample": True, "top_k": 5}, {"num_beams": 2}, {"repetition_penalty": 1.3}, {"max_new_tokens": None},
    {"logits_processor": "custom"}, {"stopping_criteria": "custom"}, {"output_scores": True,
                                                                       "return_dict_in_generate": True},
])
def test_what_static_decoding_cannot_reproduce_runs_transformers_loop(options):
    from transformers import LogitsProcessorList, StoppingCriteriaList
    from transformers.generation import MaxLengthCriteria, TemperatureLogitsWarper

    memory_model = memlm.MemoryModel(tiny_model("llama"), [])
    custom = {"logits_processor": LogitsProcessorList([TemperatureLogitsWarper(0.5)]),
              "stopping_criteria": StoppingCriteriaList([MaxLengthCriteria(12)])}
    options = {key: custom[key] if value == "custom" else value for key, value in options.items()}
    options = {"max_new_tokens": 6, **GREEDY, **options}
    ids = token_batch(batch_size=1, length=5)
    torch.manual_seed(0)
    eager = memory_model.generate(ids, **options)
    torch.manual_seed(0)
    fast = memory_model.generate(ids, decode="auto", **options)
    assert memory_model.greedy_decoder.last_path.startswith("eager: ")
    if isinstance(eager, torch.Tensor):
        assert torch.equal(fast, eager)
    else:
        assert torch.equal(fast.sequences, eager.sequences)


def test_a_memory_without_static_support_runs_transformers_loop():
    memory_model = memlm.attach(tiny_model("llama"), "knn")  # searches its store on the host at every step
    memory_model.write(token_batch(batch_size=1, length=16))
    eager, fast = both(memory_model, token_batch(batch_size=1, length=6), max_new_tokens=8)
    assert torch.equal(fast, eager)
    assert memory_model.greedy_decoder.last_path == "eager: the 'knn' memory does not support static decoding"


def test_graph_decoding_without_cuda_runs_static_and_says_why(caplog):
    memory_model = memlm.MemoryModel(tiny_model("llama"), [])
    with caplog.at_level("WARNING", logger="memlm.decode"):
        memory_model.generate(token_batch(batch_size=1), max_new_tokens=4, decode="graph", **GREEDY)
    assert memory_model.greedy_decoder.last_path == "static"
    assert "CUDA graphs need a CUDA device" in caplog.text
    with pytest.raises(memlm.ConfigError, match="decode must be one of"):
        memory_model.generate(token_batch(batch_size=1), max_new_tokens=4, decode="fast", **GREEDY)


def test_which_memories_can_be_recorded_as_graphs(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ["recurrent", "slots", "importance"])
    assert [memory.graph_blocker() for memory in memory_model.memories.values()] == [None, None, None]
    prompt = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="prompt"))
    latent = memlm.attach(tiny_model("llama"), memlm.BankConfig(encoder="backbone", fusion="latent"))
    assert prompt.memories["bank"].graph_blocker() is None
    assert "host" in latent.memories["bank"].graph_blocker()


# --- what a CUDA graph records ----------------------------------------------------------------------
HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
              "aten._unique2.default", "aten.unique_consecutive.default", "aten.lift_fresh.default"}


class ForbidHostReads(TorchDispatchMode):
    """Fails on what breaks CUDA graph recording: reading a device value on the host (.item(), bool(),
    shapes that depend on values) and tensors made from Python data (a host-to-device copy)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            raise AssertionError(f"the decode step calls {func}: a CUDA graph cannot record it")
        return func(*args, **(kwargs or {}))


BANK_BY_PROMPT = memlm.BankConfig(encoder="backbone", fusion="prompt")  # latent fusion is not recorded (host reads)


@pytest.mark.parametrize("names", [[], ["recurrent"], ["slots"], ["importance"], [BANK_BY_PROMPT],
                                   ["recurrent", "slots", "importance", BANK_BY_PROMPT]])
def test_the_recorded_step_never_reads_the_device(names, monkeypatch, tokenizer):
    memory_model = _open(memlm.attach(tiny_model("llama"), names, tokenizer=tokenizer))
    assert all(memory.graph_blocker() is None for memory in memory_model.memories.values())
    memory_model.write(token_batch(batch_size=1, length=10))
    original, steps = _DecodeSession.step, []

    def guarded(session):
        with ForbidHostReads():
            original(session)
        steps.append(1)

    monkeypatch.setattr(_DecodeSession, "step", guarded)
    memory_model.generate(token_batch(batch_size=1), max_new_tokens=5, decode="static", **GREEDY)
    assert len(steps) == 4  # the prompt's pass makes the first token; the step makes the rest


def test_graph_calls_read_memory_from_static_buffers_and_give_the_tensors_back():
    memory_model = _open(memlm.attach(tiny_model("llama"), ["recurrent", "slots"]))
    memory_model.write(token_batch(batch_size=1, length=10))
    decoder = memory_model.greedy_decoder
    memory_model.generate(token_batch(batch_size=1), max_new_tokens=4, decode="static", **GREEDY)
    [session] = decoder.sessions.values()
    recurrent, slots = memory_model.memories["recurrent"], memory_model.memories["slots"]
    state, slot_memory = recurrent.state, slots.memory
    with decoder._static_state(session, graph=True):
        assert recurrent.state is not state and torch.equal(recurrent.state, state)
        buffer = recurrent.state
        key = decoder._graph_key(session)
    assert recurrent.state is state and slots.memory is slot_memory
    memory_model.write(token_batch(batch_size=1, length=10, seed=7))  # a write replaces the state
    with decoder._static_state(session, graph=True):
        assert recurrent.state is buffer and torch.equal(buffer, memory_model.memories["recurrent"].state)
        assert torch.equal(buffer, decoder._decode_state(1)[("recurrent", "state")])
        assert decoder._graph_key(session) == key  # same layout: the recorded graph is replayed
    memory_model.reset()  # no state: the reads take another branch, so the step is recorded again
    with decoder._static_state(session, graph=True):
        assert recurrent.state is None and decoder._graph_key(session) != key


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])  # gemma3's sliding layers: never recorded
def test_the_recorded_step_never_reads_the_device_on_padded_batches(architecture, monkeypatch):
    memory_model = memlm.MemoryModel(tiny_model(architecture), [])
    original = _DecodeSession.step

    def guarded(session):
        with ForbidHostReads():
            original(session)

    monkeypatch.setattr(_DecodeSession, "step", guarded)
    memory_model.generate(*padded_batch(), max_new_tokens=4, decode="static", **GREEDY)
    [session] = memory_model.greedy_decoder.sessions.values()
    assert session.padded and session.graph_ready()


# --- decode="compile": dynamo traces the step (the "eager" backend: inductor's codegen takes a minute here) ----
@pytest.fixture
def compile_with_dynamo_only(monkeypatch):
    monkeypatch.setattr("memlm.decode.COMPILE_BACKEND", "eager")


def test_the_compiled_step_gives_eager_tokens_and_sees_memories_attached_later(compile_with_dynamo_only, tokenizer):
    memory_model = memlm.MemoryModel(tiny_model("llama"), [], tokenizer=tokenizer)
    ids = token_batch(batch_size=1, length=7, seed=5)
    eager, compiled = (memory_model.generate(ids, max_new_tokens=10, decode=decode, **GREEDY)
                       for decode in ("eager", "compile"))
    assert torch.equal(compiled, eager) and memory_model.greedy_decoder.last_path == "compile"
    # Dynamo does not guard on module hooks: a step compiled before these memories came must not be reused.
    for config in ("recurrent", "slots", "importance", BANK_BY_PROMPT):
        memory_model.add_memory(config)
    randomize_memory_weights(memory_model, seed=4)
    memory_model.write(token_batch(batch_size=1, length=10))
    eager, compiled = (memory_model.generate(ids, max_new_tokens=10, decode=decode, **GREEDY)
                       for decode in ("eager", "compile"))
    assert torch.equal(compiled, eager)
    with memory_model.paused() as bare:
        assert not torch.equal(eager[:, -10:], bare.generate(ids, max_new_tokens=10, do_sample=False,
                                                            pad_token_id=PAD_ID)[:, -10:])


def test_a_failing_compiler_falls_back_to_static_decoding(monkeypatch, caplog):
    monkeypatch.setattr("memlm.decode.COMPILE_BACKEND", "no-such-backend")
    memory_model = memlm.MemoryModel(tiny_model("llama"), [])
    ids = token_batch(batch_size=1, length=7)
    with caplog.at_level("WARNING", logger="memlm.decode"):
        fast = memory_model.generate(ids, max_new_tokens=8, decode="compile", **GREEDY)
    assert torch.equal(fast, memory_model.generate(ids, max_new_tokens=8, **GREEDY))
    assert memory_model.greedy_decoder.last_path == "static" and "torch.compile or recording failed" in caplog.text
    assert torch.equal(memory_model.generate(ids, max_new_tokens=8, decode="compile", **GREEDY), fast)  # not retried
    assert memory_model.greedy_decoder._failures.keys() == {"compile"}


def test_a_copied_model_decodes_with_caches_of_its_own():
    import copy

    memory_model = memlm.MemoryModel(tiny_model("llama"), [])
    ids = token_batch(batch_size=1, length=5)
    first = memory_model.generate(ids, max_new_tokens=4, decode="static", **GREEDY)
    copied = copy.deepcopy(memory_model)
    assert copied.greedy_decoder.model is copied and not copied.greedy_decoder.sessions
    assert torch.equal(copied.generate(ids, max_new_tokens=4, decode="static", **GREEDY), first)
