"""Training examples: BABILong-style tasks and free-form needles (`memlm.data.needle_train`) from the
training split, plain text for a language-modelling term, and the user's own files. Every batch is a pure
function of (seed, step), so a resumed run sees exactly the batches it would have seen.

An example is what the model reads in the order it reads it:

* `memorize`: tokens streamed through the memories first, segment by segment (with, for task data,
  a relevance label per token: 1 inside a fact sentence);
* `prompt` + `targets`: the final window, as the evaluation builds it (the tail of the text, the
  question in the chat template), with the loss on the answer tokens only.

The training split never meets the evaluation's: stories come from other seeds (offset by
`TRAIN_SEED_OFFSET`), and facts hide in another haystack ("gutenberg-train": the Gutenberg texts the
evaluation does not use; the evaluation hides them in the Paul Graham essays).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from memlm.data import babilong, needle_train, needles
from memlm.data.cast import Recast, distractor_text
from memlm.errors import ConfigError
from memlm.train.config import NEEDLE_TASKS, DataSection

TRAIN_SEED_OFFSET = 1_000_003  # training stories: seeds the evaluation (seed 0 and small ones) never uses
HELDOUT_SEED_OFFSET = 2_000_003  # held-out stories for evaluation during training
EVAL_ONLY_TEXTS = ("winters_tale", "areopagitica")  # Gutenberg texts the evaluation measures perplexity on

# --- the haystack and the language-modelling text -------------------------------------------------


@lru_cache(maxsize=8)
def corpus_text(name: str) -> str:
    """A corpus (`memlm corpus list`), "gutenberg-train", "cast-distractors", or a UTF-8 text file."""
    from memlm.data.corpora import CorpusNotFoundError, gutenberg_texts, load_corpus

    path = Path(name).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if name == "cast-distractors":  # sentences about the training cast that state no event (memlm.data.cast)
        return distractor_text("train")
    if name == "gutenberg-train":
        try:
            texts = gutenberg_texts()
        except CorpusNotFoundError as error:
            raise ConfigError(f"{error} (training hides facts in Gutenberg texts)") from None
        return "\n\n".join(_strip_gutenberg(text) for key, text in texts.items()
                           if not any(held in key for held in EVAL_ONLY_TEXTS))
    return load_corpus(name)


def _strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text, without its licence header and footer."""
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*", text)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    return text[start.end() if start else 0:end.start() if end else len(text)].strip()


# --- varying the stories ----------------------------------------------------------------------------
# Training stories: people, places and objects from the training cast (`memlm.data.cast`; the
# evaluation's unseen cast is disjoint from it), bAbI's own in a quarter of them, other verbs and
# time phrases throughout.
TRAINING_CAST = Recast("train", rephrase=True, keep_babi=0.25)


# --- examples and batches -----------------------------------------------------------------------------
@dataclass
class Example:
    memorize: list[int]
    labels: list[float] | None  # per memorized token: 1 inside a fact
    prompt: list[int]
    targets: list[int]  # per prompt token: the token to learn, or -100


@dataclass
class Batch:
    """Examples side by side: memorized parts right-padded, prompts left-padded."""

    memorize_ids: torch.Tensor  # (B, M)
    memorize_mask: torch.Tensor  # (B, M)
    memorize_labels: torch.Tensor | None  # (B, M)
    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    targets: torch.Tensor  # (B, P)
    kind: str
    length: int

    @property
    def tokens(self) -> int:
        return int(self.memorize_mask.sum() + self.prompt_mask.sum())

    def to(self, device: Any) -> Batch:
        moved = {name: value.to(device) if isinstance(value, torch.Tensor) else value
                 for name, value in self.__dict__.items()}
        return Batch(**moved)


