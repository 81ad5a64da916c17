"""Training speed with memory vs. the same backbone trained with LoRA alone, on the same segments.

Both variants see the same batches (generated once): samples of `--length` tokens, read in windows.

* memory: the config's recipe (e.g. configs/train/babilong.yaml: importance + LoRA above its layer),
  one `memlm train` step per batch: the text streams through memory segment by segment, then the
  final window is trained on the answer;
* LoRA alone: the same LoRA, no memory, every segment of the same text (and the final window)
  trained as language modelling, each a forward and a backward pass.

Tokens/s counts every token read; the ratio is memory / LoRA alone, measured in one process,
interleaved; peak GPU memory is reported for each.

    python benchmarks/train_speed.py --device cuda --length 16384 --batch-size 32 --out train_speed.json
    python benchmarks/train_speed.py --device cpu --length 1024 --batch-size 2 --steps 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from memlm.backbone import load_backbone
from memlm.model import MemoryModel
from memlm.train import TrainConfig, Trainer
from memlm.train.trainer import answer_losses


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_step(trainer: Trainer, batch) -> None:
    with trainer.accelerator.autocast():
        loss = trainer.step_module(batch)["loss"]
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def lora_alone_step(model: MemoryModel, optimizer, batch, segment: int, autocast) -> None:
    """Every segment of the same text, then the final window, as language modelling."""
    pieces = [(batch.memorize_ids[:, s:s + segment], batch.memorize_mask[:, s:s + segment])
              for s in range(0, batch.memorize_ids.shape[1], segment)]
    pieces.append((batch.prompt_ids, batch.prompt_mask))
    for ids, mask in pieces:
        if not mask.any():
            continue
        targets = ids.masked_fill(mask == 0, -100)
        with autocast():
            logits = model(input_ids=ids, attention_mask=mask, write_memory=False, use_cache=False).logits
            loss = answer_losses(logits, targets).mean()
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/train/babilong.yaml")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()

    base = TrainConfig.from_yaml(args.config)
    config = base.replace(**{"train.batch_size": args.batch_size, "train.eval_every": 0, "train.save_every": 0,
                             "data.curriculum": [{"step": 0, "lengths": [args.length]}], "data.tasks": ["qa1"],
                             "data.lm_every": 0, "output": "/tmp/memlm-train-speed"})
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    backbone, tokenizer = load_backbone(args.backbone, device=args.device, dtype=dtype)
    trainer = Trainer(config, backbone, tokenizer, device=args.device, progress=False)
    batches = [trainer.data.task_batch("qa1", args.length, 7 + i, args.batch_size).to(args.device)
               for i in range(args.steps)]
    segment = config.train.window - trainer.model.prefix_length()
    lora_settings = trainer.model.lora.settings if trainer.model.lora is not None else None
    memory_weights = {k: v.clone() for k, v in trainer.model.memories.state_dict().items()}
    trainer.model.detach()

    results: dict[str, list[float]] = {"memory": [], "lora_alone": []}
    peak: dict[str, float] = {}
    tokens = sum(b.tokens for b in batches)
    for _ in range(args.rounds):
        # memory variant
        trainer = Trainer(config, backbone, tokenizer, device=args.device, progress=False)
        trainer.model.memories.load_state_dict(memory_weights)
        memory_step(trainer, batches[0])  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(args.device)
        started = time.perf_counter()
        for batch in batches:
            memory_step(trainer, batch)
        sync(args.device)
        results["memory"].append(tokens / (time.perf_counter() - started))
        if args.device.startswith("cuda"):
            peak["memory"] = torch.cuda.max_memory_allocated() / 2**30
        autocast = trainer.accelerator.autocast
        trainer.model.detach()
        # LoRA alone, the same LoRA
        plain = MemoryModel(backbone, [], tokenizer=tokenizer)
        if lora_settings is not None:
            plain.add_lora(lora_settings)
        for parameter in plain.trainable_parameters():
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(plain.trainable_parameters(), lr=1e-4)
        lora_alone_step(plain, optimizer, batches[0], segment, autocast)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(args.device)
        started = time.perf_counter()
        for batch in batches:
            lora_alone_step(plain, optimizer, batch, segment, autocast)
        sync(args.device)
        results["lora_alone"].append(tokens / (time.perf_counter() - started))
        if args.device.startswith("cuda"):
            peak["lora_alone"] = torch.cuda.max_memory_allocated() / 2**30
        plain.detach()
    report = {
        "config": args.config, "device": args.device, "dtype": dtype, "length": args.length,
        "batch_size": args.batch_size, "window": config.train.window, "segment": segment, "steps": args.steps,
        "rounds": args.rounds, "tokens_per_step": tokens / args.steps,
        "memory_tokens_per_s": statistics.median(results["memory"]),
        "lora_alone_tokens_per_s": statistics.median(results["lora_alone"]),
        "ratio": statistics.median(m / b for m, b in zip(results["memory"], results["lora_alone"], strict=True)),
        "peak_gib": peak, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
