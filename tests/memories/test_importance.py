"""Behaviour specific to the `importance` memory (AutoMemoryModule): selection, riding along,
provenance, learning the scorer, and the standalone module's original API."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import randomize_memory_weights, token_batch
from tiny import tiny_model

import memlm
from memlm.memories.importance import AutoMemoryModule, ImportanceConfig, cap_tokens, select_tokens


@pytest.mark.parametrize("options", [
    {"threshold": 0.0}, {"threshold": 1.0}, {"threshold": "high"}, {"max_memory_size": 0},
    {"max_memory_size": -3}, {"max_memory_size": 10**6}, {"context_tokens": -1}, {"exploration": 1.0},
    {"label_weight": -1.0}, {"hidden_dim": 0}, {"retention": -0.1}, {"retention": 1.5}, {"retention": "all"},
])
def test_invalid_configs_are_refused(options):
    with pytest.raises(memlm.ConfigError, match="importance"):
        ImportanceConfig(**options)


def test_selection_keeps_what_reaches_the_threshold_highest_first_ties_to_the_newer():
    logits = torch.logit(torch.tensor([[0.9, 0.4, 0.7, 0.7, 0.95, 0.5]]))
    valid = torch.tensor([[True, True, True, True, False, True]])  # position 4 is padding
    keep, drawn = select_tokens(logits, valid, capacity=3, threshold=0.5)
    assert drawn.tolist() == [[True, False, True, True, False, True]]
    assert keep.tolist() == [[True, False, True, True, False, False]]  # 0.5 is the lowest of four
    keep, _ = select_tokens(logits, valid, capacity=2, threshold=0.5)
    assert keep.tolist() == [[True, False, False, True, False, False]]  # 0.7 twice: the newer one
    assert cap_tokens(torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4), 1).tolist() == [[False] * 3 + [True]]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])  # gpt2's positions are absolute: given ones must arrive
def test_untrained_it_keeps_nothing_and_the_backbone_reads_its_own_input(architecture):
    backbone = tiny_model(architecture)
    memory_model = memlm.attach(backbone, "importance")
    memory_model.memorize(token_batch(2, length=40), segment_length=16, progress=False)
    memory = memory_model.memories["importance"]
    assert memory.kept_tokens() == [] and memory.summary()["segments"] == 3
    assert memory.summary()["kept_tokens"] == [0, 0]
    # Left padding, its mask and the caller's positions reach the backbone as given.
    ids, mask = token_batch(2, length=6), torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = backbone(ids, attention_mask=mask, position_ids=positions).logits
    got = memory_model(ids, attention_mask=mask, position_ids=positions, write_memory=False).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()])


def _padded(tokenizer, texts):
    """Token ids of each text, right-padded to the longest, with their mask."""
    rows = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)], mask[row, :len(tokens)] = torch.tensor(tokens), 1
    return ids, mask


def _keeping(memory_model, characters, tokenizer):
    """Make the scorer keep exactly these characters' tokens (whatever their context), as a trained one would."""
    memory = memory_model.memories["importance"]
    chosen = {tokenizer(c, add_special_tokens=False).input_ids[0] for c in characters}

    def score(hidden_states, mask=None):
        ids = memory.context.input_ids
        return torch.where(torch.isin(ids, torch.tensor(sorted(chosen))), 5.0, -5.0)

    memory.scorer.forward = score
    return memory


