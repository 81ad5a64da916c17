"""Fast greedy decoding: a static KV cache and, on CUDA, the one-token step recorded once as a CUDA graph.

transformers' `generate()` spends most of each token of a small model in Python and kernel launches
(53 tokens/s for the 135M default model on an H100, eager). `MemoryModel.generate(..., decode=...)`:

* `"static"`: the prompt fills a `StaticCache` of fixed size; each new token then runs `_DecodeSession.step`,
  which works only on buffers allocated once (the token fed in, its position, the cache, the finished
  flags, the tokens out) and updates them in place. No Python branch looks at a value on the device.
* `"graph"`: on CUDA, that step is recorded once as a CUDA graph and replayed for every token; the
  host reads the device only every `SYNC_EVERY` tokens (to stop at end of sequence and to stream).
* `"compile"`: the step compiled by `torch.compile` (inductor fuses its many small kernels: a norm,
  a rotary embedding, an activation become one kernel each) and, on CUDA, recorded as a CUDA graph.
* `"auto"`: `"graph"` on CUDA, `"static"` elsewhere; `"eager"` (the default): transformers' loop.

Tokens are those of eager greedy `generate()`: the same prefill, positions, masks, float32 scores,
logits processors and end-of-sequence padding. Graph replay runs the very kernels the static step runs,
so `"static"` and `"graph"` agree bit for bit. `"compile"` runs other kernels (fused, with eager's
intermediate roundings emulated): the same tokens in float32; in bfloat16 a near-tie may flip.
A 135M model's step is ~1,300 small kernels in eager form, so on a GPU `"graph"` is bound by their
count and `"compile"` is the fast one; `benchmarks/fast_decode.py` measures both.

Memories take part through the `StaticDecode` capability (memories/base.py): its reads must work on a
static cache, and for graphs its decode-time tensors (`decode_state_names`) are swapped for static
buffers while the step is recorded, then refilled before each call. What cannot run this way runs the
old way, with the reason logged once and kept in `GreedyDecoder.last_path`, never with other tokens:

* to transformers' `generate`: sampling, beams, logits processors other than the bank's fact-token
  bonus, stopping criteria, stop strings, scores or dicts returned, a memory that is not `StaticDecode`
  (`knn`: it searches its store on the host at every step), a backbone in training mode;
* from `"graph"` to `"static"`: no CUDA device, a memory whose reads cannot be recorded (`bank` with
  latent fusion picks facts per row on the host), sliding-window cache layers (their length is a
  Python int), attention kernels other than sdpa/eager (flash's mask code reads the device).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from memlm.errors import ConfigError, MemlmError

logger = logging.getLogger(__name__)

DECODE_MODES = ("eager", "static", "graph", "compile", "auto")
RECORDED_MODES = ("graph", "compile")  # on CUDA, the step is recorded as a CUDA graph
COMPILE_BACKEND = "inductor"  # tests use "eager": dynamo's tracing and guards without inductor's minute of codegen
# An inductor mode without its own CUDA graphs (the decoder records one), e.g. "max-autotune-no-cudagraphs":
# inductor then also generates and tunes matmuls (minutes of compiling). None: inductor's defaults.
COMPILE_MODE: str | None = None
SYNC_EVERY = 16  # CUDA: tokens decoded between two host reads of the finished flags
CACHE_BUCKET = 256  # cache lengths round up to this, so one cache and graph serve many prompt lengths
MAX_SESSIONS = 4  # (batch, cache length) shapes kept with their caches and graphs
WARMUP_STEPS = 2  # real steps run eagerly on a side stream before recording (kernels pick algorithms)
GRAPH_ATTENTION = ("sdpa", "eager")

# Generation options: these may take any value (they do not change greedy tokens, or are read below) ...
_IGNORED_OPTIONS = {
    "max_new_tokens", "min_new_tokens", "max_length", "pad_token_id", "bos_token_id", "eos_token_id",
    "decoder_start_token_id", "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
    "eta_cutoff", "length_penalty", "early_stopping", "cache_implementation", "cache_config", "max_cache_len",
    "compile_config", "disable_compile", "low_memory", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "max_matching_ngram_size", "_from_model_config", "transformers_version",
}
# ... these only their neutral values; every other option set to anything but None goes to transformers.
_NEUTRAL_OPTIONS = {
    "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "num_beam_groups": 1, "use_cache": True,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "min_length": 0, "renormalize_logits": False, "remove_invalid_values": False,
    "guidance_scale": 1.0, "diversity_penalty": 0.0, "token_healing": False, "is_assistant": False, "use_mtp": False,
    "output_attentions": False, "output_hidden_states": False, "output_scores": False, "output_logits": False,
    "return_dict_in_generate": False,
}


@dataclass
class GreedySettings:
    """What one greedy call asks for, read from `generate()`'s keyword arguments and generation config."""

    max_new_tokens: int
    min_new_tokens: int
    eos_token_ids: list[int]
    pad_token_id: int
    fact_biases: list[Any]  # `FactTokenBias` processors, applied in order as transformers would
    streamer: Any


