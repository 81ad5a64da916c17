"""Provenance of what the `knn` memory stores: one record per stored item (user, session, sequence,
position, the text of its span and of a few tokens before it), built from token ids and decoded to
text only when the store writes its rows."""

from __future__ import annotations

from typing import Any

import torch

from memlm.store.kv_store import RecordBatch

CONTEXT_TOKENS = 8  # tokens before an item's span recorded as its context (text search matches it)


class KnnRecords(RecordBatch):
    """Provenance of the items of one write, decoded to text only when the store writes its rows.

    Attention items: one per chunk of `size` tokens from `start`; kNN-LM items (`lm`): one per token
    but the last, recording the token it predicts."""

    def __init__(self, tokens: torch.Tensor, start: int, size: int, lm: bool, user: str | None,
                 session: str | None, sequence: int, tokenizer: Any):
        self.tokens, self.start, self.size, self.lm = tokens, start, size, lm
        self.user, self.session, self.sequence, self.tokenizer = user, session, sequence, tokenizer
        count = tokens.shape[0]
        self.count = count - 1 if lm else -(-count // size)

    def __len__(self) -> int:
        return self.count

    def origins(self) -> torch.Tensor:
        positions = self.start + torch.arange(self.count, dtype=torch.int64) * (1 if self.lm else self.size)
        return torch.stack([torch.full_like(positions, self.sequence), positions], dim=1)

    def _decode(self, spans: list[list[int]]) -> list[str]:
        if self.tokenizer is None:
            return [" ".join(map(str, span)) for span in spans]
        return self.tokenizer.batch_decode(spans, skip_special_tokens=False)

    def materialize(self) -> list[dict[str, Any]]:
        tokens = self.tokens.tolist()
        if self.lm:
            spans = [(t, t + 1) for t in range(self.count)]
            targets = tokens[1:]
        else:
            spans = [(a, min(a + self.size, len(tokens))) for a in range(0, len(tokens), self.size)]
            targets = [tokens[a] for a, _ in spans]
        texts = self._decode([tokens[a:b] for a, b in spans])
        contexts = self._decode([tokens[max(0, a - CONTEXT_TOKENS):b] for a, b in spans])
        return [{"user": self.user, "session": self.session, "sequence": self.sequence, "position": self.start + a,
                 "token": target, "length": b - a, "text": text, "context": context}
                for (a, b), target, text, context in zip(spans, targets, texts, contexts, strict=True)]