def test_kept_tokens_ride_along_in_front_of_the_next_segment_with_their_provenance(tokenizer):
    backbone = tiny_model("llama")
    memory_model = memlm.attach(backbone, ImportanceConfig(max_memory_size=4, keep_unit="token"),
                                  tokenizer=tokenizer)
    memory_model.set_provenance(user="ada", session="s1")
    memory = _keeping(memory_model, "KQ", tokenizer)
    memory_model.memorize("abK cdQ ef", segment_length=5, progress=False)  # "abK c", "dQ ef"
    items = memory.kept_tokens()
    assert [(i["text"], i["position"], i["segment"], i["user"], i["session"]) for i in items] == [
        ("K", 2, 0, "ada", "s1"), ("Q", 6, 1, "ada", "s1")]
    assert all(i["score"] > 0.99 for i in items)
    # The next segment reads "KQ" first: the same logits as the backbone reading it for real.
    probe = tokenizer("xyz", return_tensors="pt").input_ids
    expected = backbone(torch.cat([tokenizer("KQ", return_tensors="pt").input_ids, probe], dim=1)).logits[:, 2:]
    torch.testing.assert_close(memory_model(probe, write_memory=False).logits, expected)
    assert [i["text"] for i in memory.search("q")] == ["Q"]
    assert memory.delete(text="K") == 1 and [i["text"] for i in memory.kept_tokens()] == ["Q"]


def test_kept_text_reads_runs_adjacent_in_the_stream_as_one_and_marks_the_gaps(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(max_memory_size=8, keep_unit="token"),
                                tokenizer=tokenizer)
    memory = _keeping(memory_model, "KQR", tokenizer)
    memory_model.memorize(*_padded(tokenizer, ["abKQ cdR", "xyzzy R"]), segment_length=5, progress=False)
    assert [memory.kept_text(0), memory.kept_text(1), memory.kept_text(2)] == ["KQ … R", "R", ""]  # no row 2
    memory_model.reset(batch_size=1)
    assert memory.kept_text(0) == ""


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])  # gpt2: each row's positions restart at its own first
def test_rows_keeping_different_amounts_each_read_only_their_own_kept_tokens(tokenizer, architecture):
    backbone = tiny_model(architecture)
    memory_model = memlm.attach(backbone, ImportanceConfig(max_memory_size=4, keep_unit="token"), tokenizer=tokenizer)
    _keeping(memory_model, "KQR", tokenizer)
    memory_model.memorize(*_padded(tokenizer, ["abKQ cdR", "xyzzy K"]), segment_length=5, progress=False)
    probe = tokenizer(["xyz", "xyz"], return_tensors="pt").input_ids
    read = memory_model(probe, write_memory=False).logits
    for row, kept in enumerate(["KQR", "K"]):  # left padding in front of row 1's one token is masked out
        alone = torch.cat([tokenizer(kept, return_tensors="pt").input_ids, probe[:1]], dim=1)
        torch.testing.assert_close(read[row], backbone(alone).logits[0, len(kept):])


def test_while_training_the_tokens_of_a_unit_share_one_draw():
    torch.manual_seed(0)
    unit = torch.tensor([[0, 0, 0, 3, 3, 5, 6, 6, 6, 6]]).expand(200, -1)  # each token's unit: its first token
    logits = torch.zeros(200, 10)  # a coin toss per unit
    drawn, same = select_tokens(logits, torch.ones(200, 10, dtype=torch.bool), 10, 0.5, exploration=0.1, unit=unit)
    assert torch.equal(drawn, same)
    assert torch.equal(drawn, drawn.gather(1, unit))  # every token drawn as its unit's first
    assert 0.35 < drawn[:, 0].float().mean() < 0.65 and drawn[:, 0].ne(drawn[:, 3]).any()  # units draw apart


def test_padding_is_never_kept_and_does_not_change_the_scores_of_real_tokens(tokenizer):
    torch.manual_seed(0)
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(max_memory_size=64, keep_unit="token"),
                                tokenizer=tokenizer)
    randomize_memory_weights(memory_model, scale=0.3)
    memory = memory_model.memories["importance"]
    ids, mask = _padded(tokenizer, ["abcdefgh", "abc"])
    scores = []
    for padding in (0, 7):  # the same rows with other tokens where the mask says padding
        memory_model.reset(batch_size=2)
        memory_model(ids.masked_fill(mask == 0, padding), attention_mask=mask)
        scores.append(memory.last_write["scores"][mask.bool()])
    torch.testing.assert_close(scores[0], scores[1])
    memory.scorer.forward = lambda hidden_states, mask=None: torch.full(hidden_states.shape[:2], 5.0)  # keep all
    memory_model.reset(batch_size=2)
    memory_model(ids, attention_mask=mask)
    assert memory.summary()["kept_tokens"] == [8, 3]