def greedy_settings(backbone: Any, kwargs: dict[str, Any]) -> GreedySettings | str:
    """The settings of a greedy call this module reproduces, or why it cannot (a short reason)."""
    from memlm.fusion import FactTokenBias

    kwargs = dict(kwargs)
    processors = list(kwargs.pop("logits_processor", None) or [])
    streamer = kwargs.pop("streamer", None)
    if kwargs.pop("stopping_criteria", None):
        return "stopping criteria"
    config = copy.deepcopy(kwargs.pop("generation_config", None) or backbone.generation_config)
    unused = config.update(**kwargs)
    if unused:
        return f"generate option(s) {sorted(unused)}"
    for name, value in config.to_dict().items():
        if name in _IGNORED_OPTIONS or value is None:
            continue
        if name not in _NEUTRAL_OPTIONS or value != _NEUTRAL_OPTIONS[name]:
            return f"{name}={value!r}"
    others = [type(p).__name__ for p in processors if not isinstance(p, FactTokenBias)]
    if others:
        return f"logits processor(s) {others}"
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        return f"max_new_tokens={config.max_new_tokens}"
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad = config.pad_token_id
    pad = eos_ids[0] if pad is None and eos_ids else (0 if pad is None else int(pad))  # as transformers does
    return GreedySettings(int(config.max_new_tokens), int(config.min_new_tokens or 0), eos_ids, pad, processors,
                          streamer)


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode not in DECODE_MODES:
        raise ConfigError(f"decode must be one of {DECODE_MODES}, got {mode!r}")
    if mode == "auto":
        return "graph" if device.type == "cuda" else "static"
    return mode