def collate(examples: list[Example], pad_id: int, kind: str, length: int) -> Batch:
    rows = len(examples)
    width = max((len(e.memorize) for e in examples), default=0)
    memorize_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    memorize_mask = torch.zeros(rows, width, dtype=torch.long)
    has_labels = any(e.labels is not None for e in examples)
    memorize_labels = torch.zeros(rows, width) if has_labels else None
    prompt_width = max(len(e.prompt) for e in examples)
    prompt_ids = torch.full((rows, prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    targets = torch.full((rows, prompt_width), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        count = len(example.memorize)
        memorize_ids[row, :count] = torch.tensor(example.memorize, dtype=torch.long)
        memorize_mask[row, :count] = 1
        if memorize_labels is not None and example.labels is not None:
            memorize_labels[row, :count] = torch.tensor(example.labels)
        start = prompt_width - len(example.prompt)
        prompt_ids[row, start:] = torch.tensor(example.prompt, dtype=torch.long)
        prompt_mask[row, start:] = 1
        targets[row, start:] = torch.tensor(example.targets, dtype=torch.long)
    return Batch(memorize_ids, memorize_mask, memorize_labels, prompt_ids, prompt_mask, targets, kind, length)


class TrainingData:
    """Batches for each step, from the `data` section of a training config.

    `prefix` is how many positions the memories may put in front of a segment (they count against
    the window, as in evaluation).
    """

    def __init__(self, section: DataSection, tokenizer: Any, window: int, max_new_tokens: int, prefix: int,
                 batch_size: int, seed: int):
        if not section.tasks and not section.files:
            raise ConfigError("data: give tasks or files to train on (e.g. --file notes.txt)")
        self.section, self.tokenizer = section, tokenizer
        self.window, self.max_new_tokens, self.prefix = window, max_new_tokens, prefix
        self.batch_size, self.seed = batch_size, seed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else self.pad_id
        self.haystack = [corpus_text(name) for name in section.haystack] if set(section.tasks) - {"chat"} else []
        self.lm_ids = self._lm_tokens() if section.lm_corpus and section.lm_every else None
        self.files = [self._file_example_source(Path(path).expanduser()) for path in section.files]
        self.chat_turns = None
        if "chat" in section.tasks:
            from memlm.data.chat_turns import ChatTurnGenerator

            self.chat_turns = ChatTurnGenerator(**section.chat)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    # --- which batch, at which step ------------------------------------------------------------------
    def lengths_at(self, step: int) -> list[int]:
        return next(stage["lengths"] for stage in reversed(self.section.curriculum) if stage["step"] <= step)

    def batch(self, step: int, rank: int = 0) -> Batch:
        """The batch of `step` (for process `rank` when several share the work)."""
        rng = random.Random(f"{self.seed}/{step}/{rank}")
        if self.lm_ids is not None and self.section.lm_every and step % self.section.lm_every == \
                self.section.lm_every - 1:
            return self._lm_batch(rng)
        sources = [*self.section.tasks, *(["files"] if self.files else [])]
        source = rng.choice(sources)
        if source == "files":
            return self._files_batch(rng)
        if source == "chat":
            return self.chat_batch(rng, self.batch_size)
        length = rng.choice(self.lengths_at(step))
        seed = TRAIN_SEED_OFFSET + (step * 64 + rank) * 7 + 1
        return self.task_batch(source, length, seed, self.batch_size)

    def task_batch(self, task: str, length: int, seed: int, size: int, vary: bool | None = None) -> Batch:
        """`size` examples of `task` at `length` tokens, stories from `seed`."""
        transform = TRAINING_CAST if (self.section.vary if vary is None else vary) else None
        if task in NEEDLE_TASKS:  # always the training cast (`vary` concerns bAbI's stories)
            needle_samples = needle_train.generate(NEEDLE_TASKS[task], size, length, seed, self.count_tokens,
                                                   self.haystack)
            examples = [self.qa_example(s.context, s.facts, [needles.question_prompt(s)], [s.answer])
                        for s in needle_samples]
        elif task == "followup":
            samples = babilong.generate_followup(size, length, seed, self.count_tokens, self.haystack, transform)
            examples = [self.qa_example(s.context, s.facts, babilong.followup_questions(s), list(s.answers))
                        for s in samples]
        else:
            samples = babilong.generate(task, size, length, seed, self.count_tokens, self.haystack, transform)
            examples = [self.qa_example(s.context, s.facts, [babilong.question_prompt(s)], [s.answer])
                        for s in samples]
        return collate(examples, self.pad_id, task, length)

    # --- task examples -------------------------------------------------------------------------------
    def qa_example(self, context: str, facts: tuple[str, ...] | list[str], questions: list[str],
                   answers: list[str]) -> Example:
        """Read `context` as the evaluation does (`Contender.answer_batch`): everything but the tail
        that fits beside the first question goes through memory; then the conversation."""
        text = context.strip() + "\n"
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        stream, offsets = encoded.input_ids, encoded.offset_mapping
        spans, cursor = [], 0
        for fact in facts:  # facts are placed in order
            start = text.find(fact, cursor)
            if start >= 0:
                spans.append((start, start + len(fact)))
                cursor = start + len(fact)
        labels = [float(any(a < end and b > start for start, end in spans)) for a, b in offsets]
        question_tokens = len(self._template([{"role": "user", "content": "\n\n" + questions[0]}], True))
        keep = max(0, self.window - question_tokens - self.max_new_tokens - self.prefix)
        split = max(0, len(stream) - keep)
        tail = self.tokenizer.decode(stream[split:]).strip() if keep else ""
        messages = [{"role": "user", "content": (tail + "\n\n" if tail else "") + questions[0]}]
        for turn, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            if turn:
                messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        prompt = self._template(messages, False)
        targets = [-100] * len(prompt)
        end = len(prompt)
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            # The reply starts after the generation prompt; the target is its text and the first
            # token of the template's end of turn (so the model learns to stop), nothing after.
            start = len(self._template(messages[:index], True))
            content = self.tokenizer(message["content"], add_special_tokens=False).input_ids
            if prompt[start:start + len(content)] != content:
                raise ConfigError("the tokenizer's chat template does not render replies as their own tokens")
            end = start + len(content) + 1
            targets[start:end] = prompt[start:end]
        prompt, targets = prompt[:end], targets[:end]  # nothing to learn after the last reply
        return Example(stream[:split], labels[:split], prompt, targets)

    def _template(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                                       tokenize=True, return_dict=True)["input_ids"])

    # --- chat turns (the `chat` preset) ------------------------------------------------------------
    def chat_batch(self, rng: random.Random, size: int) -> Batch:
        """`size` chat turns (`memlm.data.chat_turns`): the fused prompt as `memlm chat` builds it, the
        loss on the reply and the end of its turn. Nothing goes through memory first."""
        assert self.chat_turns is not None
        examples = [self.chat_example(self.chat_turns.turn(rng)) for _ in range(size)]
        return collate(examples, self.pad_id, "chat", 0)

    def chat_example(self, turn: Any) -> Example:
        messages = [*turn.messages, {"role": "assistant", "content": turn.reply}]
        prompt = self._template(messages, False)
        start = len(self._template(list(turn.messages), True))
        content = self.tokenizer(turn.reply, add_special_tokens=False).input_ids
        if prompt[start:start + len(content)] != content:
            raise ConfigError("the tokenizer's chat template does not render replies as their own tokens")
        end = start + len(content) + 1  # the reply and the first token of the end of its turn
        budget = self.window - self.prefix
        if end > budget:  # keep the reply whole: cut the prompt's head (the oldest history) instead
            prompt, start, end = prompt[end - budget:], start - (end - budget), budget
        targets = [-100] * len(prompt)
        targets[max(0, start):end] = prompt[max(0, start):end]
        return Example([], None, prompt[:end], targets[:end])

    # --- language modelling and the user's files --------------------------------------------------------
    def _lm_tokens(self) -> torch.Tensor:
        text = "\n\n".join(corpus_text(name) for name in self.section.lm_corpus)
        return torch.tensor(self.tokenizer(text[:4_000_000], add_special_tokens=False).input_ids, dtype=torch.long)

    def _lm_batch(self, rng: random.Random) -> Batch:
        width = self.window
        examples = []
        for _ in range(self.batch_size):
            start = rng.randrange(0, max(1, self.lm_ids.shape[0] - width))
            chunk = self.lm_ids[start:start + width].tolist()
            examples.append(Example([], None, chunk, chunk))
        return collate(examples, self.pad_id, "lm", width)

    def _file_example_source(self, path: Path) -> tuple[str, Any]:
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path} is not UTF-8 text ({error})") from None
        if path.suffix == ".jsonl":
            turns = []
            for number, line in enumerate(content.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ConfigError(f"{path} line {number} is not JSON ({error})") from None
                if not isinstance(message, dict) or {"role", "content"} - set(message):
                    raise ConfigError(f"{path} line {number} is not a {{role, content}} message")
                turns.append({"role": message["role"], "content": str(message["content"])})
            if not any(turn["role"] == "assistant" for turn in turns):
                raise ConfigError(f"{path} has no assistant turn to learn")
            return "chat", turns
        ids = self.tokenizer(content, add_special_tokens=False).input_ids
        if len(ids) < 2:
            raise ConfigError(f"{path} holds no text to learn")
        return "text", ids

    def _files_batch(self, rng: random.Random) -> Batch:
        examples = []
        for _ in range(self.batch_size):
            kind, content = rng.choice(self.files)
            if kind == "text":  # a document read through memory; the loss on a window further on
                segment = self.window - self.prefix
                end = rng.randrange(min(len(content), segment), len(content) + 1)
                chunk = content[max(0, end - segment):end]
                examples.append(Example(content[:max(0, end - segment)], None, chunk, chunk))
            else:  # a conversation: earlier turns through memory, the loss on an assistant reply
                replies = [i for i, turn in enumerate(content) if turn["role"] == "assistant" and i > 0]
                index = rng.choice(replies)
                head = self._template(content[:max(0, index - 1)], False) if index > 1 else []
                asked = self._template(content[index - 1:index], True)
                reply = self.tokenizer(content[index]["content"], add_special_tokens=False).input_ids + [self.eos_id]
                budget = self.window - self.prefix - len(reply)
                asked = asked[-budget:]
                examples.append(Example(head, None, asked + reply, [-100] * len(asked) + reply))
        return collate(examples, self.pad_id, "files", 0)
