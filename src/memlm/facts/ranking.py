"""How the dense and the lexical rankings of a user's facts become one (hybrid search).

* `dense`: cosine of the retrieval vectors alone;
* `lexical`: BM25 alone;
* `rrf`: reciprocal rank fusion, sum of 1 / (60 + rank) over both lists (Cormack et al., 2009);
* `hybrid:W`: cosine + W x BM25 / (the query's best BM25): the lexical score is scaled to [0, W]
  per query, so it reorders facts the encoder finds close but cannot push an unrelated fact past a
  clear dense winner by more than W.

Which one and which W the bank uses was chosen by measured recall (`benchmarks/retrieval.py`,
docs/bank.md "Hybrid search").
"""

from __future__ import annotations

from collections.abc import Mapping

from memlm.errors import ConfigError

FUSIONS = ("dense", "lexical", "rrf", "hybrid:0.1", "hybrid:0.2", "hybrid:0.3", "hybrid:0.5")
RRF_K = 60


def check_fusion(method: str) -> str:
    if method in ("dense", "lexical", "rrf"):
        return method
    if method.startswith("hybrid:"):
        try:
            weight = float(method.split(":", 1)[1])
        except ValueError:
            weight = -1.0
        if 0.0 <= weight <= 10.0:
            return method
    raise ConfigError(f"bank: retrieval fusion must be dense, lexical, rrf or hybrid:W (0 <= W <= 10), got {method!r}")


def fuse_rankings(dense: list[tuple[int, float]], lexical: list[tuple[int, float]], method: str,
                  cosine: Mapping[int, float] | None = None) -> list[tuple[int, float]]:
    """(id, fused score) best first. `dense` and `lexical` are (id, score) lists, best first;
    `cosine` gives the cosine of ids found only lexically (default: the lowest dense cosine seen)."""
    if method == "dense":
        return list(dense)
    if method == "lexical":
        return list(lexical)
    if method == "rrf":
        scores: dict[int, float] = {}
        for ranking in (dense, lexical):
            for rank, (item, _) in enumerate(ranking):
                scores[item] = scores.get(item, 0.0) + 1.0 / (RRF_K + rank + 1)
        return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    weight = float(method.split(":", 1)[1])
    cosines = dict(dense)
    floor = min(cosines.values(), default=0.0)
    best = max((score for _, score in lexical), default=0.0)
    fused = {item: cos for item, cos in dense}
    for item, score in lexical:
        base = fused.get(item)
        if base is None:
            base = cosine.get(item, floor) if cosine is not None else floor
        fused[item] = base + (weight * score / best if best > 0 else 0.0)
    return sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