def test_a_write_from_embeddings_keeps_nothing_and_a_new_batch_size_needs_a_reset(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="token"), tokenizer=tokenizer)
    embeddings = memory_model.backbone.get_input_embeddings()(token_batch(2, length=6))
    memory_model(inputs_embeds=embeddings)  # nothing to name the kept tokens by: nothing is kept
    assert memory_model.memories["importance"].kept_tokens() == []
    memory_model(token_batch(2, length=6))  # untrained: keeps nothing, but holds state for two rows
    with pytest.raises(memlm.MemoryStateError, match="reset"):
        memory_model(token_batch(3, length=6))


def test_while_training_the_last_score_is_not_retained_and_the_cut_keeps_whole_words(tokenizer):
    torch.manual_seed(0)
    config = ImportanceConfig(max_memory_size=4, keep_unit="token", retention=1.0, exploration=0.0)
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer).train()
    memory = _rescoring_low(memory_model, "K", tokenizer, rescored=1e-4)
    memory_model.memorize("abK cdefgh", segment_length=5, progress=False)
    assert memory.kept_tokens() == []  # the draw follows the new score, 1e-4, whatever the last one was
    words = memlm.attach(tiny_model("llama"), ImportanceConfig(max_memory_size=2, keep_unit="word"),
                         tokenizer=tokenizer).train()
    kept = _keeping(words, "abcdefghijklmnopqrstuvwxyz", tokenizer)
    words.memorize("ab cde fg hij", segment_length=32, progress=False)
    assert "".join(item["text"] for item in kept.kept_tokens()) == "hij"  # 4 = 2 x max_memory_size: one word


def test_while_training_each_unit_decides_once_and_the_budget_counts_real_tokens_only(tokenizer):
    config = ImportanceConfig(max_memory_size=2, keep_unit="word", budget_weight=0.5)
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer).train()
    memory = memory_model.memories["importance"]
    memory.scorer.forward = lambda hidden_states, mask=None: torch.zeros(hidden_states.shape[:2])  # p = 0.5 each
    texts = ["ab cde fg", "hij kl"]
    ids, mask = _padded(tokenizer, texts)
    memory_model(ids, attention_mask=mask)
    log_probs, decisions = memory.decision_log_probs
    # One decision per unit, per row: the words and, on this byte-level tokenizer, each lone space.
    assert decisions.tolist() == [5.0, 3.0]
    torch.testing.assert_close(log_probs, decisions * math.log(0.5))  # each drawn or not at p = 0.5
    expected = 0.5 * mask.sum(-1).float()  # tokens each row expects to keep: padding counts for nothing
    budget = 0.5 * (torch.relu(expected - 2) / 2).mean()
    torch.testing.assert_close(memory_model.auxiliary_loss(), budget)


def test_kept_tokens_carry_their_relevance_labels_into_the_next_segment(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="token"), tokenizer=tokenizer)
    memory = _keeping(memory_model, "KQ", tokenizer)
    ids = tokenizer("abKQ", return_tensors="pt").input_ids
    memory_model.write(ids, token_labels=torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # K relevant, Q kept anyway
    assert [i["text"] for i in memory.kept_tokens()] == ["K", "Q"]
    assert memory.kept_labels.tolist() == [[1.0, 0.0]]


def test_a_zero_label_weight_adds_no_loss_term():
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(label_weight=0.0, keep_unit="token"))
    segment = token_batch(2, length=8)
    memory_model.write(segment, token_labels=(segment >= 200).float())  # evaluation: no budget term either
    assert memory_model.auxiliary_loss() is None


def test_the_cut_takes_an_empty_batch():
    assert cap_tokens(torch.zeros(0, 5, dtype=torch.bool), torch.zeros(0, 5), 2).shape == (0, 5)


