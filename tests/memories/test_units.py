"""The importance memory keeps whole units (words or sentences): a name of several sub-word tokens is
kept whole or not at all, and a capacity cut never keeps the newer half of a word."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

import memlm
from memlm.memories import units
from memlm.memories.importance import ImportanceConfig

STORY = "Zsigmond travelled to the boathouse. It rained."


def _rating_letters(memory, tokenizer, letters: str):
    """A scorer that rates only these letters' tokens high, as a scorer trained on one-token names might
    rate only the last piece of an unfamiliar one."""
    chosen = torch.tensor(sorted({tokenizer(c, add_special_tokens=False).input_ids[0] for c in letters}))

    def score(hidden_states, mask=None):
        return torch.where(torch.isin(memory.context.input_ids, chosen), 6.0, -6.0)

    memory.scorer.forward = score


def _kept_text(memory) -> str:
    return "".join(item["text"] for item in memory.kept_tokens(row=0))


@pytest.mark.parametrize(("unit", "kept"), [
    ("token", "m"),  # one piece of the name alone: what was seen before ("...z travelled to the ...")
    ("word", "Zsigmond"),  # the whole name, though one of its eight tokens scored high
])
def test_a_multi_token_name_is_kept_whole_when_any_piece_of_it_is_chosen(tokenizer, unit, kept):
    model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit=unit, max_memory_size=32),
                         tokenizer=tokenizer)
    memory = model.memories["importance"]
    _rating_letters(memory, tokenizer, "m")  # "m" occurs once, inside "Zsigmond"
    model.memorize(" " + STORY, segment_length=64, progress=False)
    assert _kept_text(memory) == kept


def test_a_sentence_is_kept_or_dropped_whole_by_its_mean_score(tokenizer):
    model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="sentence", max_memory_size=64),
                         tokenizer=tokenizer)
    memory = model.memories["importance"]
    # Most letters of the first sentence score high, none of the second: the first is kept whole (its
    # spaces and full stop too), the second not at all.
    _rating_letters(memory, tokenizer, "Zsigmondtravelledtotheboathouse")
    model.memorize("Zsigmond travelled to the boathouse. Pyx, jfk qwq!", segment_length=64, progress=False)
    assert _kept_text(memory) == "Zsigmond travelled to the boathouse."


def test_the_capacity_cut_drops_whole_words_newest_first_on_ties(tokenizer):
    model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="word", max_memory_size=7),
                         tokenizer=tokenizer)
    memory = model.memories["importance"]
    # (The byte-level tokenizer makes every byte a token and a space a unit of its own.)
    _rating_letters(memory, tokenizer, "xyz")  # "xyzzy" (5 tokens), then "zyx" (3): 8 > 7
    model.memorize(" xyzzy and zyx", segment_length=64, progress=False)
    assert _kept_text(memory) == "zyx"  # the newer word whole, and nothing of the older one
    model.reset()
    model.memories["importance"].config.max_memory_size = 2  # no word fits whole: none is cut in two
    model.memorize(" xyzzy and zyx", segment_length=64, progress=False)
    assert _kept_text(memory) == ""


def test_kept_words_stay_whole_as_they_ride_along_through_later_segments(tokenizer):
    model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="word", max_memory_size=40),
                         tokenizer=tokenizer)
    memory = model.memories["importance"]
    _rating_letters(memory, tokenizer, "QJ")
    model.memorize(" aQb ccc dddd eJee ffff gggg hhhh", segment_length=8, progress=False)
    # "aQb" and "eJee" are written in different segments; the first rides along and is rescored
    # with the second segment's tokens as one unit of its own.
    assert [item["text"] for item in memory.kept_tokens(row=0)] == list("aQbeJee")


def test_unit_index_numbers_words_and_sentences_and_caps_long_sentences(tokenizer):
    ids = tokenizer("Hi there. Bye now!", return_tensors="pt").input_ids
    valid = torch.ones_like(ids, dtype=torch.bool)
    words = units.unit_index(ids, valid, "word", tokenizer, vocab_size=256)
    # (byte-level: the space before a word is a unit of its own)
    assert words[0].tolist() == [0, 0, 1, 2, 2, 2, 2, 2, 3, 4, 5, 5, 5, 6, 7, 7, 7, 8]
    sentences = units.unit_index(ids, valid, "sentence", tokenizer, vocab_size=256)
    assert sentences[0].tolist() == [0] * 9 + [1] * 9
    long = tokenizer("a" * (2 * units.MAX_SENTENCE_TOKENS + 5), return_tensors="pt").input_ids
    capped = units.unit_index(long, torch.ones_like(long, dtype=torch.bool), "sentence", tokenizer, 256)
    assert capped[0].unique().tolist() == [0, 1, 2]
    # Padding never joins a unit, and a forced break starts one.
    valid[0, 3] = False
    breaks = torch.zeros_like(valid)
    breaks[0, 1] = True
    split = units.unit_index(ids, valid, "word", tokenizer, 256, breaks)
    assert split[0, :6].tolist() == [0, 1, 2, 3, 4, 4]


def test_without_a_tokenizer_words_fall_back_to_tokens_with_a_warning():
    model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="word"))
    with pytest.warns(UserWarning, match="needs the tokenizer"):
        model.write(torch.randint(0, 200, (1, 12)))


def test_an_unknown_unit_is_refused():
    with pytest.raises(memlm.ConfigError, match="keep_unit"):
        ImportanceConfig(keep_unit="paragraph")


def test_a_words_score_is_its_best_tokens_and_a_sentences_the_mean_of_its_valid_tokens():
    logits = torch.tensor([[1.0, 5.0, -2.0, 3.0, 9.0]])
    index = torch.tensor([[0, 0, 1, 1, 2]])
    valid = torch.tensor([[True, True, True, True, False]])
    assert units.unit_logits(logits, index, valid, "token") is logits
    # padding keeps its own logit and never lifts its unit's score
    assert units.unit_logits(logits, index, valid, "word").tolist() == [[5.0, 5.0, 3.0, 3.0, 9.0]]
    assert units.unit_logits(logits, index, valid, "sentence").tolist() == [[3.0, 3.0, 0.5, 0.5, 9.0]]
    half_padded = torch.tensor([[True, False, True, True, True]])  # the mean counts valid tokens only
    assert units.unit_logits(logits, index, half_padded, "sentence").tolist() == [[1.0, 5.0, 0.5, 0.5, 9.0]]
    assert units.first_of_unit(torch.tensor([[0, 0, 1, 2, 2, 2]])).tolist() == [[True, False, True, True, False,
                                                                                 False]]


def test_the_capacity_cut_keeps_the_best_units_whole_and_the_newer_on_ties():
    keep = torch.tensor([[True, True, True, True, True, True]])
    index = torch.tensor([[0, 0, 1, 1, 1, 2]])  # units of 2, 3 and 1 tokens
    scores = torch.tensor([[2.0, 0.0, 1.0, 1.0, 1.0, 1.0]])  # best tokens: 2, 1, 1
    assert units.cap_units(keep, scores, index, capacity=6) is keep  # everything fits: unchanged
    # 5 tokens: unit 0 (best, 2 tokens), then unit 2 (newer of the two tied, 1 token); unit 1 (3) no longer fits
    assert units.cap_units(keep, scores, index, capacity=5).tolist() == [[True, True, False, False, False, True]]
    # in rank order as far as they fit: once the best unit does not fit, no lower one jumps the queue
    assert units.cap_units(keep, scores, index, capacity=1).tolist() == [[False] * 6]
    newest_best = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 3.0]])
    assert units.cap_units(keep, newest_best, index, capacity=1).tolist() == [[False] * 5 + [True]]
    # tokens not among the candidates neither count nor come back
    partial = torch.tensor([[True, False, True, True, True, False]])
    assert units.cap_units(partial, scores, index, capacity=1).tolist() == [[True] + [False] * 5]
    assert units.cap_units(partial, scores, index, capacity=3).tolist() == [[True] + [False] * 5]
    assert units.cap_units(torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long),
                           capacity=0).shape == (0, 0)


def test_boundary_tables_are_read_once_per_tokenizer_and_again_for_a_larger_vocabulary(tokenizer, monkeypatch):
    monkeypatch.setattr(units, "_tables", type(units._tables)())
    starts, ends, sentence_ends = units.boundary_tables(tokenizer, 256)
    assert starts.shape == ends.shape == sentence_ends.shape == (len(tokenizer),)
    space, letter, stop = (tokenizer(text, add_special_tokens=False).input_ids[0] for text in (" ", "a", "."))
    assert starts[space] and ends[space] and not starts[letter] and not ends[letter] and sentence_ends[stop]
    assert not sentence_ends[space] and not sentence_ends[letter]
    assert starts[tokenizer.eos_token_id] and sentence_ends[tokenizer.eos_token_id]  # specials end everything
    assert starts[tokenizer.pad_token_id] and ends[tokenizer.pad_token_id]  # every special, not only the first
    partial = [i for i in range(256) if tokenizer.decode([i]) == "\ufffd"]  # a byte of a multi-byte character
    assert partial and not starts[partial].any() and not ends[partial].any()
    assert units.boundary_tables(tokenizer, 256)[0] is starts  # cached
    larger = units.boundary_tables(tokenizer, len(tokenizer) + 4)[0]
    assert larger.shape == (len(tokenizer) + 4,) and not larger[-1]  # ids past the tokenizer: no boundary


def test_token_units_number_each_row_from_0_and_ids_outside_the_tables_are_read_at_its_edges(tokenizer):
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    assert units.unit_index(ids, valid, "token", tokenizer, 256).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert units.unit_index(ids[:, :0], valid[:, :0], "word", tokenizer, 256).shape == (2, 0)
    space = tokenizer(" ", add_special_tokens=False).input_ids[0]
    size = units.boundary_tables(tokenizer, 256)[0].shape[0]
    # an id past the tables reads as the last id (a special: a boundary), a negative one as id 0
    outside = torch.tensor([[65, 66, size + 40, 67, -3, 68, space, 69]])
    inside = torch.tensor([[65, 66, size - 1, 67, 0, 68, space, 69]])
    ones = torch.ones_like(outside, dtype=torch.bool)
    for unit in ("word", "sentence"):
        assert torch.equal(units.unit_index(outside, ones, unit, tokenizer, 256),
                           units.unit_index(inside, ones, unit, tokenizer, 256))


def test_long_sentences_are_cut_per_row(tokenizer):
    """Each row counts its own sentence's length: row 1's sentence starts later than row 0's."""
    n = units.MAX_SENTENCE_TOKENS
    letter, stop = (tokenizer(text, add_special_tokens=False).input_ids[0] for text in ("a", "."))
    rows = torch.full((2, n + 10), letter)
    rows[1, 4] = stop  # row 1: a new sentence starts at 5
    index = units.unit_index(rows, torch.ones_like(rows, dtype=torch.bool), "sentence", tokenizer, 256)
    assert index[0].tolist() == [0] * n + [1] * 10
    assert index[1].tolist() == [0] * 5 + [1] * n + [2] * 5