class GreedyDecoder:
    """Greedy decoding with a static KV cache (and CUDA graphs) for one `MemoryModel`, which keeps it
    between calls so caches and graphs are made once per (batch, cache length).

    Example:
        >>> out = mm.generate(**ids, max_new_tokens=64, do_sample=False, decode="auto")
        >>> mm.greedy_decoder.last_path  # "graph", "static", or "eager: <why>"
    """

    def __init__(self, model: Any):
        self.model = model  # the MemoryModel
        self.sessions: dict[tuple[int, int], _DecodeSession] = {}
        self.last_path = "eager"
        self._logged: set[str] = set()
        self._failures: dict[str, str] = {}  # mode -> why it failed once here (it is not tried again)
        self._lock = threading.Lock()  # sessions' buffers serve one call at a time (a server's threads)

    def __getstate__(self) -> dict[str, Any]:  # a copied model (copy.deepcopy) starts with no caches or graphs
        return {"model": self.model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"])

    def generate(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, mode: str,
                 kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Prompt + greedy reply (B, T + n), as transformers returns it; None: run transformers' own
        `generate` instead (the reason is logged)."""
        with self._lock:
            return self._generate(input_ids, attention_mask, mode, kwargs)

    def _generate(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, mode: str,
                  kwargs: dict[str, Any]) -> torch.Tensor | None:
        backbone = self.model.backbone
        mode = resolve_mode(mode, self.model.layout.device)
        settings = greedy_settings(backbone, kwargs) if input_ids is not None else "inputs_embeds"
        if input_ids is not None and input_ids.shape[1] == 0:
            settings = "an empty prompt"
        reason = settings if isinstance(settings, str) else self._static_blocker()
        if reason is not None:
            return self._fall_back("eager", reason)
        if mode == "graph" and (why := self._graph_blocker()) is not None:
            self._note(f"graph -> static: {why}")
            mode = "static"
        batch_size, prompt_length = input_ids.shape
        length = -(-(prompt_length + settings.max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET
        session = self._session(batch_size, length)
        if mode == "graph" and not session.graph_ready():
            self._note(f"graph -> static: {session.cache_blocker}")
            mode = "static"
        if mode == "compile":  # what stops a graph stops compiling too (graph breaks, recompiling per token)
            cuda = self.model.layout.device.type == "cuda"
            why = (self._graph_blocker() if cuda else self._reads_blocker()) or session.cache_blocker
            if why is not None:
                self._note(f"compile -> static: {why}")
                mode = "static"
        if mode in self._failures:
            self._note(f"{mode} -> static: {self._failures[mode]}")
            mode = "static"
        recorded = mode in RECORDED_MODES and self.model.layout.device.type == "cuda"
        try:
            with torch.no_grad(), self._static_state(session, recorded):
                sequences = session.run(input_ids, attention_mask, settings, mode, recorded, self._graph_key(session))
        except Exception as error:  # noqa: BLE001  (compiling or recording failed: decode again without, from the start)
            if mode == "static" or settings.streamer is not None or isinstance(error, MemlmError):
                raise
            what = "torch.compile or recording" if mode == "compile" else "recording the CUDA graph"
            self._failures[mode] = f"{what} failed ({type(error).__name__}: {str(error)[:200]})"
            self._note(f"{mode} -> static: {self._failures[mode]}")
            session.graph = session.graph_key = session.compiled_step = session.compiled_key = None
            return self._generate(input_ids, attention_mask, "static", kwargs)
        self.last_path = mode
        return sequences

    # --- what may run fast ---------------------------------------------------------------------
    def _static_blocker(self) -> str | None:
        from memlm.memories.base import StaticDecode

        if self.model.backbone.training:
            return "the backbone is in training mode (dropout)"
        for name, memory in self.model.memories.items():
            if not isinstance(memory, StaticDecode):
                return f"the {name!r} memory does not support static decoding"
        return None

    def _graph_blocker(self) -> str | None:
        if self.model.layout.device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if len({parameter.device for parameter in self.model.parameters()}) > 1:
            return "the model spans several devices (a graph records one)"
        return self._reads_blocker()

    def _reads_blocker(self) -> str | None:
        """Why some read of a decode step looks at the device from the host (None: nothing does)."""
        attention = str(self.model.backbone.config._attn_implementation or "eager").removeprefix("memlm|")
        if attention not in GRAPH_ATTENTION:
            return f"attention {attention!r} (graphs need one of {GRAPH_ATTENTION})"
        for name, memory in self.model.memories.items():
            if (why := memory.graph_blocker()) is not None:
                return f"{name}: {why}"
        return None

    def _fall_back(self, path: str, reason: str) -> None:
        self.last_path = f"{path}: {reason}"
        self._note(f"decode -> {path}: {reason}")
        return None

    def _note(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            logger.warning("memlm: %s", message)

    # --- sessions and the memories' static buffers ---------------------------------------------
    def _session(self, batch_size: int, length: int) -> _DecodeSession:
        key = (batch_size, length)
        if key not in self.sessions:
            if len(self.sessions) >= MAX_SESSIONS:
                self.sessions.pop(next(iter(self.sessions)))
            self.sessions[key] = _DecodeSession(self.model.backbone, batch_size, length)
        return self.sessions[key]

    def _decode_state(self, batch_size: int) -> dict[tuple[str, str], torch.Tensor | None]:
        """Each memory's decode-time tensors, expanded to the batch's rows (beams need no index then)."""
        state = {}
        for name, memory in self.model.memories.items():
            for attribute in memory.decode_state_names:
                value = getattr(memory, attribute)
                if value is not None:
                    value = memory.expand_rows(value.detach(), batch_size)
                state[(name, attribute)] = value
        return state

    def _graph_key(self, session: _DecodeSession) -> tuple:
        """What a recorded graph depends on besides its session's shapes; a change means recording again."""
        layout = tuple((key, None if value is None else (tuple(value.shape), value.dtype, value.device))
                       for key, value in self._decode_state(session.batch_size).items())
        hooks = tuple((name, id(memory), tuple(getattr(handle, "id", id(handle)) for handle in memory._hook_handles))
                      for name, memory in self.model.memories.items())  # handle ids are never reused
        weights = tuple(parameter.data_ptr() for parameter in self.model.parameters())
        return layout, hooks, weights, self.model.lora is not None, self.model.backbone.config._attn_implementation

    @contextlib.contextmanager
    def _static_state(self, session: _DecodeSession, graph: bool) -> Iterator[None]:
        """While a graph call runs, memories read their decode state from the session's static buffers
        (filled with the current values); their own tensors are put back afterwards, untouched."""
        if not graph:
            yield
            return
        live = self._decode_state(session.batch_size)
        saved = {}
        try:
            for (name, attribute), value in live.items():
                memory = self.model.memories[name]
                saved[(name, attribute)] = getattr(memory, attribute)
                buffer = session.state_buffers.get((name, attribute))
                if value is None:
                    buffer = None
                elif buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                    buffer = value.clone()  # a new layout: the graph is recorded again (see _graph_key)
                else:
                    buffer.copy_(value)
                session.state_buffers[(name, attribute)] = buffer
                setattr(memory, attribute, buffer)
            yield
        finally:
            for (name, attribute), value in saved.items():
                setattr(self.model.memories[name], attribute, value)


class _DecodeSession:
    """One (batch, cache length): a static cache, the step's buffers and, on CUDA, its recorded graph."""

    def __init__(self, backbone: Any, batch_size: int, length: int):
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        self.backbone, self.batch_size, self.length = backbone, batch_size, length
        device = next(backbone.parameters()).device
        vocab = backbone.get_output_embeddings().weight.shape[0]
        self.cache = StaticCache(config=backbone.config, max_cache_len=length)
        self.cache_blocker = None
        if any(type(layer) is not StaticLayer for layer in self.cache.layers):
            self.cache_blocker = "sliding-window cache layers keep their length in a Python int"
        parameters = inspect.signature(backbone.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.logits_to_keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        long = dict(dtype=torch.long, device=device)
        self.token = torch.zeros(batch_size, 1, **long)  # the token fed to the next step
        self.position = torch.zeros(batch_size, 1, **long)  # its position
        self.step_index = torch.zeros((), **long)  # how many tokens are decoded (where the next one goes)
        self.finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(batch_size, length, **long)  # the decoded tokens
        self.attention_mask = torch.ones(batch_size, length, **long)  # the prompt's padding, then ones
        self.is_eos = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.pad = torch.zeros((), **long)
        self.min_new_tokens = torch.zeros((), **long)
        self.fact_biases: list[torch.Tensor] = []  # (B, V) float32 each
        self.state_buffers: dict[tuple[str, str], torch.Tensor | None] = {}
        self.padded = False
        self.graph: Any = None
        self.graph_key: tuple | None = None
        self.compiled_step: Any = None
        self.compiled_key: tuple | None = None

    def graph_ready(self) -> bool:
        return self.cache_blocker is None

    # --- one call ------------------------------------------------------------------------------
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, settings: GreedySettings,
            mode: str, recorded: bool, graph_key: tuple) -> torch.Tensor:
        device = self.token.device
        input_ids = input_ids.to(device)
        self._fill(input_ids, attention_mask, settings)
        streamer = settings.streamer
        if streamer is not None:
            streamer.put(input_ids.cpu())
        graph_key = (graph_key, mode, self.padded, len(self.fact_biases))
        if recorded and self.graph_key != graph_key:
            self.graph, self.graph_key = None, graph_key  # recorded again below, after a warm-up
        step = self._compiled_step(graph_key) if mode == "compile" else self.step
        self._prefill(input_ids, attention_mask)
        decoded, streamed, total = 1, 0, settings.max_new_tokens
        sync_every = SYNC_EVERY if device.type == "cuda" else 1
        done = None
        while True:
            streamed, done = self._read_back(streamer, streamed, decoded, bool(settings.eos_token_ids))
            if done is not None or decoded >= total:
                break
            count = min(sync_every, total - decoded)
            if recorded:
                self._replay(count, step)
            else:
                for _ in range(count):
                    step()
            decoded += count
        if streamer is not None:
            streamer.end()
        length = decoded if done is None else done
        return torch.cat([input_ids, self.tokens[:, :length]], dim=1)

    def _fill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, settings: GreedySettings) -> None:
        prompt_length = input_ids.shape[1]
        self.cache.reset()
        self.finished.zero_()
        self.step_index.zero_()
        self.is_eos.zero_()
        if settings.eos_token_ids:
            self.is_eos[torch.tensor(settings.eos_token_ids, device=self.is_eos.device)] = True
        self.pad.fill_(settings.pad_token_id)
        self.min_new_tokens.fill_(settings.min_new_tokens)
        self.padded = attention_mask is not None and not bool((attention_mask == 1).all())
        self.attention_mask.fill_(1)
        if self.padded:
            self.attention_mask[:, :prompt_length] = attention_mask.to(self.attention_mask.device)
        vocab, device = self.is_eos.shape[0], self.is_eos.device
        biases = [bias.bonus(self.batch_size, vocab, device, torch.float32) for bias in settings.fact_biases]
        if len(biases) != len(self.fact_biases):
            self.fact_biases = [torch.empty_like(bias) for bias in biases]
        for buffer, bias in zip(self.fact_biases, biases, strict=True):
            buffer.copy_(bias)

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        # Positions as transformers makes them: from the mask when there is one (left padding), then +1 a token.
        if attention_mask is not None:
            mask = attention_mask.to(input_ids.device).long()
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        self.position.copy_(positions[:, -1:].expand(self.batch_size, 1) + 1)
        prompt_mask = self.attention_mask[:, :input_ids.shape[1]] if self.padded else None
        output = self.backbone(input_ids=input_ids, attention_mask=prompt_mask, position_ids=positions,
                               use_cache=True, **{self.cache_argument: self.cache}, **self.logits_to_keep)
        self._choose(output.logits[:, -1])

    def step(self) -> None:
        """Decode one token, reading and updating only this session's buffers in place: what a CUDA
        graph records. No Python branch may depend on a value computed on the device here."""
        output = self.backbone(input_ids=self.token, attention_mask=self.attention_mask if self.padded else None,
                               position_ids=self.position, use_cache=True, **{self.cache_argument: self.cache},
                               **self.logits_to_keep)
        self._choose(output.logits[:, -1])
        self.position.add_(1)

    def _choose(self, logits: torch.Tensor) -> None:
        """transformers' greedy choice: float32 scores, end of sequence held back for `min_new_tokens`,
        the fact-token bonus, argmax; finished rows get the pad token."""
        scores = logits.to(dtype=torch.float32)  # (B, V)
        scores = scores.masked_fill(self.is_eos & (self.step_index < self.min_new_tokens), float("-inf"))
        for bias in self.fact_biases:
            scores = scores + bias
        chosen = torch.where(self.finished, self.pad, scores.argmax(dim=-1))  # (B,)
        self.finished.logical_or_(self.is_eos[chosen])
        self.tokens.index_copy_(1, self.step_index.view(1), chosen.view(-1, 1))
        self.token.copy_(chosen.view(-1, 1))
        self.step_index.add_(1)

    def _read_back(self, streamer: Any, streamed: int, decoded: int, has_eos: bool) -> tuple[int, int | None]:
        """One host read: stream the tokens decoded since the last read; the reply's length if every row
        has finished (tokens decoded past that point are dropped), else None."""
        done = None
        if has_eos and bool(self.finished.all()):
            ended = self.is_eos[self.tokens[:, :decoded]]  # (B, n): a row's first end token is where it stopped
            done = int(ended.int().argmax(dim=1).max()) + 1
        end = decoded if done is None else done
        if streamer is not None and end > streamed:
            for chunk in self.tokens[:, streamed:end].cpu().unbind(1):
                streamer.put(chunk)
        return end, done

    # --- torch.compile and CUDA graphs ---------------------------------------------------------
    def _compiled_step(self, key: tuple) -> Any:
        """`step` compiled by torch.compile for what `key` describes (compiled on its first call: in the
        warm-up, before recording).

        Dynamo keeps compiled code on the function's code object and by default does not guard on
        module hooks, so a step compiled before a memory was attached would be reused without its
        hooks. Each key (session, memories and their hooks, state layout, weights) therefore gets a copy
        of `step` with a code object of its own: its compiled code serves that key only."""
        if self.compiled_key != key:
            import torch._inductor.config

            code = _DecodeSession.step.__code__.replace()  # a new code object: a cache of its own
            function = types.FunctionType(code, _DecodeSession.step.__globals__, "step")
            options = {}
            if COMPILE_BACKEND == "inductor":
                options = dict(torch._inductor.list_mode_options(COMPILE_MODE)) if COMPILE_MODE else {}
                if options.get("triton.cudagraphs"):
                    raise ConfigError(f"COMPILE_MODE {COMPILE_MODE!r} records CUDA graphs itself; use a "
                                      f"'-no-cudagraphs' mode: the decoder records the step")
                if hasattr(torch._inductor.config, "emulate_precision_casts"):
                    options["emulate_precision_casts"] = True  # round low-precision intermediates where eager does
            self.compiled_step = torch.compile(types.MethodType(function, self), backend=COMPILE_BACKEND,
                                               dynamic=False, **({"options": options} if options else {}))
            self.compiled_key = key
        return self.compiled_step

    def _replay(self, count: int, step: Any) -> None:
        if self.graph is None:
            warmup = min(WARMUP_STEPS, count)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):  # real steps (their tokens count); torch.compile compiles in the first
                    step()
            torch.cuda.current_stream().wait_stream(side)
            count -= warmup
            if count == 0:
                return
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                step()  # recorded, not run: the replays below run it
            self.graph = graph
        for _ in range(count):
            self.graph.replay()