def test_at_most_max_memory_size_tokens_are_kept_newest_winning_ties(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(max_memory_size=3, keep_unit="token"),
                                  tokenizer=tokenizer)
    memory = _keeping(memory_model, "ABCDE", tokenizer)
    memory_model.memorize("A.B.C.D.E.", segment_length=4, progress=False)
    assert "".join(i["text"] for i in memory.kept_tokens()) == "CDE"  # equal scores: the newest three
    assert memory_model.prefix_length() == 3  # what a segment must leave room for in its window


def _rescoring_low(memory_model, character, tokenizer, rescored):
    """A scorer that keeps `character` when it is read in a segment, then scores it `rescored` as a kept token."""
    memory = memory_model.memories["importance"]
    chosen = tokenizer(character, add_special_tokens=False).input_ids[0]

    def score(hidden_states, mask=None):
        ids = memory.context.input_ids
        in_prefix = torch.arange(ids.shape[1]) < memory._prefix_length
        return torch.where(ids == chosen, torch.where(in_prefix, torch.logit(torch.tensor(rescored)), 5.0), -5.0)

    memory.scorer.forward = score
    return memory


@pytest.mark.parametrize(("retention", "survives"), [(0.0, False), (0.45, False), (0.9, True), (1.0, True)])
def test_retention_carries_a_kept_token_over_low_rescorings(tokenizer, retention, survives):
    config = ImportanceConfig(max_memory_size=4, keep_unit="token", retention=retention)
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer)
    memory = _rescoring_low(memory_model, "K", tokenizer, rescored=0.3)  # below the 0.5 threshold
    memory_model.memorize("abK cdefghijklm", segment_length=5, progress=False)  # K is rescored twice
    kept = memory.kept_tokens()
    assert [i["text"] for i in kept] == (["K"] if survives else [])
    if survives:  # the score it kept: the larger of 0.3 and `retention` times the last, twice over
        expected = max(0.3, retention * retention * torch.sigmoid(torch.tensor(5.0)).item())
        assert kept[0]["score"] == pytest.approx(expected, abs=1e-4)


def test_retained_tokens_still_give_way_to_the_capacity_cut(tokenizer):
    config = ImportanceConfig(max_memory_size=2, keep_unit="token", retention=1.0)
    memory_model = memlm.attach(tiny_model("llama"), config, tokenizer=tokenizer)
    memory = _keeping(memory_model, "ABCD", tokenizer)
    memory_model.memorize("A.B.C.D.", segment_length=4, progress=False)
    assert "".join(i["text"] for i in memory.kept_tokens()) == "CD"  # equal scores: the newest two


def test_a_write_that_needs_only_early_layers_stops_there():
    backbone = tiny_model("llama", num_layers=4)
    memory_model = memlm.attach(backbone, ImportanceConfig(score_layer=1))
    calls = []
    handles = [layer.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, layer in
               enumerate(memory_model.layout.layers)]
    memory_model.write(token_batch(1, length=8))
    assert calls == [0, 1]  # layers 2 and 3 were not needed
    calls.clear()
    memlm.attach(memory_model.detach(), ["importance", "recurrent"]).write(token_batch(1, length=8))
    assert calls == [0, 1, 2, 3]  # recurrent reads the final states: the whole pass runs
    for handle in handles:
        handle.remove()


def test_relevance_labels_train_the_scorer_and_bad_labels_are_refused():
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(score_layer=0))
    memory_model.train()
    segment = token_batch(2, length=10)
    labels = (segment >= 200).float()
    memory_model.write(segment, token_labels=labels)
    loss = memory_model.auxiliary_loss()
    assert loss is not None and loss.item() > 0
    loss.backward()
    assert memory_model.memories["importance"].scorer.out.weight.grad.abs().sum() > 0
    assert memory_model.auxiliary_loss() is None  # handed over once
    with pytest.raises(memlm.IncompatibleMemoryError, match="token_labels"):
        memory_model.write(segment, token_labels=labels[:, :5])
    # Rows that kept different amounts carry padded labels into the next segment: the loss stays finite.
    torch.manual_seed(0)
    memory_model.reset(batch_size=2)
    for seed in (1, 2, 3):
        segment = token_batch(2, length=10, seed=seed)
        memory_model.write(segment, token_labels=(segment >= 200).float())
    kept = memory_model.memories["importance"].kept_mask.sum(-1)
    assert kept[0] != kept[1] and torch.isfinite(memory_model.auxiliary_loss())