@pytest.mark.integration
def test_kept_text_of_multi_token_names_on_the_default_model(default_backbone):
    """On the real tokenizer: names of several tokens (not one of bAbI's) come out whole."""
    model, tokenizer = default_backbone
    memory_model = memlm.attach(model, ImportanceConfig(keep_unit="word", max_memory_size=64), tokenizer=tokenizer)
    memory = memory_model.memories["importance"]
    text = "Then Oluwaseun Adeyemi-Okafor travelled to the Lindqvist Gallery. Nobody noticed the rain."
    pieces = {tokenizer.decode([token]) for token in tokenizer(" Oluwaseun Lindqvist").input_ids}
    assert len(pieces) >= 4  # both names are several sub-word tokens
    last_pieces = [tokenizer.decode([tokenizer(" " + name).input_ids[-1]]) for name in ("Oluwaseun", "Lindqvist")]
    chosen = torch.tensor([tokenizer(" " + name).input_ids[-1] for name in ("Oluwaseun", "Lindqvist")])

    def score(hidden_states, mask=None):  # only the last piece of each name rates high
        return torch.where(torch.isin(memory.context.input_ids, chosen), 6.0, -6.0)

    memory.scorer.forward = score
    memory_model.memorize(text, segment_length=64, progress=False)
    kept = "".join(item["text"] for item in memory.kept_tokens(row=0))
    assert kept == " Oluwaseun Lindqvist", (kept, last_pieces)
    memory_model.detach()


