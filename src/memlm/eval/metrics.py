"""Generation metrics: thin, typed wrappers around sacrebleu, rouge-score and bert-score.

Nothing here re-implements a metric; each function validates its input, calls the reference
library with fixed, documented settings and returns plain floats, so numbers are comparable with
papers that use the same libraries. BERTScore runs on the offline all-MiniLM-L6-v2 folder
(`memlm.embeddings.minilm_path()`), so no model hub is contacted.

Example:
    >>> from memlm.eval.metrics import generation_metrics
    >>> scores = generation_metrics(["the cat sat on the mat"], ["the cat sat on the mat"], with_bertscore=False)
    >>> round(scores["bleu"], 2), scores["rouge1"], scores["rouge2"], scores["rougeL"]
    (100.0, 1.0, 1.0, 1.0)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memlm.errors import ConfigError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# BERTScore's layer. bert-score ships no tuned layer for MiniLM (its `model2layers` table only covers
# models it scored against WMT16 human judgements, which are not available offline), so we pick it
# from what this model is: all-MiniLM-L6-v2's *last* layer (6) is the one sentence-transformers trained
# contrastively for semantic similarity. That is unlike MLM-pretrained encoders, whose top layer
# specialises in word prediction and is why bert-score's tuned layers sit below the top for them
# (distilbert-base-uncased: 5 of 6). On a probe set, layer 6 also separates unrelated pairs
# (F1 ~0.1-0.15) from paraphrases (~0.85-0.9) far better than layers 3-5 (unrelated ~0.32-0.42),
# which matters because we cannot rescale with a baseline offline.
MINILM_BERTSCORE_LAYER = 6

_scorers: dict[tuple[str, int, str], Any] = {}
_scorers_lock = threading.Lock()


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """Both must be non-empty sequences of strings of the same length (a bare string is refused:
    it is a sequence of characters, and scoring it character by character would be silently wrong)."""
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise ConfigError(f"{name} must be a list of strings, got {type(texts).__name__}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigError(f"{name}[{index}] must be a string, got {type(text).__name__}")
    if len(hypotheses) != len(references):
        raise ConfigError(
            f"hypotheses and references must pair up one to one: got {len(hypotheses)} hypotheses "
            f"and {len(references)} references")
    if not hypotheses:
        raise ConfigError("hypotheses and references are empty: there is nothing to score")
    return list(hypotheses), list(references)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0..100) from sacrebleu with its default settings (13a tokenisation, exp smoothing),
    one reference per hypothesis.

    Example:
        >>> bleu(["the cat sat on the mat"], ["the cat sat on a mat"])  # (5/6 * 3/5 * 2/4 * 1/3) ** 0.25
        53.728...
    """
    import sacrebleu

    hypotheses, references = _check_pairs(hypotheses, references)
    # sacrebleu takes a list of reference *streams*; one stream = one reference per hypothesis.
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (0..1) from rouge-score with Porter stemming, averaged over pairs.

    Example:
        >>> rouge(["the cat sat"], ["the cat sat on the mat"])["rouge1"]  # P=1, R=1/2 -> F1=2/3
        0.666...
    """
    from rouge_score import rouge_scorer

    hypotheses, references = _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        scores = scorer.score(reference, hypothesis)  # rouge-score's order is (target, prediction)
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    return {kind: totals[kind] / len(hypotheses) for kind in ROUGE_TYPES}


def bertscorer(device: str = "cpu", path: str | Path | None = None, num_layers: int = MINILM_BERTSCORE_LAYER):
    """The shared `bert_score.BERTScorer` on the offline MiniLM folder, loaded once per (path, layer, device)."""
    from bert_score import BERTScorer

    from memlm.embeddings import minilm_path

    resolved = str(Path(path) if path is not None else minilm_path())
    key = (resolved, num_layers, device)
    with _scorers_lock:
        if key not in _scorers:
            # model_type is a local folder, so transformers reads config, weights and tokenizer from disk;
            # no lang/baseline: rescaling needs a per-model baseline file that bert-score lacks for MiniLM.
            _scorers[key] = BERTScorer(model_type=resolved, num_layers=num_layers, device=device,
                                       rescale_with_baseline=False, idf=False)
        return _scorers[key]


def bertscore(hypotheses: Sequence[str], references: Sequence[str], device: str = "cpu") -> dict[str, float]:
    """BERTScore precision/recall/F1 means (raw cosine-based, not baseline-rescaled) on offline MiniLM.

    Raw scores are not comparable with published rescaled roberta-large BERTScores; compare runs
    made with this function only.

    Example:
        >>> bertscore(["The cat sat on the mat."], ["The cat sat on the mat."])["f1"]
        1.0...
    """
    hypotheses, references = _check_pairs(hypotheses, references)
    scorer = bertscorer(device=device)
    precision, recall, f1 = scorer.score(hypotheses, references, batch_size=64)
    return {"p": float(precision.mean()), "r": float(recall.mean()), "f1": float(f1.mean())}


def generation_metrics(hypotheses: Sequence[str], references: Sequence[str], with_bertscore: bool = True,
                       device: str = "cpu") -> dict[str, float]:
    """All generation metrics under flat keys: bleu, rouge1, rouge2, rougeL and, with BERTScore,
    bertscore_p, bertscore_r, bertscore_f1.

    Example:
        >>> generation_metrics(["a b c"], ["a b c"], with_bertscore=False)["rougeL"]
        1.0
    """
    hypotheses, references = _check_pairs(hypotheses, references)
    results: dict[str, float] = {"bleu": bleu(hypotheses, references)}
    results.update(rouge(hypotheses, references))
    if with_bertscore:
        results.update({f"bertscore_{key}": value for key, value in bertscore(hypotheses, references, device).items()})
    return results