def test_the_scorer_learns_from_a_later_loss_to_keep_the_token_it_needs():
    """A key (one of ten tokens) hides at a random place in segment 1; segment 2 must say it. No
    labels: only REINFORCE on segment 2's loss tells the scorer which tokens were worth keeping."""
    torch.manual_seed(0)
    memory_model = memlm.attach(tiny_model("llama", hidden_size=64),
                                ImportanceConfig(max_memory_size=2, score_layer=0, context_tokens=1))
    memory = memory_model.memories["importance"]
    scorer = set(map(id, memory.parameters()))
    optimizer = torch.optim.Adam([
        {"params": [p for p in memory_model.parameters() if id(p) not in scorer], "lr": 3e-3},
        {"params": list(memory.parameters()), "lr": 1e-3}])
    keys = torch.arange(100, 110)

    def episode(size):
        key = keys[torch.randint(0, 10, (size,))]
        segment1 = torch.randint(0, 90, (size, 8))
        segment1[torch.arange(size), torch.randint(0, 8, (size,))] = key
        memory_model.reset()
        memory_model.write(segment1)
        logits = memory_model(torch.full((size, 4), 200), write_memory=False).logits[:, -1]
        return key, torch.nn.functional.cross_entropy(logits, key, reduction="none")

    memory_model.train()
    torch.manual_seed(1)
    for _ in range(600):
        _, row_losses = episode(32)
        loss = row_losses.mean() + memory_model.auxiliary_loss(row_losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    memory_model.eval()
    with torch.no_grad():
        key, row_losses = episode(256)
    kept_key = (memory.kept_ids == key[:, None]).any(-1).float().mean().item()
    kept = memory.kept_mask.sum(-1).float().mean().item()
    assert kept_key > 0.6 and kept < 1.6  # the key, and little else, at the inference threshold
    assert row_losses.mean().item() < 0.5 * math.log(10)


class SentenceModel(torch.nn.Module):
    """The AutoMemoryModule's original usage example: embedding -> memory -> LSTM -> linear."""

    def __init__(self, vocab_size, token_dim, hidden_dim, max_memory_size):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, token_dim)
        self.memory_module = AutoMemoryModule(token_dim, hidden_dim, max_memory_size)
        self.lstm = torch.nn.LSTM(token_dim, hidden_dim, batch_first=True)
        self.fc = torch.nn.Linear(hidden_dim, vocab_size)

    def forward(self, sentence_tokens, memory_context):
        embedded_tokens = self.embedding(sentence_tokens)
        memory_context, _ = self.memory_module(embedded_tokens, memory_context)
        lstm_output, _ = self.lstm(memory_context)
        return self.fc(lstm_output[:, -1])