def test_boundaries_read_each_tokens_raw_text_even_from_a_tokenizer_that_cleans_up_spaces():
    """Boundaries come from each token's own text: a tokenizer that cleans up spaces by default (a
    WordPiece one, or any with the cleanup forced) must not turn " n't" into "n't" (which would no
    longer start a word); only trailing spaces are ignored when reading a sentence's end."""
    from tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([" n't", ". ", "?X"])
    tokenizer.clean_up_tokenization_spaces = True
    tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    assert tokenizer.decode(tokenizer.convert_tokens_to_ids([" n't"])) == "n't"  # the cleanup is on
    starts, ends, sentence_ends = units.boundary_tables(tokenizer, len(tokenizer))
    nt, stop_space, odd = tokenizer.convert_tokens_to_ids([" n't", ". ", "?X"])
    newline = tokenizer("\n", add_special_tokens=False).input_ids[0]
    assert starts[nt] and not ends[nt]
    assert sentence_ends[stop_space] and sentence_ends[newline]  # ". " ends one (its space ignored), so does "\n"
    assert not sentence_ends[odd]  # only spaces are stripped before looking for the end


def test_ids_below_and_above_the_tables_read_as_the_first_and_last_ids():
    class Vocabulary:  # a tokenizer whose boundary tables are already read (cached)
        pass

    vocabulary = Vocabulary()
    starts = torch.tensor([True, False, False, False, False, False])  # only id 0 starts a word
    ends = torch.tensor([False, False, False, False, False, True])  # only the last id (5) ends one
    tables = type(units._tables)()
    tables[vocabulary] = (starts, ends, torch.zeros(6, dtype=torch.bool))
    ids = torch.tensor([[2, -1, 2, 9, 2]])  # -1 reads as id 0 (a start), 9 as id 5 (an end)
    valid = torch.ones_like(ids, dtype=torch.bool)
    original = units._tables
    units._tables = tables
    try:
        assert units.unit_index(ids, valid, "word", vocabulary, vocab_size=6).tolist() == [[0, 1, 1, 1, 2]]
    finally:
        units._tables = original


