"""Segment-recurrent training of memories (and an optional LoRA adapter), on `accelerate`.

Each step takes a batch of examples (`memlm.train.data`), one per batch row, and for each:

1. resets the memories (one state per row);
2. streams the example's text through them in segments of `window - prefix` tokens, writing after
   each (`MemoryModel.write`), so the memory is written by one segment and read by the next;
   gradients flow through the memory state across segments (backpropagation through time), cut
   every `bptt` segments;
3. reads the final window (the tail of the text and the question, as the evaluation asks it) with
   whatever the memories carry, and takes the next-token loss on the answer tokens;
4. adds what the memories report as their own loss (`AuxiliaryLoss`, e.g. the importance scorer's
   relevance labels and REINFORCE from each row's answer loss).

The same code runs on CPU, one GPU, or several processes/GPUs under `accelerate launch` (the step is
one `nn.Module` forward, so DDP sees it whole; each process draws its own batches from the step).
Checkpoints hold the trainable weights (safetensors), the optimizer's state (safetensors + JSON),
the scheduler and every RNG (JSON): a resumed run continues exactly, with no pickle anywhere.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from memlm.errors import ConfigError, CorruptedFileError, TrainingDivergedError
from memlm.model import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MemoryModel
from memlm.serialization import atomic_write_json, load_tensors, read_json, save_tensors
from memlm.train.config import NEEDLE_TASKS, TrainConfig
from memlm.train.curves import EVAL_FILE, LOG_FILE, plot_curves
from memlm.train.data import HELDOUT_SEED_OFFSET, Batch, TrainingData

FINAL_DIR = "final"
LOG_FIELDS = ("step", "loss", "task_loss", "aux_loss", "kind", "length", "lr", "tokens_per_s", "seconds",
              "skipped")
MAX_SKIPPED_IN_A_ROW = 20


class SegmentRecurrentLoss(nn.Module):
    """One training step's forward: segments through memory, then the loss on the answer."""

    def __init__(self, model: MemoryModel, window: int, bptt: int):
        super().__init__()
        self.model = model
        self.window, self.bptt = window, bptt

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        model = self.model
        rows = batch.prompt_ids.shape[0]
        model.reset(batch_size=rows)
        segment = max(1, self.window - model.prefix_length())
        for index, start in enumerate(range(0, batch.memorize_ids.shape[1], segment)):
            piece = slice(start, start + segment)
            labels = None if batch.memorize_labels is None else batch.memorize_labels[:, piece]
            model.write(batch.memorize_ids[:, piece], batch.memorize_mask[:, piece], token_labels=labels)
            if self.bptt and (index + 1) % self.bptt == 0:
                model.detach_state()
        positions = (batch.prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        # Logits only where a target is predicted: the vocabulary is large and answers are short.
        targeted = (batch.targets != -100).any(0).nonzero()
        keep = batch.targets.shape[1] - int(targeted[0]) + 1 if targeted.numel() else 1
        logits = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=positions,
                       write_memory=False, use_cache=False, logits_to_keep=keep).logits  # (B, keep, V)
        row_losses = answer_losses(logits, batch.targets[:, -logits.shape[1]:])  # (B,)
        aux = model.auxiliary_loss(row_losses)
        task_loss = row_losses.mean()
        aux = aux if aux is not None else task_loss.new_zeros(())
        return {"loss": task_loss + aux, "task_loss": task_loss.detach(), "aux_loss": aux.detach()}


