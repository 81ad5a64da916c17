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
  that fuse through the prompt (the bank) then add what they retrieve for the question;
* `<memory>:zeroed` — the same memory emptied just before the question: the ablation that shows
  what crosses segments (what is left is the memory's adapter reading the window's tail).

Chat turns (`observe_turn`) are handled as `ChatSession` handles them: each turn is memorised when it
happens (`MemoryModel.observe_turn`: the bank extracts facts from its text, other memories get one
write pass), the rag index gets it as one chunk, and the prompt holds the most recent turns, as
chat messages, that fit the window. `new_session()` starts a new conversation: from then on the
prompt holds only the new session's turns, except for `full`, which keeps every turn in context.

New mechanisms need nothing here: any name the registry knows is a contender.
"""

from __future__ import annotations

from typing import Any

import torch

from memlm.errors import ConfigError
from memlm.eval.baselines import RagIndex
from memlm.memories.base import TextLearning
from memlm.model import MemoryModel, attach

BASELINES = ("none", "full", "rag")
ZEROED = ":zeroed"  # suffix of a memory contender emptied before the question (an ablation)
# Base models ship no chat template; they are asked in this plain transcript form instead (after the
# BOS token, without which models such as Gemma degenerate).
PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class Contender:
    """One column of the comparison. `name` is a baseline or a mechanism / preset name."""

    def __init__(self, name: str, backbone: Any, tokenizer: Any, window: int = 1024, max_new_tokens: int = 16,
                 model: MemoryModel | None = None):
        self.name = name
        # "<memory>:zeroed" is the ablation that shows what crosses segments: the memory reads the whole
        # context as usual, then is emptied just before the question, so only what the adapter does with
        # the window's tail is left.
        name, zeroed = (name[:-len(ZEROED)], True) if name.endswith(ZEROED) else (name, False)
        self.zeroed = zeroed
        self.kind = name if name in BASELINES and model is None else "memory"
        if zeroed and self.kind != "memory":
            raise ConfigError(f"{self.name!r}: {ZEROED} applies to a memory, not to the {name!r} baseline")
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        self.tokenizer = tokenizer
        self.native_window = int(getattr(backbone.config, "max_position_embeddings", window))
        self.window = self.native_window if self.kind == "full" else min(window, self.native_window)
        self.max_new_tokens = max_new_tokens
        self.owns_model = model is None
        if model is not None:
            self.model = model
        else:
            self.model = attach(backbone, [name] if self.kind == "memory" else [], tokenizer=tokenizer)
        self.rag = RagIndex(tokenizer, device=str(self.model.layout.device)) if self.kind == "rag" else None
        self.buffer: list[int] = []
        self.written = 0  # tokens of `buffer` already handed to the memory / the rag index
        self.turns: list[tuple[str, str]] = []  # chat exchanges (observe_turn)
        self.session_start = 0  # index in `turns` where the current session began
        self.facts_learned = False  # `learn` stored facts one by one: the stream's segments are not
        self.last_memories: list[Any] = []  # what prompt fusion placed in the prompt for the latest `ask`

    def describe(self) -> dict[str, Any]:
        """What identifies this contender's results (for caching)."""
        configs = [memory.config.to_dict() for memory in self.model.memories.values()]
        identity = {"name": self.name, "kind": self.kind, "window": self.window, "configs": configs,
                    "max_new_tokens": self.max_new_tokens}
        # Only revised mechanisms carry a revision, so results cached before revisions existed stay valid.
        revisions = {name: type(memory).revision for name, memory in self.model.memories.items()
                     if type(memory).revision}
        if revisions:
            identity["revisions"] = revisions
        if self.zeroed:
            identity["zeroed"] = True
        return identity

    @classmethod
    def around(cls, model: MemoryModel, tokenizer: Any, window: int = 1024, max_new_tokens: int = 16,
               name: str = "model") -> Contender:
        """A contender reading through a `MemoryModel` that already exists (e.g. one being trained);
        `close()` leaves it attached."""
        return cls(name, model.backbone, tokenizer, window, max_new_tokens, model=model)

    def close(self) -> None:
        if self.owns_model:
            self.model.detach()

    def reset(self, user: str | None = None) -> None:
        self.buffer, self.written, self.turns, self.session_start = [], 0, [], 0
        self.facts_learned = False
        if user is not None:
            self.model.set_provenance(user=user)
        self.model.reset()
        if self.rag is not None:
            self.rag.reset()

    # --- reading -----------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        self.buffer.extend(self.tokenizer(text.strip() + "\n", add_special_tokens=False).input_ids)

    def learn(self, text: str) -> None:
        """One fact of a stream of facts (continual learning): it is read like any text (`feed`), and
        memories that learn from text (the bank) also store it as a fact, instead of storing the
        stream's segments."""
        self.feed(text)
        if self.kind == "memory" and self.learns_text:
            self.model.learn_text(text)
            self.facts_learned = True

    @property
    def learns_text(self) -> bool:
        return bool(self.model.capable(TextLearning))

    def observe_turn(self, user_text: str, reply: str) -> None:
        """A chat exchange, memorised as `ChatSession` does it."""
        self.turns.append((user_text, reply))
        if self.kind == "memory":
            turn = [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]
            turn_ids = self.tokenizer.apply_chat_template(turn, return_tensors="pt", return_dict=True)["input_ids"]
            self.model.observe_turn(user_text, reply, turn_ids=turn_ids)
        elif self.rag is not None:
            self.rag.add(f"User: {user_text}\nAssistant: {reply}", split=False)

    def new_session(self) -> None:
        """A new conversation: earlier turns leave the prompt (all but `full` must remember them)."""
        self.session_start = len(self.turns)

    def _chat_messages(self, question: str) -> list[dict[str, str]] | None:
        """The most recent exchanges that fit the window, then the question (None: `full` and they
        do not all fit)."""
        history: list[dict[str, str]] = []
        limit = self.window - self.max_new_tokens
        visible = self.turns if self.kind == "full" else self.turns[self.session_start:]
        for user_text, reply in reversed(visible):
            candidate = [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}, *history]
            if self._prompt_ids([*candidate, {"role": "user", "content": question}]).shape[1] > limit:
                if self.kind == "full":
                    return None
                break
            history = candidate
        return [*history, {"role": "user", "content": question}]

    def _flush(self, keep: int) -> None:
        """Hand everything but the last `keep` tokens to the memory or the rag index (once)."""
        end = max(self.written, len(self.buffer) - keep)
        if end <= self.written:
            return
        ids = self.buffer[self.written:end]
        if self.kind == "memory":
            # Facts learned one by one are stored already: the stream's segments are not.
            with self.model.segment_writes(not self.facts_learned):
                self.model.memorize(torch.tensor([ids]), segment_length=self.segment_length, progress=False)
        elif self.rag is not None:
            self.rag.add(self.tokenizer.decode(ids))
        self.written = end

    # --- answering ---------------------------------------------------------------------------
    @property
    def segment_length(self) -> int:
        """Tokens of text per memorized segment: the window less what memories put in front of it."""
        return max(1, self.window - self.model.prefix_length())

    def _tail_budget(self, question: str) -> int:
        """Tokens of the stream's tail that fit in the prompt beside `question` and the answer (and
        what memories put in front of the prompt)."""
        question_tokens = self._prompt_ids([{"role": "user", "content": "\n\n" + question}]).shape[1]
        return max(0, self.window - question_tokens - self.max_new_tokens - self.model.prefix_length())

    def _prompt_ids(self, messages: list[dict[str, str]]) -> torch.Tensor:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)["input_ids"]

    @torch.no_grad()
    def ask(self, question: str, query: str | None = None) -> str | None:
        """Answer `question` (the instruction and question text) with the stream's tail in the prompt.
        `query` is what retrieval looks for (default: `question`). None if `full` cannot fit it."""
        if self.turns:  # a chat
            messages = self._chat_messages(question)
            if messages is None:
                return None
        else:
            keep = self._tail_budget(question)
            if self.kind == "full" and len(self.buffer) > keep:
                return None
            self._flush(keep)
            if self.zeroed:
                self.model.reset()
            tail = self.buffer[len(self.buffer) - keep:] if keep else []
            content = (self.tokenizer.decode(tail).strip() + "\n\n" if tail else "") + question
            messages = [{"role": "user", "content": content}]
        if self.rag is not None:
            messages = self.rag.augment(messages, query or question)
        messages, self.last_memories = self.model.augment_messages(messages, query=query or question)
        ids = self._prompt_ids(messages).to(self.model.layout.device)
        output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), write_memory=False,
                                     max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer_batch(self, contexts: list[str], conversations: list[list[str]], queries: list[str] | None = None
                     ) -> list[list[str] | None]:
        """Many streams at once, one per batch row: each row reads its context, then answers its
        questions in turn, each reply staying in the conversation (the first question carries the
        instruction). Returns each row's replies, or None where `full` cannot fit the context.

        What each row sees is what `feed` + `ask` would show it alone; rows only share the passes."""
        rows = len(contexts)
        queries = queries or [turns[0] for turns in conversations]
        self.model.reset(batch_size=rows)
        # One call for every row: a fast tokenizer encodes the batch on all its threads.
        streams = self.tokenizer([text.strip() + "\n" for text in contexts], add_special_tokens=False).input_ids
        keeps = [self._tail_budget(turns[0]) for turns in conversations]
        answered = [self.kind != "full" or len(stream) <= keep for stream, keep in zip(streams, keeps, strict=True)]
        heads = [stream[:max(0, len(stream) - keep)] for stream, keep in zip(streams, keeps, strict=True)]
        if self.kind == "memory" and any(heads):
            width = max(len(head) for head in heads)
            ids = torch.full((rows, width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros(rows, width, dtype=torch.long)
            for row, head in enumerate(heads):
                ids[row, :len(head)] = torch.tensor(head, dtype=torch.long)
                mask[row, :len(head)] = 1
            self.model.memorize(ids, mask, segment_length=self.segment_length, progress=False)
        self.memory_texts = self._memory_texts(rows)
        if self.zeroed:
            self.model.reset(batch_size=rows)
        rags = [self._row_rag(head) for head in heads] if self.rag is not None else None
        conversations_so_far: list[list[dict[str, str]]] = []
        for stream, keep, turns in zip(streams, keeps, conversations, strict=True):
            tail = stream[len(stream) - keep:] if keep else []
            content = (self.tokenizer.decode(tail).strip() + "\n\n" if tail else "") + turns[0]
            conversations_so_far.append([{"role": "user", "content": content}])
        replies: list[list[str]] = [[] for _ in range(rows)]
        for turn in range(max(len(turns) for turns in conversations)):
            # Every row takes part in every pass (memory state is per row); rows with nothing to ask
            # get a one-word prompt whose reply is dropped.
            prompts, asking = [], []
            for row in range(rows):
                if not answered[row] or turn >= len(conversations[row]):
                    prompts.append(self._prompt_ids([{"role": "user", "content": "."}])[0])
                    asking.append(False)
                    continue
                messages = conversations_so_far[row]
                if turn:
                    messages.append({"role": "user", "content": conversations[row][turn]})
                query = queries[row] if turn == 0 else conversations[row][turn]
                if rags is not None:
                    messages = rags[row].augment(messages, query)
                messages, _ = self.model.augment_messages(messages, query=query, row=row)
                prompts.append(self._prompt_ids(messages)[0])
                asking.append(True)
            if not any(asking):
                break
            for row, reply in enumerate(self._generate_rows(prompts)):
                if asking[row]:
                    replies[row].append(reply)
                    conversations_so_far[row].append({"role": "assistant", "content": reply})
        return [replies[row] if answered[row] else None for row in range(rows)]

    def _memory_texts(self, rows: int) -> list[str] | None:
        """What each row's memories hold after reading their context, as text (None when no memory can
        show it: `kept_text`). A task tells from it whether a wrong answer was forgotten or misread."""
        if self.kind != "memory":
            return None
        readable = [memory for memory in self.model.memories.values() if hasattr(memory, "kept_text")]
        if not readable:
            return None
        return [" … ".join(filter(None, (memory.kept_text(row) for memory in readable))) for row in range(rows)]

    def _row_rag(self, head: list[int]) -> RagIndex:
        index = RagIndex(self.tokenizer, encoder=self.rag.encoder)
        if head:
            index.add(self.tokenizer.decode(head))
        return index

    def _generate_rows(self, prompts: list[torch.Tensor]) -> list[str]:
        """Greedy replies to the prompts, left-padded into one batch (row i reads memory row i)."""
        width = max(prompt.shape[0] for prompt in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for index, prompt in enumerate(prompts):
            ids[index, width - prompt.shape[0]:] = prompt
            mask[index, width - prompt.shape[0]:] = 1
        device = self.model.layout.device
        output = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), write_memory=False,
                                     max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return [text.strip() for text in self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]
