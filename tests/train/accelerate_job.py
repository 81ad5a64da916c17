"""Trains a tiny recurrent memory for a few steps; run alone (one process, the combined batch) or
under `accelerate launch --cpu --num_processes 2` (each process half of it, gradients averaged over
gloo). Writes the trained memory weights (safetensors) to the path given as the only argument."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny.py

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402

from memlm.train import Example, TrainConfig, Trainer, collate  # noqa: E402

COMBINED = 8
KEYS = list(range(100, 110))


class HalvedKeyRecall:
    """Step `step`'s combined batch of `COMBINED` key-recall examples; process `rank` of `world` gets
    its contiguous share, so the processes together see exactly the one-process batch."""

    def __init__(self, world: int):
        self.world = world

    def batch(self, step: int, rank: int = 0):
        rng = random.Random(f"combined/{step}")
        examples = []
        for _ in range(COMBINED):
            text = [rng.randrange(0, 90) for _ in range(24)]
            key = rng.choice(KEYS)
            text[rng.randrange(24)] = key
            examples.append(Example(text, None, [200, 201, 202, key], [-100, -100, -100, key]))
        share = COMBINED // self.world
        return collate(examples[rank * share:(rank + 1) * share], pad_id=257, kind="key-recall", length=24)


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by the launcher; the trainer's Accelerator joins it
    torch.manual_seed(0)
    config = TrainConfig.from_dict({
        "model": {"memories": [{"mechanism": "recurrent", "memory_size": 16}]},
        "data": {"tasks": ["qa1"]},
        "train": {"steps": 5, "batch_size": COMBINED // world, "lr": 3e-3, "memory_lr": 3e-3, "warmup": 0,
                  "window": 17, "bptt": 0, "eval_every": 0, "save_every": 0, "log_every": 5, "max_new_tokens": 1},
        "output": str(Path(out).parent / f"run-{world}")})
    trainer = Trainer(config, tiny_model("llama"), tiny_tokenizer(), progress=False, data=HalvedKeyRecall(world))
    initial = {f"initial/{name}": tensor.detach().clone().contiguous()
               for name, tensor in trainer.model.memories.state_dict().items()}
    trainer.train()
    if trainer.accelerator.is_main_process:
        weights = {f"trained/{name}": tensor.detach().clone().contiguous()
                   for name, tensor in trainer.model.memories.state_dict().items()}
        weights.update(initial)
        assert trainer.accelerator.num_processes == world
        save_file(weights, out, metadata={"processes": str(trainer.accelerator.num_processes),
                                          "backend": str(getattr(trainer.accelerator.state, "backend", None))})


if __name__ == "__main__":
    main(sys.argv[1])
