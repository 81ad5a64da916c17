"""Generation metrics against values computed by hand from each library's documented definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memlm.embeddings import minilm_path
from memlm.errors import BackboneNotFoundError, ConfigError
from memlm.eval import metrics


def test_identical_texts_score_perfectly():
    texts = ["the cat sat on the mat", "Einstein developed the theory of relativity ."]
    assert metrics.bleu(texts, texts) == pytest.approx(100.0)
    assert metrics.rouge(texts, texts) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_disjoint_texts_score_zero():
    hypotheses = ["alpha beta gamma delta", "red green blue yellow"]
    references = ["one two three four", "north south east west"]
    assert metrics.bleu(hypotheses, references) == 0.0
    assert metrics.rouge(hypotheses, references) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_bleu_partial_overlap_matches_hand_computed_precisions():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat", equal lengths (brevity penalty 1):
    # 1-grams 5/6 ("the" clipped to one), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3; BLEU = geometric mean.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-6)


def test_rouge_partial_overlap_matches_hand_computed_f1_and_averages_over_pairs():
    # hyp "the cat sat" vs ref "the cat sat on the mat":
    #   rouge1: 3 shared unigrams, P = 3/3, R = 3/6 -> F1 = 2PR/(P+R) = 2/3
    #   rouge2: 2 shared bigrams, P = 2/2, R = 2/5 -> F1 = 4/7
    #   rougeL: LCS 3, same as rouge1 -> 2/3
    # The second pair is identical (1.0 each), so the mean over pairs is (x + 1) / 2.
    scores = metrics.rouge(["the cat sat", "a b c"], ["the cat sat on the mat", "a b c"])
    assert scores["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    assert scores["rouge2"] == pytest.approx((4 / 7 + 1) / 2)
    assert scores["rougeL"] == pytest.approx((2 / 3 + 1) / 2)


def test_rouge_uses_stemming():
    # Porter stemming maps cats->cat, running/runs->run; without it only "the" would match (F1 1/3).
    assert metrics.rouge(["the cats running"], ["the cat runs"])["rouge1"] == pytest.approx(1.0)


def test_generation_metrics_without_bertscore_has_flat_keys():
    scores = metrics.generation_metrics(["the cat sat"], ["the cat sat on the mat"], with_bertscore=False)
    assert set(scores) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert all(isinstance(value, float) for value in scores.values())
    assert scores["rouge1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("hypotheses", "references", "message"),
    [
        (["a", "b"], ["a"], "2 hypotheses and 1 references"),
        ([], [], "empty"),
        ("the cat", "the cat", "list of strings"),
        (["a", 3], ["a", "b"], r"hypotheses\[1\] must be a string"),
        (["a"], [None], r"references\[0\] must be a string"),
    ],
)
def test_bad_input_raises_config_error(hypotheses, references, message):
    for function in (metrics.bleu, metrics.rouge, metrics.bertscore, metrics.generation_metrics):
        with pytest.raises(ConfigError, match=message):
            function(hypotheses, references)


# --- BERTScore on the offline MiniLM ------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer():
    """One BERTScorer for the module (loading MiniLM is the slow part); skipped only if it is not installed."""
    try:
        minilm_path()
    except BackboneNotFoundError as error:
        pytest.skip(str(error))
    return metrics.bertscorer()


def test_bertscore_identical_related_unrelated(scorer):
    identical = metrics.bertscore(["The cat sat on the mat."], ["The cat sat on the mat."])
    assert set(identical) == {"p", "r", "f1"}
    assert identical["f1"] > 0.99
    related = metrics.bertscore(["Einstein developed the theory of relativity."],
                                ["The theory of relativity was developed by Albert Einstein."])["f1"]
    unrelated = metrics.bertscore(["Stock prices fell sharply on Monday."], ["The cat sat on the mat."])["f1"]
    assert related > unrelated + 0.3
    assert related < identical["f1"]


def test_bertscore_scorer_is_loaded_once(scorer):
    assert metrics.bertscorer() is scorer
    assert scorer.num_layers == metrics.MINILM_BERTSCORE_LAYER
    assert metrics.bertscorer(num_layers=metrics.MINILM_BERTSCORE_LAYER - 1) is not scorer


def test_generation_metrics_with_bertscore(scorer):
    scores = metrics.generation_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert set(scores) == {"bleu", "rouge1", "rouge2", "rougeL", "bertscore_p", "bertscore_r", "bertscore_f1"}
    assert scores["bertscore_f1"] > 0.99


def test_bertscore_loads_with_the_hub_offline(scorer, tmp_path):
    # huggingface_hub reads HF_HUB_OFFLINE when imported, so check in a fresh interpreter: with the hub
    # forbidden and an empty HF cache, the score must still come from the local MiniLM folder.
    code = ("import json; from memlm.eval.metrics import bertscore; "
            "print(json.dumps(bertscore(['a red apple'], ['a red apple'])))")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["f1"] > 0.99
