"""`knn`: an external key/value memory of past hidden states (Memorizing Transformers), plus kNN-LM.

Writes (once per segment or turn) store, for each chosen layer and KV head, the keys and values the
backbone computed for that segment — optionally averaged over `chunk_size` tokens — in a
`KeyValueStore` with one partition per batch row, and one SQLite provenance row per item.

Reads (every forward pass, decode steps included) happen inside attention, through memlm's
attention router: each query retrieves its `top_k` stored keys and attends over them.

* `attention="gated"`: memory attention is computed on its own and mixed with local attention by a
  learned per-head gate that starts at zero, so untrained the output equals the backbone's.
* `attention="joint"` (training-free, as in InfLLM / Unlimiformer): the retrieved keys join the
  local softmax directly.

Positions: rotary models rotate keys by their absolute position. Keys are stored *un-rotated* (the
rotation is undone with the cos/sin the layer received) together with the position they came from,
and at read time each is rotated back to its true distance from the query (see `positions`,
`recent` and `memory_distance` in `KnnConfig`, and docs/knn.md): the latest `recent` items of the
stream are attended in full, and top-k retrieval covers the older ones. The index only picks candidates;
attention logits are always recomputed exactly from the stored keys. GPT-2 style models (absolute
positions in the embeddings) store and read keys as they are.

* `knn_lm=True` (training-free, Khandelwal et al. 2020): each write also stores (final hidden
  state -> next token) pairs; every forward mixes `λ·p_kNN + (1-λ)·p_LM` into the returned logits,
  with `p_kNN` a softmax over the `lm_top_k` nearest neighbours' negative squared L2 distances
  divided by `lm_temperature`. The logits returned are the mixture's log-probabilities.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memlm.errors import ConfigError, CorruptedFileError
from memlm.hooks import BackboneLayout, add_attention_handler, find_attention_module
from memlm.memories.base import FileState, Memory, MemoryContext, Provenance
from memlm.memories.knn.attention import (
    LayerRetrieval,
    gated_attention,
    gather_rows,
    joint_attention,
    rotate,
    stack_rows,
    unrotate,
)
from memlm.memories.knn.config import KnnConfig
from memlm.memories.knn.records import KnnRecords
from memlm.store import GroupSpec, KeyValueStore, RecordFilter, StoreLayout


class KnnMemory(Memory, FileState, Provenance):
    """External key/value memory: kNN attention (gated or joint) and training-free kNN-LM."""

    config_class = KnnConfig
    config: KnnConfig

    def __init__(self, config: KnnConfig, layout: BackboneLayout, context: MemoryContext):
        super().__init__(config, layout, context)
        text_config = layout.model.config.get_text_config()
        self.num_heads = int(getattr(text_config, "num_attention_heads", None) or text_config.n_head)
        self.num_kv_heads = int(getattr(text_config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(text_config, "head_dim", None) or layout.hidden_size // self.num_heads)
        if config.attention == "off":
            self.attention_layers: list[int] = []
        elif config.layers is None:
            self.attention_layers = [(3 * layout.num_layers) // 4]
        elif config.layers == "all":
            self.attention_layers = list(range(layout.num_layers))
        else:
            self.attention_layers = sorted({layout.resolve_layer(layer) for layer in config.layers})
        if config.attention == "gated":
            self.gate = nn.Parameter(torch.zeros(len(self.attention_layers), self.num_heads))
        # The layer whose search each kNN-attention layer reads (`search_every`), and what the leaders
        # found in the current forward pass: {(leader, stored row): (limit, Candidates)}.
        every = config.search_every
        self._search_leader = {layer: self.attention_layers[index - index % every]
                               for index, layer in enumerate(self.attention_layers)}
        self._shared_search: dict[tuple[int, int], tuple[int, Any]] = {}
        specs = {}
        if self.attention_layers:
            # The value table keeps each item's pre-rotation key next to its value: the relative
            # scheme re-rotates retrieved keys to their true distance.
            specs["attention"] = GroupSpec(self.num_kv_heads, self.head_dim, 2 * self.head_dim, "ip")
        if config.knn_lm:
            specs["lm"] = GroupSpec(1, layout.hidden_size, None, "l2")
        self.store_layout = StoreLayout(specs, config.backend, dict(config.backend_options), config.capacity,
                                        config.eviction)
        self.store: KeyValueStore | None = None
        self.user: str | None = None
        self.session: str | None = None
        self.sequence = 0
        self._positions: dict[int, int] = {}
        self._writes = 0
        self._rows = 0  # rows of the batch `reset(batch_size)` announced
        self._rotary: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._rotary_takes_layer_type: bool | None = None  # Gemma3's rotary module needs the layer type
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # fixed rotations, per layer type
        self._block_cache: dict[tuple[int, int], tuple] = {}  # (layer, row) -> the rotated stream block
        self._rows_cache: dict[tuple[int, int], list[int]] = {}  # (batch, stored rows) -> source rows
        self._layout = layout  # a plain dataclass: the backbone must not become a submodule of the memory
        max_positions = getattr(text_config, "max_position_embeddings", None) or text_config.n_positions
        self.max_distance = config.max_distance or int(max_positions) - 1
        self._lm_query: torch.Tensor | None = None
        # False: forward passes do not read the attention memory (writes then store what the bare
        # backbone computes: a faster way to fill a large store, e.g. for benchmarks).
        self.reading = True

    def needs_training(self) -> bool:
        return self.config.attention == "gated"  # joint attention and kNN-LM work untrained

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, layout: BackboneLayout) -> None:
        self._device, self._dtype = layout.device, layout.dtype
        if self.attention_layers:
            for gate_index, layer in enumerate(self.attention_layers):
                module = find_attention_module(layout.layers[layer])
                self.track(add_attention_handler(layout.model, module, partial(self._attend, gate_index, layer)))
                self.track(module.register_forward_pre_hook(partial(self._capture_rotary, layer), with_kwargs=True))
        if self.config.knn_lm:
            self.track(layout.model.get_output_embeddings().register_forward_pre_hook(self._capture_lm_hidden))
            self.track(layout.model.register_forward_hook(self._mix_logits))

    def _capture_rotary(self, layer: int, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        position_embeddings = kwargs.get("position_embeddings")
        if position_embeddings is None and len(args) > 1 and isinstance(args[1], tuple):
            position_embeddings = args[1]
        self._rotary[layer] = position_embeddings

    def _memory_rows(self, batch_size: int) -> list[int] | None:
        """The stored row each batch row reads (`Memory.source_rows`); None while nothing is stored.
        A batch sized by `reset(batch_size)` counts all its rows, also those that stored nothing yet."""
        stored_rows = self.store.row_count if self.store else 0
        if stored_rows == 0:
            return None
        stored_rows = max(stored_rows, self._rows)
        rows = self._rows_cache.get((batch_size, stored_rows))
        if rows is None:  # asked by every layer at every step: computed once per shape
            rows = self._rows_cache[(batch_size, stored_rows)] = self.source_rows(batch_size, stored_rows).tolist()
        return rows

    # --- kNN attention -----------------------------------------------------------------------
    def _attend(self, gate_index: int, layer: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask: torch.Tensor | None, original: Any, *args: Any, **kwargs: Any):
        if self.context.capturing:
            rotary = self._rotary.get(layer)
            pre_rotation = key if rotary is None else unrotate(key, *rotary)
            self.capture(f"kv/{layer}", (pre_rotation.detach(), value.detach()))
        retrieved = self._retrieve(layer, query, kwargs.get("position_ids"), key.shape[2])
        if retrieved is None:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        if self.config.attention == "joint":
            return joint_attention(module, query, key, value, attention_mask, retrieved,
                                   **{**kwargs, "scaling": scaling})
        local_output, weights = original(module, query, key, value, attention_mask, *args, **kwargs)  # (B,T,H,D)
        return gated_attention(local_output, retrieved, self.gate[gate_index], scaling, query.dtype), weights

    def _rotary_at(self, layer: int, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the layer's rotary embedding at arbitrary positions: (*positions.shape, R)."""
        rotary_module = getattr(self._layout.base_model, "rotary_emb", None)
        if rotary_module is None:
            raise ConfigError("knn: this rotary model has no `rotary_emb` module to place memories with")
        flat = positions.reshape(1, -1)
        if self._rotary_takes_layer_type is None:
            self._rotary_takes_layer_type = "layer_type" in inspect.signature(rotary_module.forward).parameters
        if self._rotary_takes_layer_type:
            cos, sin = rotary_module(like, flat, self._layout.base_model.config.layer_types[layer])
        else:
            cos, sin = rotary_module(like, flat)
        return cos.reshape(*positions.shape, -1), sin.reshape(*positions.shape, -1)

    def _fixed_rotations(self, layer: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the layer's rotary embedding at `memory_distance` (row 0: where candidates are
        searched) and `max_distance` (row 1: where far items sit), float32 (2, R); once per layer type."""
        rotary_module = getattr(self._layout.base_model, "rotary_emb", None)
        if self._rotary_takes_layer_type is None and rotary_module is not None:
            self._rotary_takes_layer_type = "layer_type" in inspect.signature(rotary_module.forward).parameters
        kind = self._layout.base_model.config.layer_types[layer] if self._rotary_takes_layer_type else None
        table = self._tables.get((kind, device))
        if table is None:
            positions = torch.tensor([self.config.memory_distance, self.max_distance], device=device)
            like = torch.empty(1, device=device, dtype=torch.float32)
            table = tuple(part.float() for part in self._rotary_at(layer, positions, like))
            self._tables[(kind, device)] = table
        return table

    def _retrieve(self, layer: int, query: torch.Tensor, position_ids: torch.Tensor | None, key_length: int
                  ) -> LayerRetrieval | None:
        """What each query attends to in memory (raw q.k logits, -inf where nothing): its top-k
        stored keys, plus the `recent` latest items of the current stream shared by all queries.

        Per batch row: one batched search over every KV head of the layer (`MemoryGroup.
        search_positions`), one gather of the retrieved [key, value] rows, and the exact logits as
        batched dot products; nothing waits on the device.

        Relative placement without per-pair rotations: rotary logits depend only on the difference
        of positions, so an item of the current stream within `max_distance` of a query scores
        q·k_w, with q the query as the layer rotated it and k_w the item's key rotated once to its
        own (negative) window position (the `stream block`, shared with the recent items); every
        other item sits at `max_distance`: R(max_distance)q0 · k0 with the un-rotated pair."""
        leader = self._search_leader[layer]
        if leader == layer and self.config.search_every > 1:  # a new pass: what followers read is found anew
            for key in [key for key in self._shared_search if key[0] == layer]:
                del self._shared_search[key]
        if self.store is None or not self.reading:
            return None
        batch, heads, length, dim = query.shape
        memory_rows = self._memory_rows(batch)
        groups = [None if memory_rows is None else self.store.group("attention", memory_rows[row], layer)
                  for row in range(batch)]
        if all(group is None for group in groups):
            return None
        group_size, k = heads // self.num_kv_heads, self.config.top_k
        if position_ids is None:
            position_ids = torch.arange(key_length - length, key_length, device=query.device).expand(batch, -1)
        rotary = self._rotary.get(layer)
        relative = rotary is not None and self.config.positions == "relative"
        if rotary is not None:
            cos, sin = self._fixed_rotations(layer, query.device)
            plain_query = unrotate(query, *rotary)  # as if at position 0
            # at memory_distance (where candidates are searched) and max_distance (far items), at once
            search_query, far_query = rotate(plain_query, cos.view(2, 1, 1, 1, -1), sin.view(2, 1, 1, 1, -1))
            if not relative:  # the fixed scheme scores every item at memory_distance
                far_query = search_query
        else:
            search_query = far_query = query
        rows = []
        for row in range(batch):
            group = groups[row]
            if group is None:
                rows.append(None)
                continue
            memory_row = memory_rows[row]
            start = self._positions.get(memory_row, 0)
            block_keys, block_values, block_positions, recent = self._stream_block(layer, memory_row, group, start,
                                                                                   query)
            # Query heads h = j * groups + g share KV head j: search head j's keys with all of them.
            # Recent items are attended anyway: retrieval covers the older ones.
            found = self._search(layer, memory_row, group,
                                 search_query[row].reshape(self.num_kv_heads, group_size * length, dim), k,
                                 len(group) - recent)
            stored = group.gather_values(found.positions).view(heads, length, k, 2 * dim)  # [key, value]
            keys, values = stored[..., :dim], stored[..., dim:].to(query.dtype)
            valid = torch.isfinite(found.scores).view(heads, length, k)
            # The index only picks candidates (possibly approximately, or in lower precision): the
            # logits are recomputed from the stored keys.
            scores = torch.einsum("htd,htkd->htk", far_query[row].float(), keys.float())
            block = block_keys.shape[1]
            if relative and block:
                in_block = (found.positions - (len(group) - block)).view(heads, length, k)
                index = in_block.clamp(min=0)
                row_positions = position_ids[row if position_ids.shape[0] > 1 else 0]  # (T,): may be shared
                stream_positions = start + row_positions.to(query.device).view(1, length, 1)
                near = (in_block >= 0) & (block_positions[index] >= stream_positions - self.max_distance)
                near_scores = torch.einsum("htd,htkd->htk", query[row].float(),
                                           gather_rows(block_keys, index).float())
                scores = torch.where(near, near_scores, scores)
            recent_scores = (query[row] @ block_keys[:, block - recent:].transpose(-1, -2)).float()  # (H, T, n)
            rows.append((scores.masked_fill(~valid, -math.inf), values, recent_scores,
                         block_values[:, block - recent:]))
        return stack_rows(rows, query, k)

    def _search(self, layer: int, memory_row: int, group: Any, queries: torch.Tensor, k: int, limit: int) -> Any:
        """The top-k positions of each query among the group's first `limit` items: searched at a
        leader layer (and kept for its followers), read from the leader's search at a follower. Items
        are stored in every layer at once, so a position names the same item in each layer's group."""
        leader = self._search_leader[layer]
        if leader != layer:
            shared = self._shared_search.get((leader, memory_row))
            if shared is not None and shared[0] == limit and shared[1].positions.shape[1] == queries.shape[1]:
                return shared[1]
        found = group.search_positions(queries, k, limit)
        if leader == layer and self.config.search_every > 1:
            self._shared_search[(layer, memory_row)] = (limit, found)
        return found

    def _stream_block(self, layer: int, memory_row: int, group: Any, start: int, query: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The latest items of the current stream that a query may see at their true distance: the
        `recent` ones, and (relative scheme) every one within `max_distance`. Keys rotated to their
        own (negative) window positions, so that q·k is the logit at their true distance, and values,
        (H, n, D) each; their stream positions (n,); how many of the last are `recent` items.
        Cached until the group changes: decode steps reuse it."""
        cache_key = (layer, memory_row)
        state = (group.version, self.sequence, start, query.dtype, query.device)
        cached = self._block_cache.get(cache_key)
        if cached is not None and cached[0] == state:
            return cached[1]
        rotary = self._rotary.get(layer) is not None
        recent = group.latest_count(self.sequence, self.config.recent) if self.config.recent else 0
        count = recent
        if rotary and self.config.positions == "relative":
            count = group.latest_count(self.sequence, max(self.max_distance, self.config.recent))
        dim, group_size = query.shape[-1], query.shape[1] // self.num_kv_heads
        _, stored, origins = group.latest(count)
        stored = stored.to(query.dtype)  # (KVH, n, 2D)
        keys = stored[..., :dim]
        if count and rotary:
            window_positions = (origins[:, 1] - start).unsqueeze(0)  # (1, n): before the window, so negative
            cos, sin = self._rotary_at(layer, window_positions, query)  # (1, n, R)
            keys = rotate(keys, cos, sin)
        block = (keys.repeat_interleave(group_size, dim=0).contiguous(),
                 stored[..., dim:].repeat_interleave(group_size, dim=0), origins[:, 1].contiguous(), recent)
        self._block_cache[cache_key] = (state, block)
        return block

    # --- kNN-LM ------------------------------------------------------------------------------
    def _capture_lm_hidden(self, _module: nn.Module, args: tuple) -> None:
        self._lm_query = args[0]  # (B, T, C): the final hidden states the LM head reads
        self.capture("lm_hidden", args[0].detach())

    def _mix_logits(self, _model: nn.Module, _args: tuple, output: Any) -> Any:
        hidden, self._lm_query = self._lm_query, None
        logits = getattr(output, "logits", None)
        if self.store is None or hidden is None or logits is None or hidden.shape[:2] != logits.shape[:2]:
            return output
        mixed = None
        batch = logits.shape[0]
        memory_rows = self._memory_rows(batch)
        for row in range(batch):
            group = None if memory_rows is None else self.store.group("lm", memory_rows[row], -1)
            if group is None:
                continue
            found = group.search_positions(hidden[row].unsqueeze(0), self.config.lm_top_k)
            # (T, k) negative squared distances and next tokens
            scores, tokens = found.scores[0], group.gather_values(found.positions)[0]
            weights = torch.softmax(scores.float() / self.config.lm_temperature, dim=-1).nan_to_num(0.0)
            knn_probs = torch.zeros(logits.shape[1], logits.shape[2], device=logits.device)
            knn_probs.scatter_add_(1, tokens.to(logits.device), weights.to(logits.device))  # (T, V)
            lm_probs = torch.softmax(logits[row].float(), dim=-1)
            mixture = self.config.lm_lambda * knn_probs + (1 - self.config.lm_lambda) * lm_probs
            if mixed is None:
                mixed = logits.float().log_softmax(-1)
            mixed[row] = mixture.clamp_min(1e-30).log()
        if mixed is not None:
            output.logits = mixed.to(logits.dtype)
        return output

    # --- writing -----------------------------------------------------------------------------
    def _ensure_store(self) -> KeyValueStore:
        if self.store is None:
            self.store = KeyValueStore(self.store_layout, self._device, self._dtype)
        return self.store

    def write(self) -> None:
        captured_kv = {int(name): value for name, value in self.captured_under("kv/").items()}
        lm_hidden = self.captured("lm_hidden")
        self._writes += 1
        if (self._writes - 1) % self.config.update_freq:
            return
        input_ids, mask = self.context.input_ids, self.context.attention_mask
        if input_ids is None or not (captured_kv or lm_hidden is not None):
            return
        store = self._ensure_store()
        length = input_ids.shape[1]
        counts = mask.sum(-1).tolist() if mask is not None else [length] * input_ids.shape[0]  # one host sync
        for row, count in enumerate(counts):
            # Every token valid (memorize, ppl): plain slices, no gathers.
            positions = slice(None) if count == length else mask[row].bool().nonzero().squeeze(-1)
            tokens = input_ids[row, positions].clone()
            start = self._positions.get(row, 0)
            if captured_kv:
                self._write_attention(store, row, {layer: (keys[row][:, positions], values[row][:, positions])
                                                   for layer, (keys, values) in captured_kv.items()}, tokens, start)
            if lm_hidden is not None and count > 1:
                self._write_lm(store, row, lm_hidden[row, positions], tokens, start)
            self._positions[row] = start + count

    def _records(self, tokens: torch.Tensor, start: int, size: int, lm: bool = False) -> KnnRecords:
        return KnnRecords(tokens, start, size, lm, self.user, self.session, self.sequence, self.context.tokenizer)

    def _write_attention(self, store: KeyValueStore, row: int, per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]],
                         tokens: torch.Tensor, start: int) -> None:
        """Keys/values (KVH, n, D) of one row's valid tokens at each layer -> one item per chunk of
        `chunk_size` tokens, stored in every layer under one id and one record."""
        size, count = self.config.chunk_size, tokens.shape[0]
        if count == 0:
            return
        chunks = [(first, min(first + size, count)) for first in range(0, count, size)]

        def per_chunk(states: torch.Tensor) -> torch.Tensor:  # (KVH, n, D) -> (KVH, n_chunks, D)
            if size == 1:
                return states
            return torch.stack([states[:, a:b].mean(dim=1) for a, b in chunks], dim=1)

        layers = sorted(per_layer)
        keys = [per_chunk(per_layer[layer][0]) for layer in layers]
        # The value table keeps [key, value] per item: the relative scheme re-rotates retrieved keys.
        values = [torch.cat([key, per_chunk(per_layer[layer][1])], dim=-1) for key, layer in zip(keys, layers,
                                                                                                   strict=True)]
        store.add("attention", row, layers if len(layers) > 1 else layers[0], keys, values,
                  self._records(tokens, start, size), heads_first=True)

    def _write_lm(self, store: KeyValueStore, row: int, hidden: torch.Tensor, tokens: torch.Tensor, start: int) -> None:
        """hidden (n, C): the state at position t predicts token t + 1 (the segment's last has no target)."""
        count = tokens.shape[0] - 1
        store.add("lm", row, -1, hidden[:count].unsqueeze(1), tokens[1:].to(hidden.device),
                  self._records(tokens, start, 1, lm=True))

    # --- state -------------------------------------------------------------------------------
    def begin_call(self) -> None:
        super().begin_call()
        self.sequence += 1
        self._positions = {}

    def reset(self, batch_size: int | None = None) -> None:
        if self.store is not None:
            self.store.clear()
        self._positions = {}
        self._writes = 0
        self._rows = batch_size or 0

    def set_provenance(self, user: str | None = None, session: str | None = None) -> None:
        self.user, self.session = user, session

    def delete(self, **where: Any) -> int:
        """Forget items matching `RecordFilter` fields (ids, user, session, sequence, text, ...)."""
        return 0 if self.store is None else self.store.delete(RecordFilter(**where))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        rows = 1 + max(self._positions, default=-1)
        positions = torch.tensor([self._positions.get(row, 0) for row in range(rows)], dtype=torch.int64)
        # Where the current sequence stands: the relative scheme measures distances from it.
        return {"sequence": torch.tensor([self.sequence], dtype=torch.int64), "positions": positions}

    def store_name(self) -> str:
        """The name the store is saved under in a database: `store_name`, else the user, else the session."""
        return self.config.store_name or self.user or self.session or "default"

    def save_state_files(self, directory: Path) -> None:
        from memlm.store.backends import configured_store, save_reference

        url = configured_store(self.config.store)
        if url is None:
            self._ensure_store().save(directory)
        else:
            save_reference(self._ensure_store(), directory, url, self.store_name())

    def read_state_files(self, directory: Path) -> KeyValueStore:
        from memlm.store.backends import configured_store, read_reference

        url = configured_store(self.config.store)
        name = read_reference(directory, url)
        try:
            if name is not None:
                return KeyValueStore.load_from(url, name, self._device, self._dtype, expected_layout=self.store_layout)
            return KeyValueStore.load(directory, self._device, self._dtype, expected_layout=self.store_layout)
        except FileNotFoundError as error:
            raise CorruptedFileError(f"knn: the saved state's memory store is missing ({error})") from None

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], files: Any = None) -> None:
        if self.store is not None and self.store is not files:
            self.store.close()
        self.store = files
        self.sequence = int(tensors["sequence"][0])
        self._positions = {row: int(position) for row, position in enumerate(tensors["positions"].tolist())}

    def summary(self) -> dict[str, Any]:
        return {"items": 0 if self.store is None else self.store.records.count(),
                "vectors": 0 if self.store is None else len(self.store),
                "attention": self.config.attention, "layers": self.attention_layers,
                "knn_lm": self.config.knn_lm, "backend": self.store_layout.backend}

