"""The decoding options shared by `generate` and `chat`: one dataclass, one decorator."""

from __future__ import annotations

import inspect

import pytest
import torch
import typer
from typer.testing import CliRunner

from memlm.cli import chat, generate
from memlm.cli.options import DecodingOptions, decoding_options

TEN = ["max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
       "no_repeat_ngram_size", "num_beams", "seed", "decode"]
GENERATE_DEFAULTS = {"max_new_tokens": 64, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                     "repetition_penalty": None, "no_repeat_ngram_size": None, "num_beams": 1, "seed": None,
                     "decode": None}


def parameters(command) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(command).parameters)


@pytest.mark.parametrize(("command", "defaults", "before", "after"), [
    (generate.generate, GENERATE_DEFAULTS, "chat", "stream"),
    (chat.chat, {**GENERATE_DEFAULTS, "max_new_tokens": 128, "repetition_penalty": 1.1}, "judge", "backbone"),
])
def test_the_ten_options_replace_the_decoding_parameter_in_place(command, defaults, before, after):
    names = list(parameters(command))
    assert "decoding" not in names
    start = names.index(before) + 1
    assert names[start:start + 10] == TEN and names[start + 10] == after
    assert {name: parameters(command)[name].default for name in TEN} == defaults


def test_values_reach_the_decoding_object():
    received = []
    app = typer.Typer()

    @app.command()
    @decoding_options(max_new_tokens=7, num_beams=2)
    def command(word: str, *, decoding: DecodingOptions, loud: bool = False) -> None:
        received.append((word, decoding, loud))

    def invoke(*args):
        result = CliRunner().invoke(app, [str(arg) for arg in args])
        assert result.exit_code == 0, result.output
        return received.pop()

    assert invoke("hi") == ("hi", DecodingOptions(max_new_tokens=7, num_beams=2), False)
    flags = ["--max-new-tokens", 3, "--do-sample", "--temperature", 0.5, "--top-p", 0.8, "--top-k", 9,
             "--repetition-penalty", 1.2, "--no-repeat-ngram-size", 4, "--num-beams", 5, "--seed", 11, "--loud"]
    assert invoke("hi", *flags) == ("hi", DecodingOptions(3, True, 0.5, 0.8, 9, 1.2, 4, 5, 11), True)
    assert invoke("hi", "--do-sample", "--greedy")[1].do_sample is False
    assert CliRunner().invoke(app, ["hi", "--top-p", 1.5]).exit_code == 2  # the option's range is kept


def test_to_generate_kwargs_leaves_out_unset_options_and_seeds_torch():
    assert DecodingOptions().to_generate_kwargs() == {"max_new_tokens": 64, "do_sample": False, "num_beams": 1}
    options = DecodingOptions(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9, top_k=3,
                              repetition_penalty=1.3, no_repeat_ngram_size=2, num_beams=4, seed=123)
    torch.manual_seed(0)
    assert options.to_generate_kwargs() == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                            "top_k": 3, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2,
                                            "num_beams": 4}
    assert torch.initial_seed() == 123


def test_beam_search_has_no_streamer(tokenizer):
    assert DecodingOptions(num_beams=1).streamer(tokenizer) is not None
    assert DecodingOptions(num_beams=2).streamer(tokenizer) is None


def test_the_decorator_rejects_misuse():
    with pytest.raises(TypeError, match="not decoding options: beams"):
        decoding_options(beams=2)
    with pytest.raises(TypeError, match="decoding: DecodingOptions"):
        decoding_options()(lambda prompt: None)
