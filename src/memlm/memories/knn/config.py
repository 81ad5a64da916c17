"""The `knn` memory's config: every knob of storing, retrieving and placing past keys, checked when
the config is made (a wrong value fails at `attach`, not deep inside a forward pass)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from memlm.config import MemoryConfig, check_range
from memlm.errors import ConfigError
from memlm.store import BACKENDS
from memlm.store.clusters import SEARCH_OPTIONS, ClusterSearch
from memlm.store.group import KV_EVICTION_POLICIES

ATTENTION_MODES = ("gated", "joint", "off")
POSITION_SCHEMES = ("relative", "fixed")


@dataclass
class KnnConfig(MemoryConfig):
    """Config of the `knn` memory.

    Args:
        attention: "gated" (learned per-head gate, starts at zero), "joint" (training-free: retrieved
            keys join the local softmax) or "off" (only kNN-LM).
        layers: layers with kNN attention: a list of indices, "all", or None for the layer at 3/4 depth.
        top_k: keys retrieved per query and KV head.
        search_every: consecutive kNN-attention layers that share one search: the first of each run of
            `search_every` searches with its own queries; the others read the same items (their own
            layer's keys and values, their own exact logits). Divides the search cost, which grows
            with what is stored, by `search_every`; 1 (the default) searches at every layer.
        knn_lm: also store (hidden state -> next token) pairs and mix a kNN distribution into the logits.
        lm_lambda: weight λ of the kNN distribution, in [0, 1].
        lm_temperature: divides the negative squared distances before the softmax (> 0).
        lm_top_k: neighbours used by kNN-LM.
        backend: vector index backend: torch, faiss-flat, faiss-ivf, faiss-hnsw.
        backend_options: passed to the index (e.g. {"nlist": 1024, "nprobe": 32} for faiss-ivf). For
            `torch`, "dtype" sets the precision of the search keys (default bfloat16): it only
            picks the candidates; attention logits are recomputed from the stored keys exactly.
            Also for `torch`: "search" ("exact", the default, or "clusters") with "page_size",
            "probe_pages", "exact_below" and "min_queries" (memlm.store.clusters): with "clusters",
            above `exact_below` stored items a segment's queries read only the pages of
            k-means-ordered keys whose means rank highest: memorizing stays nearly flat as the store
            grows, but perplexity suffers (docs/benchmarks.md), so it is opt-in.
        capacity: items kept per batch row and layer (None: unbounded); beyond it `eviction` applies.
        eviction: "oldest" or "least_used" (fewest retrievals first).
        chunk_size: average keys/values over this many consecutive tokens before storing them.
        update_freq: write every `update_freq`-th segment only.
        recent: also attend to the `recent` latest items of the current stream, all of them, at
            their true positions (like a sliding window in front of the context); top-k retrieval
            then covers everything older.
        positions: where retrieved keys sit for rotary models (see `memlm.memories.knn.memory`):
            "relative" (their true distance from the query, clamped to `max_distance`) or "fixed"
            (all `memory_distance` tokens before the query).
        memory_distance: the fixed scheme's distance; in the relative scheme, the distance at which
            candidates are searched before their exact logits are computed.
        max_distance: largest distance the relative scheme uses (default: the model's
            max_position_embeddings - 1, so rotations stay in the trained range).
        store: where saved states keep the store: a postgresql:// or milvus:// URL
            (`memlm.store.backends`); None: `MEMLM_STORE` when it is such a URL, else files in the
            state directory (the default). The search itself always runs in device memory.
        store_name: the name the store is saved under in that database (default: the user set by
            `set_provenance`, else the session, else "default"): one name per user keeps them apart.
    """

    mechanism: ClassVar[str] = "knn"

    attention: str = "gated"
    layers: list[int] | str | None = None
    top_k: int = 32
    search_every: int = 1
    knn_lm: bool = False
    lm_lambda: float = 0.1
    lm_temperature: float = 100.0
    lm_top_k: int = 32
    backend: str = "torch"
    backend_options: dict[str, Any] = field(default_factory=lambda: {"dtype": "bfloat16"})
    capacity: int | None = None
    eviction: str = "oldest"
    chunk_size: int = 1
    update_freq: int = 1
    recent: int = 0
    positions: str = "relative"
    memory_distance: int = 512
    max_distance: int | None = None
    store: str | None = None
    store_name: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.store is not None:
            from memlm.store.backends import is_remote

            if not is_remote(self.store):
                raise ConfigError(f"knn: store must be a postgresql:// or milvus:// URL, got {self.store!r} (without "
                                  "one the memory is saved in the state directory)")
        if self.store_name is not None:
            from memlm.store.backends import check_store_name

            check_store_name(self.store_name)
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"knn: attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.attention == "off" and not self.knn_lm:
            raise ConfigError("knn: attention='off' and knn_lm=False leaves nothing to do")
        if not (self.layers is None or self.layers == "all" or
                (isinstance(self.layers, (list, tuple)) and self.layers and
                 all(isinstance(layer, int) for layer in self.layers))):
            raise ConfigError(f"knn: layers must be a non-empty list of integers, 'all' or None, got {self.layers!r}")
        if self.positions not in POSITION_SCHEMES:
            raise ConfigError(f"knn: positions must be one of {POSITION_SCHEMES}, got {self.positions!r}")
        if self.max_distance is not None and (not isinstance(self.max_distance, int) or self.max_distance < 1):
            raise ConfigError(f"knn: max_distance must be a positive integer or None, got {self.max_distance!r}")
        if not isinstance(self.recent, int) or self.recent < 0:
            raise ConfigError(f"knn: recent must be a non-negative integer, got {self.recent!r}")
        for name in ("top_k", "search_every", "lm_top_k", "chunk_size", "update_freq", "memory_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"knn: {name} must be a positive integer, got {value!r}")
        check_range("lm_lambda", self.lm_lambda, 0.0, 1.0, mechanism="knn")
        check_range("lm_temperature", self.lm_temperature, 0.0, math.inf, low_open=True, high_open=True,
                    mechanism="knn")
        search_dtype = self.backend_options.get("dtype")
        if search_dtype is not None and search_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"knn: backend_options dtype must be float32, bfloat16 or float16, got {search_dtype!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"knn: backend must be one of {BACKENDS}, got {self.backend!r}")
        search_options = sorted(set(SEARCH_OPTIONS) & set(self.backend_options))
        if search_options and self.backend != "torch":
            raise ConfigError(f"knn: backend_options {search_options} apply to the torch backend only, "
                              f"not {self.backend!r}")
        ClusterSearch.from_options(dict(self.backend_options))  # raises ConfigError on a bad search option
        if self.eviction not in KV_EVICTION_POLICIES:
            raise ConfigError(f"knn: eviction must be one of {KV_EVICTION_POLICIES}, got {self.eviction!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ConfigError(f"knn: capacity must be a positive integer or None, got {self.capacity!r}")