def test_the_original_usage_example_trains_and_its_loss_falls():
    words = ["the", "cat", "dog", "sat", "ran", "on", "mat", "log", "fast", "slow", "home", "park"]
    vocab = {word: index + 1 for index, word in enumerate(words)}  # 0 is padding
    rng = torch.Generator().manual_seed(0)
    sentences = []
    for _ in range(64):  # "the cat sat on the mat" -> the next word names the animal's place
        animal = ["cat", "dog"][int(torch.randint(0, 2, (1,), generator=rng))]
        verb = ["sat", "ran"][int(torch.randint(0, 2, (1,), generator=rng))]
        sentences.append(["the", animal, verb, "on", "the", "mat" if animal == "cat" else "log"])
    inputs = torch.tensor([[vocab[w] for w in s[:-1]] for s in sentences])
    targets = torch.tensor([vocab[s[-1]] for s in sentences])
    torch.manual_seed(0)
    model = SentenceModel(len(vocab) + 1, token_dim=16, hidden_dim=32, max_memory_size=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(60):
        loss = loss_fn(model(inputs, None), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    context, scores = model.memory_module(model.embedding(inputs[:2]), None)
    assert context.shape == (2, 4, 16) and scores.shape == (2, 5)  # memory first, then the new tokens
    carried, scores = model.memory_module(model.embedding(inputs[:2]), context)  # the second call reads it
    assert carried.shape == (2, 4, 16) and scores.shape == (2, 9)
    with pytest.raises(memlm.ConfigError, match="width"):
        model.memory_module(torch.zeros(2, 3, 7), None)


def test_tokens_can_be_added_by_hand_within_capacity(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(max_memory_size=3, keep_unit="token"),
                                  tokenizer=tokenizer)
    memory = memory_model.memories["importance"]
    memory.add_tokens(tokenizer("abcd", return_tensors="pt").input_ids, score=0.9)
    assert "".join(i["text"] for i in memory.kept_tokens()) == "bcd"  # capacity 3: the newest win ties
    memory.add_tokens(tokenizer("Z", return_tensors="pt").input_ids, score=0.95)
    assert "".join(i["text"] for i in memory.kept_tokens()) == "cdZ"  # the best three, in stream order
    assert [i["position"] for i in memory.kept_tokens()] == [2, 3, 4]
    memory.add_tokens(tokenizer("Y", return_tensors="pt").input_ids, score=0.5)
    assert "".join(i["text"] for i in memory.kept_tokens()) == "cdZ"  # newer, but rated lower: dropped


def test_tokens_kept_by_hand_per_row_or_from_one_list_follow_the_stream_so_far(tokenizer):
    memory_model = memlm.attach(tiny_model("llama"), ImportanceConfig(max_memory_size=4, keep_unit="token"),
                                tokenizer=tokenizer)
    memory = memory_model.memories["importance"]
    memory_model.write(token_batch(2, length=6))  # untrained: keeps nothing, but 6 tokens of each row went by
    assert memory.kept_ids.shape == (2, 0)
    memory.add_tokens(torch.tensor([[65, 66], [67, 68]]))  # one pair per row
    assert [(i["row"], i["token"], i["position"]) for i in memory.kept_tokens()] == [
        (0, 65, 6), (0, 66, 7), (1, 67, 6), (1, 68, 7)]
    fresh = memlm.attach(tiny_model("llama"), ImportanceConfig(keep_unit="token")).memories["importance"]
    fresh.add_tokens(torch.tensor([70, 71]))  # a plain list of ids: one row, rated 1.0 unless told
    assert [(i["row"], i["token"], i["position"], i["score"]) for i in fresh.kept_tokens()] == [
        (0, 70, 0, 1.0), (0, 71, 1, 1.0)]


@pytest.mark.parametrize("length", [16, 2048])
def test_the_reinforce_term_does_not_grow_with_the_number_of_decisions(length):
    """A 16K-token sample makes 16K keep-or-drop decisions; a term that summed their log-probabilities
    grew with the length until one update threw the scores to NaN (seen on the GPU at 4K tokens)."""
    torch.manual_seed(0)
    memory_model = memlm.attach(tiny_model("llama", hidden_size=64), ImportanceConfig(
        max_memory_size=4, score_layer=0, label_weight=0.0, budget_weight=0.0))
    memory_model.train()
    memory_model.write(torch.randint(0, 250, (8, length)))
    row_losses = torch.linspace(0.0, 7.0, 8)  # a wide spread of later losses
    term = memory_model.auxiliary_loss(row_losses)
    assert torch.isfinite(term) and abs(float(term)) < 15  # per decision: at most |log(exploration)|
    term.backward()
    scorer_grads = [p.grad.norm() for p in memory_model.memories["importance"].parameters() if p.grad is not None]
    assert scorer_grads and max(float(g) for g in scorer_grads) < 50
