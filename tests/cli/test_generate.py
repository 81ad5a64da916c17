"""`memlm generate` on a tiny local backbone."""

from __future__ import annotations

import pytest
import torch

import memlm

PROMPT = "hello"


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    """The tiny backbone as the CLI loads it, to compute what it must print."""
    return memlm.load_backbone(str(tiny_folder))


def greedy_ids(tiny, input_ids, max_new_tokens):
    model, tokenizer = tiny
    return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                          max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)[0]


def test_generate_prints_prompt_and_greedy_continuation(run, tiny_folder, tiny):
    _, tokenizer = tiny
    expected = tokenizer.decode(greedy_ids(tiny, tokenizer(PROMPT, return_tensors="pt").input_ids, 5),
                                skip_special_tokens=True)
    assert len(expected) > len(PROMPT)
    result = run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 5, "--no-stream")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_streaming_prints_the_same_continuation(run, tiny_folder):
    args = ["generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 6]
    printed = run(*args, "--no-stream")
    streamed = run(*args, "--stream")
    assert printed.exit_code == 0 and streamed.exit_code == 0, streamed.output
    assert streamed.stdout == printed.stdout and len(streamed.stdout.strip()) > len(PROMPT)


def test_fast_greedy_decoding_prints_and_streams_the_same_continuation(run, tiny_folder):
    args = ["generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 6]
    expected = run(*args, "--no-stream")
    for flags in (["--no-stream"], ["--stream"]):  # the fast path hands the streamer its tokens too
        result = run(*args, "--decode", "static", *flags)
        assert result.exit_code == 0 and result.stdout == expected.stdout, result.output


def test_streaming_goes_through_a_streamer(run, tiny_folder, generate_calls):
    run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 2)
    run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 2, "--no-stream")
    run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 2, "--num-beams", 2)
    assert [call.kwargs["streamer"] is not None for call in generate_calls] == [True, False, False]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--max-new-tokens", 3], {"max_new_tokens": 3}),
    (["--do-sample"], {"do_sample": True}),
    (["--temperature", 0.7], {"temperature": 0.7}),
    (["--top-p", 0.9], {"top_p": 0.9}),
    (["--top-k", 20], {"top_k": 20}),
    (["--repetition-penalty", 1.3], {"repetition_penalty": 1.3}),
    (["--no-repeat-ngram-size", 2], {"no_repeat_ngram_size": 2}),
    (["--num-beams", 3], {"num_beams": 3}),
    (["--decode", "static"], {"decode": "static"}),
])
def test_each_decoding_flag_reaches_generate(run, tiny_folder, generate_calls, flags, expected):
    result = run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 2, *flags)
    assert result.exit_code == 0, result.output
    [call] = generate_calls
    assert {key: call.kwargs.get(key) for key in expected} == expected


def test_unset_decoding_flags_are_left_to_transformers(run, tiny_folder, generate_calls):
    assert run("generate", PROMPT, "--backbone", tiny_folder).exit_code == 0
    [call] = generate_calls
    assert call.kwargs["max_new_tokens"] == 64 and call.kwargs["do_sample"] is False and call.kwargs["num_beams"] == 1
    assert not {"temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size"} & set(call.kwargs)


def test_seed_seeds_torch_before_generating(run, tiny_folder, generate_calls):
    torch.manual_seed(0)
    assert run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 2, "--seed", 5).exit_code == 0
    assert generate_calls[0].seed == 5


def test_sampling_is_reproducible_with_a_seed(run, tiny_folder):
    args = ["generate", "abc", "--backbone", tiny_folder, "--max-new-tokens", 12, "--do-sample", "--no-stream",
            "--seed"]
    first, second, other = run(*args, 1), run(*args, 1), run(*args, 2)
    assert first.exit_code == second.exit_code == other.exit_code == 0, first.output
    assert first.stdout == second.stdout
    assert first.stdout != other.stdout


def test_chat_wraps_the_prompt_in_the_template_and_prints_only_the_reply(run, tiny_folder, tiny, generate_calls):
    _, tokenizer = tiny
    result = run("generate", PROMPT, "--chat", "--backbone", tiny_folder, "--max-new-tokens", 5, "--no-stream")
    assert result.exit_code == 0, result.output
    templated = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(generate_calls[0].kwargs["input_ids"], templated)
    reply = greedy_ids(tiny, templated, 5)[templated.shape[1]:]
    assert result.stdout == tokenizer.decode(reply, skip_special_tokens=True) + "\n"
    raw = run("generate", PROMPT, "--raw", "--backbone", tiny_folder, "--max-new-tokens", 2)
    assert raw.exit_code == 0
    assert torch.equal(generate_calls[1].kwargs["input_ids"], tokenizer(PROMPT, return_tensors="pt").input_ids)


@pytest.mark.parametrize(("flags", "memories"), [
    ([], []),
    (["--memory", "recurrent"], ["recurrent"]),
    (["-m", "recurrent,none"], ["recurrent"]),
    (["-m", "none"], []),
])
def test_memory_flag_attaches_the_memory(run, tiny_folder, generate_calls, flags, memories):
    result = run("generate", PROMPT, "--backbone", tiny_folder, "--max-new-tokens", 2, *flags)
    assert result.exit_code == 0, result.output
    assert list(generate_calls[0].model.memories) == memories


def test_typed_errors_are_one_line_with_status_2(run, tiny_folder):
    result = run("generate", "hi", "--backbone", tiny_folder, "--memory", "hippocampus")
    assert result.exit_code == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: UnknownMechanismError: ") and result.stderr.count("\n") == 1
    empty = run("generate", "  ", "--backbone", tiny_folder)
    assert empty.exit_code == 2 and "the prompt is empty" in empty.output
