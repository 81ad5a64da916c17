"""The `rag` baseline: text chunks embedded with the offline MiniLM, the top-k put into the prompt.

The plain retrieval-augmented generation every memory mechanism should beat to be worth its keep.
Text is cut into chunks of about `chunk_tokens` tokens on sentence boundaries (a sentence longer
than a chunk is cut by tokens), each chunk is embedded once, and a question retrieves its `top_k`
nearest chunks by cosine similarity (exact FAISS search), shown in document order.

Example:
    >>> rag = RagIndex(tokenizer)
    >>> rag.add("Mary moved to the kitchen. ... long text ...")
    >>> messages = rag.augment([{"role": "user", "content": "Where is Mary?"}], "Where is Mary?")
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from memlm.store.index import FaissFlatIndex

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class RagIndex:
    """Chunks of text with MiniLM vectors; `augment()` puts the best ones in a system message."""

    def __init__(self, tokenizer: Any, chunk_tokens: int = 128, top_k: int = 4, encoder: Any = None,
                 device: str = "cpu"):
        from memlm.embeddings import sentence_encoder

        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.top_k = top_k
        self.encoder = encoder or sentence_encoder(device=device)
        self.chunks: list[str] = []
        self.index = FaissFlatIndex(self.encoder.dimension)

    def reset(self) -> None:
        self.chunks = []
        self.index = FaissFlatIndex(self.encoder.dimension)

    def split(self, text: str) -> list[str]:
        chunks, current, current_tokens = [], [], 0
        for sentence in _SENTENCE_END.split(text.strip()):
            tokens = len(self.tokenizer(sentence, add_special_tokens=False).input_ids)
            if current and current_tokens + tokens > self.chunk_tokens:
                chunks.append(" ".join(current))
                current, current_tokens = [], 0
            if tokens > self.chunk_tokens:  # one very long "sentence": cut it by tokens
                ids = self.tokenizer(sentence, add_special_tokens=False).input_ids
                chunks.extend(self.tokenizer.decode(ids[i:i + self.chunk_tokens])
                              for i in range(0, len(ids), self.chunk_tokens))
                continue
            current.append(sentence)
            current_tokens += tokens
        if current:
            chunks.append(" ".join(current))
        return [chunk for chunk in chunks if chunk.strip()]

    def add(self, text: str, split: bool = True) -> int:
        """Index `text` (cut into chunks unless `split=False`); returns the number of chunks added."""
        chunks = self.split(text) if split else [text.strip()]
        if not chunks:
            return 0
        first = len(self.chunks)
        self.chunks.extend(chunks)
        self.index.add(self.encoder.encode(chunks), np.arange(first, first + len(chunks), dtype=np.int64))
        return len(chunks)

    def search(self, query: str, k: int | None = None) -> list[tuple[int, float]]:
        """(chunk number, cosine) of the best chunks, best first."""
        if not self.chunks:
            return []
        scores, ids = self.index.search(self.encoder.encode([query]), min(k or self.top_k, len(self.chunks)))
        return [(int(i), float(s)) for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True) if i >= 0]

    def augment(self, messages: list[dict[str, str]], query: str) -> list[dict[str, str]]:
        hits = sorted(number for number, _ in self.search(query))  # document order reads more naturally
        if not hits:
            return messages
        passages = "\n\n".join(self.chunks[number] for number in hits)
        block = f"Relevant passages retrieved from earlier text:\n\n{passages}"
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": messages[0]["content"] + "\n\n" + block}, *messages[1:]]
        return [{"role": "system", "content": block}, *messages]