def test_the_capacity_cut_with_every_token_a_unit_keeps_the_newest_of_many_ties():
    # More tied units than a small sort keeps in order by chance: the sort must be stable.
    length, capacity = 64, 20
    keep = torch.ones(1, length, dtype=torch.bool)
    index = torch.arange(length)[None]  # every token a unit of its own, the last unit index used too
    scores = torch.zeros(1, length)
    scores[0, ::3] = 1.0  # every third unit rates higher; the rest tie
    kept = units.cap_units(keep, scores, index, capacity)
    best = scores[0] > 0  # 22 units of the higher score, more than fit: the newest 20 of them
    expected = torch.zeros(length, dtype=torch.bool)
    expected[best.nonzero().flatten()[-capacity:]] = True
    assert kept[0].tolist() == expected.tolist()
    scores[0, -1] = 5.0  # the newest unit (the last index) rates best: kept first
    assert units.cap_units(keep, scores, index, capacity=1)[0].nonzero().flatten().tolist() == [length - 1]


def test_a_candidate_unit_is_ranked_by_its_candidate_tokens_only():
    # Unit 0 has one candidate (score 0) and a token that is not one; unit 1 (score 5) is better.
    keep = torch.tensor([[True, False, True]])
    index = torch.tensor([[0, 0, 1]])
    scores = torch.tensor([[0.0, 0.0, 5.0]])
    assert units.cap_units(keep, scores, index, capacity=1).tolist() == [[False, False, True]]
