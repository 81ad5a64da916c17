"""What the evaluation compares: the baselines and every memory, behind one small interface.

A *contender* reads a stream of text (`feed`, or `observe_turn` for chat turns) and then answers a
question (`ask`). All of them see the last tokens of the stream in their prompt, up to their window;
what falls out of the window is what distinguishes them:

* `none` — lost: the backbone with its window capped at `window` tokens;
* `full` — nothing falls out: the whole stream in the prompt, up to the backbone's native window
  (beyond it, `ask` returns None: the input does not fit);
* `rag` — chunks of it are embedded with the offline MiniLM and the best `top_k` are put in the prompt;
* any registered mechanism or preset (`recurrent`, `knn-joint`, `bank`, ...) — it is written to the
  memory in segments of `window` tokens as it leaves the window (`MemoryModel.memorize`); memories
  that fuse through the prompt (the bank) then add what they retrieve for the question. Chat turns
  also reach memories that learn from text (the bank's fact extraction) as text.

New mechanisms need nothing here: any name the registry knows is a contender.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from memlm.eval.baselines import RagIndex
from memlm.model import MemoryModel
from memlm.registry import make_config

BASELINES = ("none", "full", "rag")


class Contender:
    """One column of the comparison. `name` is a baseline or a mechanism / preset name."""

    def __init__(self, name: str, backbone: Any, tokenizer: Any, window: int = 1024, max_new_tokens: int = 16):
        self.name = name
        self.kind = name if name in BASELINES else "memory"
        self.tokenizer = tokenizer
        self.native_window = int(getattr(backbone.config, "max_position_embeddings", window))
        self.window = self.native_window if self.kind == "full" else min(window, self.native_window)
        self.max_new_tokens = max_new_tokens
        specs = [make_config(name)] if self.kind == "memory" else []
        self.model = MemoryModel(backbone, specs, tokenizer=tokenizer)
        self.rag = RagIndex(tokenizer) if self.kind == "rag" else None
        self.buffer: list[int] = []
        self.written = 0  # tokens of `buffer` already handed to the memory / the rag index
        self.chat = False  # the stream is chat turns (set by observe_turn)

    def describe(self) -> dict[str, Any]:
        """What identifies this contender's results (for caching)."""
        configs = [memory.config.to_dict() for memory in self.model.memories.values()]
        return {"name": self.name, "kind": self.kind, "window": self.window, "configs": configs,
                "max_new_tokens": self.max_new_tokens}

    def close(self) -> None:
        self.model.detach()

    def reset(self, user: str | None = None) -> None:
        self.buffer, self.written, self.chat = [], 0, False
        if user is not None:
            self.model.set_provenance(user=user)
        self.model.reset()
        if self.rag is not None:
            self.rag.reset()

    # --- reading -----------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        self.buffer.extend(self.tokenizer(text.strip() + "\n", add_special_tokens=False).input_ids)

    def observe_turn(self, user_text: str, reply: str) -> None:
        """A chat exchange: part of the stream, and learned from its text by memories that do."""
        self.chat = True
        self.model.observe_turn(user_text, reply)
        self.feed(f"User: {user_text}\nAssistant: {reply}")

    def _flush(self, keep: int) -> None:
        """Hand everything but the last `keep` tokens to the memory or the rag index (once)."""
        end = max(self.written, len(self.buffer) - keep)
        if end <= self.written:
            return
        ids = self.buffer[self.written:end]
        if self.kind == "memory":
            with contextlib.ExitStack() as stack:
                for memory in self.model.memories.values():
                    if self.chat and memory.learns_from_text:  # chat text reached them in observe_turn
                        stack.enter_context(memory.segment_writes(False))
                self.model.memorize(torch.tensor([ids]), segment_length=self.window, progress=False)
        elif self.rag is not None:
            self.rag.add(self.tokenizer.decode(ids))
        self.written = end

    # --- answering ---------------------------------------------------------------------------
    def _prompt_ids(self, messages: list[dict[str, str]]) -> torch.Tensor:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)["input_ids"]

    @torch.no_grad()
    def ask(self, question: str, query: str | None = None) -> str | None:
        """Answer `question` (the instruction and question text) with the stream's tail in the prompt.
        `query` is what retrieval looks for (default: `question`). None if `full` cannot fit it."""
        question_tokens = self._prompt_ids([{"role": "user", "content": "\n\n" + question}]).shape[1]
        keep = max(0, self.window - question_tokens - self.max_new_tokens)
        if self.kind == "full" and len(self.buffer) > keep:
            return None
        self._flush(keep)
        tail = self.buffer[len(self.buffer) - keep:] if keep else []
        content = (self.tokenizer.decode(tail).strip() + "\n\n" if tail else "") + question
        messages = [{"role": "user", "content": content}]
        if self.rag is not None:
            messages = self.rag.augment(messages, query or question)
        messages, _ = self.model.augment_messages(messages, query=query or question)
        ids = self._prompt_ids(messages).to(self.model.layout.device)
        output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), write_memory=False,
                                     max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
