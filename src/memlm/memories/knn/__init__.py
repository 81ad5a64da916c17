"""The `knn` memory: an external key/value memory of past hidden states, plus kNN-LM.

One module per concern: `config` (`KnnConfig`), `records` (the provenance of stored items),
`attention` (rotations and the joint/gated attention over what is retrieved) and `memory`
(`KnnMemory`: hooks, retrieval, writing, state; its docstring tells how the memory works).
"""

from memlm.memories.knn.attention import LayerRetrieval
from memlm.memories.knn.attention import rotate as _rotate  # noqa: F401 (its name when knn was one module)
from memlm.memories.knn.config import ATTENTION_MODES, POSITION_SCHEMES, KnnConfig
from memlm.memories.knn.memory import KnnMemory
from memlm.memories.knn.records import CONTEXT_TOKENS, KnnRecords

__all__ = ["ATTENTION_MODES", "CONTEXT_TOKENS", "POSITION_SCHEMES", "KnnConfig", "KnnMemory", "KnnRecords",
           "LayerRetrieval"]