def answer_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each row over its target tokens (-100 elsewhere): (B,)."""
    shifted = targets[:, 1:]
    losses = nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=-100,
                                         reduction="none")  # (B, P - 1)
    counts = (shifted != -100).sum(-1).clamp(min=1)
    return losses.sum(-1) / counts


@dataclass
class TrainResult:
    """Where a run wrote its outputs, and its last figures."""

    output: Path
    final: Path
    steps: int
    last_loss: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains the memories (and LoRA) a `TrainConfig` describes; see the module docstring.

    Example:
        >>> result = Trainer(TrainConfig.from_yaml("configs/train/babilong.yaml")).train()
        >>> model = memlm.MemoryModel.from_pretrained(backbone, result.final)
    """

    def __init__(self, config: TrainConfig, backbone: Any = None, tokenizer: Any = None, device: str | None = None,
                 progress: bool = True, data: Any = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        self.progress = progress
        cuda = torch.cuda.is_available() and device != "cpu"
        precision = config.train.precision
        mixed = "bf16" if (precision == "bf16" or (precision == "auto" and cuda)) else "no"
        # `train.steps` counts optimizer updates whatever the number of processes: the schedule steps
        # once per update (accelerate's default steps it once per process, so under `accelerate launch`
        # with 2 processes the cosine ran twice as fast; tests/train/test_accelerate.py).
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed,
                                       gradient_accumulation_steps=config.train.grad_accum,
                                       step_scheduler_with_optimizer=False,
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self._seed_everything(config.train.seed)
        if backbone is None:
            from memlm.backbone import load_backbone

            backbone, tokenizer = load_backbone(config.model.backbone, device=str(self.accelerator.device),
                                                dtype="bfloat16" if mixed == "bf16" else "float32")
        if tokenizer is None:
            raise ConfigError("training needs the backbone's tokenizer")
        self.tokenizer = tokenizer
        self.model = self._build_model(backbone.to(self.accelerator.device))
        train = config.train
        # `data` may be any object with `batch(step, rank) -> Batch` (tests bring toy tasks).
        self.data = data or TrainingData(config.data, tokenizer, train.window, train.max_new_tokens,
                                         self.model.prefix_length(), train.batch_size, train.seed)
        self.step_module = SegmentRecurrentLoss(self.model, train.window, train.bptt)
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step_module, self.optimizer, self.scheduler = self.accelerator.prepare(
            self.step_module, self.optimizer, self.scheduler)
        self.output = Path(config.output)
        self.step = 0
        self.skipped_steps, self._skipped_in_a_row = 0, 0  # updates skipped for a non-finite gradient
        self.evaluations: list[dict[str, Any]] = []
        self._tensorboard = _tensorboard_writer(self.output) if self.accelerator.is_main_process else None

    # --- setting up ----------------------------------------------------------------------------
    def _build_model(self, backbone: Any) -> MemoryModel:
        config = self.config.model
        if config.init is not None:
            model = MemoryModel.from_pretrained(backbone, self._init_folder(), tokenizer=self.tokenizer)
        else:
            with warnings.catch_warnings():  # "starts untrained" is what training is for
                warnings.simplefilter("ignore", UserWarning)
                model = MemoryModel(backbone, config.memory_specs(), tokenizer=self.tokenizer)
            if config.lora is not None:
                model.add_lora(self._lora_settings(model))
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
        for parameter in model.trainable_parameters():  # master weights in float32, under bf16 autocast
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        if self.config.train.lr == 0 and model.lora is not None:  # a frozen LoRA: no gradient, no optimizer state
            for parameter in model.lora.parameters():
                parameter.requires_grad_(False)
        if not model.trainable_parameters():
            raise ConfigError("nothing to train: the memories have no parameters and no LoRA is configured")
        model.train()
        return model

    def _init_folder(self) -> Path:
        """The folder to start from: `init` (a path or a shipped preset's name), with `init_settings`
        written into a copy of its config in the run folder."""
        from memlm.registry import get_preset

        config = self.config.model
        preset = get_preset(config.init)
        source = preset.path if preset is not None and preset.path is not None else Path(config.init).expanduser()
        if not config.init_settings:
            return source
        adapter = read_json(source / ADAPTER_CONFIG_FILE)
        mechanisms = {entry.get("mechanism") for entry in adapter.get("memories", [])}
        unknown = sorted(set(config.init_settings) - mechanisms)
        if unknown:
            raise ConfigError(f"model.init_settings names {unknown}, which {source} does not hold "
                              f"(it holds {sorted(mechanisms)})")
        for entry in adapter["memories"]:
            entry.update(config.init_settings.get(entry["mechanism"], {}))
        target = Path(self.config.output) / "init"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / ADAPTER_WEIGHTS_FILE, target / ADAPTER_WEIGHTS_FILE)
        atomic_write_json(target / ADAPTER_CONFIG_FILE, adapter)
        return target

    def _lora_settings(self, model: MemoryModel) -> dict[str, Any]:
        settings = dict(self.config.model.lora)
        if settings.get("layers") == "above_memory":
            depths = [memory.capture_depth for memory in model.memories.values()]
            deepest = max((d for d in depths if d is not None), default=-1)
            settings["layers"] = list(range(deepest + 1, model.layout.num_layers))
            if not settings["layers"]:
                raise ConfigError("lora.layers above_memory leaves no layer above the memories'")
        return settings

    def _parameter_groups(self) -> list[dict[str, Any]]:
        memory = list(self.model.memories.parameters())
        lora = self.model.lora.parameters() if self.model.lora is not None and self.config.train.lr > 0 else []
        groups = [{"params": memory, "lr": self.config.train.memory_lr}] if memory else []
        return groups + ([{"params": lora, "lr": self.config.train.lr}] if lora else [])

    def _lr_factor(self, step: int) -> float:
        warmup, total = self.config.train.warmup, self.config.train.steps
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # --- the loop ------------------------------------------------------------------------------
    def train(self, resume: bool = True) -> TrainResult:
        """Run to `train.steps` (continuing from the latest checkpoint in `output` if `resume`)."""
        train = self.config.train
        if resume:
            self._resume()
        if self.accelerator.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "train_config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        loader = self._batches(self.step)
        bar = tqdm(total=train.steps, initial=self.step, desc="training", unit="step",
                   disable=not (self.progress and self.accelerator.is_main_process))
        last_loss, started = math.nan, time.perf_counter()
        window: dict[str, list[tuple[float, ...]]] = {}  # what happened since the last log row, per kind
        deadline = started + 60 * train.max_minutes if train.max_minutes else math.inf
        while self.step < train.steps:
            out_of_time = torch.tensor([float(time.perf_counter() > deadline)], device=self.accelerator.device)
            if self.accelerator.gather(out_of_time).max() > 0:  # every process stops at the same step
                if self.progress and self.accelerator.is_main_process:
                    tqdm.write(f"stopping at step {self.step}: train.max_minutes ({train.max_minutes}) reached")
                # A checkpoint of this very step, so that a rerun resumes here (not at the last save_every).
                if self.step and not (self.output / f"checkpoint-{self.step:06d}").is_dir():
                    self.save_checkpoint()
                break
            batch = next(loader).to(self.accelerator.device)
            tick = time.perf_counter()
            with self.accelerator.accumulate(self.step_module), self.accelerator.autocast():
                outputs = self.step_module(batch)
                self.accelerator.backward(self._on_graph(outputs["loss"]))
                if self.accelerator.sync_gradients:
                    self._step_if_finite(train.grad_clip)
                    self.scheduler.step()  # once per update (what accelerate did with one process)
                self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            seconds = time.perf_counter() - tick
            last_loss = float(outputs["loss"].detach())
            tokens_per_s = batch.tokens * self.accelerator.num_processes / max(seconds, 1e-9)
            bar.update()
            bar.set_postfix(loss=f"{last_loss:.3f}", kind=batch.kind, length=batch.length,
                            tok_s=f"{tokens_per_s:,.0f}", **({"skipped": self.skipped_steps} if self.skipped_steps
                                                            else {}))
            window.setdefault(batch.kind, []).append(
                (last_loss, float(outputs["task_loss"]), float(outputs["aux_loss"]), batch.length, tokens_per_s))
            if self.step % max(1, train.log_every) == 0 or self.step == train.steps:
                self._log_window(window, time.perf_counter() - started)
            if train.eval_every and self.step % train.eval_every == 0:
                self.evaluate()
            if train.save_every and self.step % train.save_every == 0 and self.step < train.steps:
                self.save_checkpoint()
        bar.close()
        if train.eval_every and self.step % train.eval_every:
            self.evaluate()
        final = self.save_final()
        return TrainResult(self.output, final, self.step, last_loss, self.evaluations)

    def _batches(self, start: int) -> Any:
        """Batches from `start` on, prepared ahead in worker processes (data building is CPU work)."""
        data, rank = self.data, self.accelerator.process_index
        workers = min(8, max(0, (os.cpu_count() or 1) - 2)) if torch.cuda.is_available() else 0

        class Steps(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return 10**9

            def __getitem__(self, step: int) -> Batch:
                return data.batch(start + step, rank)

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # A generator of its own: a DataLoader without one draws its base seed from torch's global
        # generator when its iterator starts, after `_resume` restored it, so a resumed run's steps saw
        # torch's random numbers shifted by one draw.
        loader = torch.utils.data.DataLoader(Steps(), batch_size=None, num_workers=workers,
                                             prefetch_factor=4 if workers else None,
                                             generator=torch.Generator().manual_seed(self.config.train.seed))
        return iter(loader)

    def _on_graph(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss`, tied to the trained parameters when nothing trainable produced it (a frozen LoRA on a
        batch where the memory kept nothing): the step then gives zero gradients instead of failing, and
        every process still takes part in the reduction."""
        if loss.requires_grad:
            return loss
        trained = [parameter for parameter in self.step_module.parameters() if parameter.requires_grad]
        return loss + sum(parameter.sum() * 0.0 for parameter in trained)

    # --- evaluating ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out accuracy (training split, other seeds) per task and length, with greedy answers
        read exactly as the evaluation harness reads them."""
        from memlm.data import babilong, needle_train, needles
        from memlm.eval import scoring
        from memlm.eval.contenders import Contender

        train = self.config.train
        if not train.eval_samples or not self.accelerator.is_main_process:
            return {}
        self.model.eval()
        contender = Contender.around(self.model, self.tokenizer, train.window, train.max_new_tokens)
        results: dict[str, Any] = {"step": self.step}
        try:
            for task in self.config.data.tasks:
                if task == "chat":
                    results.update(self._evaluate_chat(train.eval_samples))
                    continue
                for length in train.eval_lengths:
                    seed = HELDOUT_SEED_OFFSET + length
                    haystack = self.data.haystack
                    with self.accelerator.autocast():
                        if task in NEEDLE_TASKS:
                            samples = needle_train.generate(NEEDLE_TASKS[task], train.eval_samples, length, seed,
                                                            self.data.count_tokens, haystack)
                            replies = contender.answer_batch([s.context for s in samples],
                                                             [[needles.question_prompt(s)] for s in samples],
                                                             [s.question for s in samples])
                            hits = [needles.answer_correct(r[0], s.answer)
                                    for r, s in zip(replies, samples, strict=True)]
                        elif task == "followup":
                            samples = babilong.generate_followup(train.eval_samples, length, seed,
                                                                 self.data.count_tokens, haystack)
                            replies = contender.answer_batch([s.context for s in samples],
                                                             [babilong.followup_questions(s) for s in samples])
                            hits = [scoring.babilong_correct(r[0], s.answers[0], babilong.LOCATIONS)
                                    for r, s in zip(replies, samples, strict=True)]
                        else:
                            samples = babilong.generate(task, train.eval_samples, length, seed,
                                                        self.data.count_tokens, haystack)
                            replies = contender.answer_batch([s.context for s in samples],
                                                             [[babilong.question_prompt(s)] for s in samples],
                                                             [s.question for s in samples])
                            hits = [scoring.babilong_correct(r[0], s.answer, babilong.LABELS[task], s.question)
                                    for r, s in zip(replies, samples, strict=True)]
                    results[f"{task}@{length}"] = sum(hits) / len(hits)
        finally:
            self.model.train()
        self.evaluations.append(results)
        self._append_csv(EVAL_FILE, results)
        if self._tensorboard is not None:
            for name, value in results.items():
                if name != "step":
                    self._tensorboard.add_scalar(f"eval/{name}", value, self.step)
        if self.progress:
            tqdm.write(f"step {self.step}: " + ", ".join(f"{k} {v:.0%}" for k, v in results.items() if k != "step"))
        return results

    def _evaluate_chat(self, samples: int) -> dict[str, float]:
        """Held-out chat turns (other seeds), answered greedily: per kind, the share of good replies
        (`memlm.eval.chat.turn_ok`: the answer said, "I don't know" for never-told questions, short,
        no sentence repeated)."""
        from memlm.eval.chat import turn_ok

        rng = random.Random(f"{HELDOUT_SEED_OFFSET}/chat")
        scores: dict[str, list[bool]] = {}
        for _ in range(samples):
            turn = self.data.chat_turns.turn(rng)
            ids = torch.tensor([self.data._template(list(turn.messages), True)], device=self.accelerator.device)
            with self.accelerator.autocast():
                output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), write_memory=False,
                                             max_new_tokens=64, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id)
            reply = self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
            scores.setdefault(turn.kind, []).append(turn_ok(turn.kind, reply, turn.answer))
        results = {f"chat/{kind}": sum(values) / len(values) for kind, values in sorted(scores.items())}
        every = [value for values in scores.values() for value in values]
        results["chat"] = sum(every) / max(1, len(every))
        return results

    # --- logging -------------------------------------------------------------------------------
    def _step_if_finite(self, grad_clip: float) -> None:
        """The optimizer step, unless the gradient is not finite: one overflowing batch (bf16, a long
        sample) would otherwise turn every weight into NaN for the rest of the run. Too many such
        batches in a row mean the run has diverged: stop with an error rather than burn the GPU."""
        norm = self.accelerator.clip_grad_norm_(self.model.trainable_parameters(), grad_clip or math.inf)
        if torch.isfinite(torch.as_tensor(norm)).item():
            self.optimizer.step()
            self._skipped_in_a_row = 0
            return
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        if self.progress and self.accelerator.is_main_process:
            tqdm.write(f"step {self.step + 1}: gradient not finite; the update is skipped "
                       f"({self.skipped_steps} skipped so far)")
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise TrainingDivergedError(
                f"{MAX_SKIPPED_IN_A_ROW} steps in a row had a non-finite gradient (step {self.step + 1}); "
                "lower train.lr / train.memory_lr or the auxiliary loss weights, or train in fp32")

    def _log_window(self, window: dict[str, list[tuple[float, ...]]], seconds: float) -> None:
        """One log row per kind of batch seen since the last row (means over its steps): answer and
        language-modelling losses differ by an order of magnitude and must not alias."""
        for kind, values in window.items():
            loss, task_loss, aux_loss, length, tokens_per_s = \
                (sum(column) / len(column) for column in zip(*values, strict=True))
            self._log({"step": self.step, "loss": loss, "task_loss": task_loss, "aux_loss": aux_loss,
                       "kind": kind, "length": round(length), "lr": self.scheduler.get_last_lr()[-1],
                       "tokens_per_s": round(tokens_per_s), "seconds": round(seconds, 1),
                       "skipped": self.skipped_steps})
        window.clear()

    def _log(self, row: dict[str, Any]) -> None:
        self._append_csv(LOG_FILE, row)
        if self._tensorboard is not None:
            for name in ("loss", "task_loss", "aux_loss", "lr", "tokens_per_s"):
                self._tensorboard.add_scalar(f"train/{name}", row[name], row["step"])
            self._tensorboard.flush()

    def _append_csv(self, name: str, row: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.output / name
        self.output.mkdir(parents=True, exist_ok=True)
        fields = list(LOG_FIELDS) if name == LOG_FILE else list(row)
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Weights, optimizer, scheduler and RNG at this step, written to `checkpoint-<step>`."""
        directory = self.output / f"checkpoint-{self.step:06d}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            staging = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            self.model.save_pretrained(staging / "weights")
            tensors, layout = _optimizer_tensors(self.optimizer.optimizer if hasattr(self.optimizer, "optimizer")
                                                 else self.optimizer)
            save_tensors(staging / "optimizer.safetensors", tensors, {"format": "memlm-optimizer"})
            atomic_write_json(staging / "trainer_state.json", {
                "step": self.step, "optimizer": layout, "scheduler": _json_safe(self.scheduler.state_dict()),
                "rng": _rng_state(), "evaluations": self.evaluations, "skipped_steps": self.skipped_steps})
            shutil.rmtree(directory, ignore_errors=True)
            staging.replace(directory)
            for old in sorted(self.output.glob("checkpoint-*"))[:-2]:  # keep the two latest
                if old != directory and not old.name.endswith(".tmp"):
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return directory

    def _resume(self) -> None:
        checkpoints = sorted(p for p in self.output.glob("checkpoint-*") if not p.name.endswith(".tmp"))
        if not checkpoints:
            return
        directory = checkpoints[-1]
        state = read_json(directory / "trainer_state.json")
        if not isinstance(state, dict) or "step" not in state:
            raise CorruptedFileError(f"{directory / 'trainer_state.json'} is not a memlm trainer state")
        weights, _ = load_tensors(directory / "weights" / "memory_weights.safetensors")
        self.model._load_weights(weights, source=directory)
        tensors, _ = load_tensors(directory / "optimizer.safetensors")
        optimizer = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"], optimizer))
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.evaluations = list(state.get("evaluations", []))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.progress and self.accelerator.is_main_process:
            tqdm.write(f"resumed from {directory} at step {self.step}")

    def save_final(self) -> Path:
        """The trained weights (with the training config) in `final/`, and the curves as a PNG."""
        final = self.output / FINAL_DIR
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.model.save_pretrained(final, extra={"train_config": self.config.to_dict(), "steps": self.step,
                                                     "evaluations": self.evaluations})
            plot_curves(self.output)
        self.accelerator.wait_for_everyone()
        return final


def _tensorboard_writer(output: Path) -> Any:
    """TensorBoard event files beside the CSV log, when tensorboard is installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / "tensorboard"))


# --- optimizer and RNG state without pickle -----------------------------------------------------------
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: v for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"param_groups": _json_safe(groups), "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], layout: dict[str, Any], optimizer: torch.optim.Optimizer
                     ) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in layout["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = layout["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise CorruptedFileError("the checkpoint's optimizer has other parameter groups than this run's")
    return {"state": state, "param_groups": groups}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return None  # functions (lr lambdas) are rebuilt from the config


def _rng_state() -> dict[str, Any]:
    python = random.getstate()
    numpy = np.random.get_state()
    state = {"python": [python[0], list(python[1]), python[2]],
             "numpy": [numpy[0], numpy[1].tolist(), int(numpy[2]), int(numpy[3]), float(numpy[4])],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy[0], np.asarray(numpy[1], dtype=np.uint32), numpy[2], numpy[3], numpy[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
