"""The trainer: learning through memory across segments, exact resume, typed errors on bad configs."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny import tiny_model

import memlm
import memlm.train.trainer as trainer_module
from memlm.train import Example, TrainConfig, Trainer, collate

KEYS = list(range(100, 110))


class KeyRecall:
    """A toy copy task: a key token hides in the text that goes through memory; the question after
    it (which carries no information about the key) must be answered with the key."""

    def __init__(self, batch_size: int = 16, length: int = 32, labels: bool = False):
        self.batch_size, self.length, self.labels = batch_size, length, labels

    def batch(self, step: int, rank: int = 0):
        rng = random.Random(f"key-recall/{step}/{rank}")
        examples = []
        for _ in range(self.batch_size):
            text = [rng.randrange(0, 90) for _ in range(self.length)]
            key = rng.choice(KEYS)
            where = rng.randrange(self.length)
            text[where] = key
            prompt = [200, 201, 202, key]
            labels = [float(i == where) for i in range(self.length)] if self.labels else None
            examples.append(Example(text, labels, prompt, [-100, -100, -100, key]))
        return collate(examples, pad_id=257, kind="key-recall", length=self.length)


def config(tmp_path, memories, steps=60, lora=None, **train):
    return TrainConfig.from_dict({
        "model": {"memories": memories, "lora": lora},
        "data": {"tasks": ["qa1"]},
        "train": {"steps": steps, "batch_size": 16, "lr": 3e-3, "memory_lr": 3e-3, "warmup": 0, "window": 96,
                  "bptt": 0, "eval_every": 0, "save_every": 0, "log_every": 5, **train},
        "output": str(tmp_path / "run")})


def final_loss(trainer, steps=4) -> float:
    trainer.model.eval()
    with torch.no_grad():
        losses = [float(trainer.step_module(trainer.data.batch(10_000 + i))["task_loss"]) for i in range(steps)]
    return sum(losses) / len(losses)


LORA = {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                   "lm_head"]}


def test_the_trainer_learns_to_carry_a_key_through_memory_across_segments(tmp_path, tokenizer):
    torch.manual_seed(0)
    options = {"mechanism": "slots", "layers": "all", "memory_slots": 8, "mem_dim": 64}
    # The text is 32 tokens in segments of 17: the key is one or two segments back.
    # A LoRA adapter (on the output head too: a random tiny model's head cannot say anything firmly)
    # lets the frozen backbone learn to say what the memory hands it.
    trainer = Trainer(config(tmp_path, [options], steps=200, window=17, max_new_tokens=1, lora=LORA),
                      tiny_model("llama", hidden_size=64), tokenizer, progress=False, data=KeyRecall())
    before = final_loss(trainer)
    result = trainer.train()
    assert before > 0.9 * math.log(10)  # nothing known: at best a guess among the ten keys
    assert final_loss(trainer) < 0.5 * math.log(10)
    assert result.final.joinpath("memlm_config.json").exists() and (result.output / "curves.png").exists()
    rows = (result.output / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 1 + 200 // 5


def test_relevance_labels_reach_the_importance_scorer_through_the_trainer(tmp_path, tokenizer):
    torch.manual_seed(0)
    # Random byte tokens form no words: the key is a single token, kept as one.
    options = {"mechanism": "importance", "max_memory_size": 2, "score_layer": 0, "context_tokens": 1,
               "keep_unit": "token"}
    trainer = Trainer(config(tmp_path, [options], steps=100, window=17 + 2, max_new_tokens=1, lora=LORA),
                      tiny_model("llama", hidden_size=64), tokenizer, progress=False, data=KeyRecall(labels=True))
    assert trainer.model.prefix_length() == 2  # segments of 17 tokens leave room for the 2 kept ones
    trainer.train()
    memory = trainer.model.memories["importance"]
    trainer.model.eval()
    batch = KeyRecall(batch_size=64, labels=True).batch(99_999)
    with torch.no_grad():
        trainer.step_module(batch)
    keys = torch.tensor([[t for t in row if t in KEYS][0] for row in batch.memorize_ids.tolist()])
    kept_key = (memory.kept_ids == keys[:, None]).any(-1).float().mean().item()
    assert kept_key > 0.9 and memory.kept_mask.sum(-1).float().mean().item() < 1.5  # the key, and little else


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path, tokenizer, monkeypatch):
    memories = [{"mechanism": "recurrent", "memory_size": 16}]
    # Every step draws from Python's, NumPy's and torch's generators (as dropout or sampling would):
    # each row's loss gets a random weight, so a resume that did not restore all three generators
    # would train on other weights and end elsewhere.
    answer_losses = trainer_module.answer_losses
    steps_taken = []

    def randomly_weighted(logits, targets):
        steps_taken.append(1)
        losses = answer_losses(logits, targets)
        rows = losses.shape[0]
        weights = (torch.rand(rows) + torch.tensor([random.random() for _ in range(rows)])
                   + torch.from_numpy(np.random.rand(rows)).float())
        return losses * weights.to(losses.device)

    monkeypatch.setattr(trainer_module, "answer_losses", randomly_weighted)
    # Evaluations every 2 steps, recorded cheaply (the held-out tasks are not what this test is about): the
    # one at step 2 happened before checkpoint-3, so only a restored history still holds it after the resume.
    monkeypatch.setattr(Trainer, "evaluate", lambda self: self.evaluations.append({"step": self.step}))

    class Killed(Exception):
        pass

    class DiesAtStep(KeyRecall):
        def batch(self, step, rank=0):
            if step == self.dies_at:
                raise Killed
            return super().batch(step, rank)

    def run(output, dies_at=None):
        torch.manual_seed(0)
        data = DiesAtStep(batch_size=4)
        data.dies_at = dies_at
        trainer = Trainer(config(output, memories, steps=6, save_every=3, eval_every=2, window=17, max_new_tokens=1),
                          tiny_model("llama"), tokenizer, progress=False, data=data)
        trainer.train()
        return {name: tensor.clone() for name, tensor in trainer.model.memories.state_dict().items()}, trainer

    straight, straight_trainer = run(tmp_path / "straight")
    assert straight_trainer.evaluations == [{"step": 2}, {"step": 4}, {"step": 6}]
    with pytest.raises(Killed):  # killed while fetching step 5's batch: checkpoint-3 is the last saved
        run(tmp_path / "resumed", dies_at=4)
    torch.manual_seed(123)  # another process state: resuming must not depend on it
    leftover = tmp_path / "resumed" / "run" / "checkpoint-000005.tmp"  # a later save killed while writing
    leftover.mkdir()
    (leftover / "trainer_state.json").write_text("{not json")
    steps_taken.clear()
    resumed, trainer = run(tmp_path / "resumed")
    assert trainer.step == 6
    assert len(steps_taken) == 3  # it went on from checkpoint-3 (starting over would also end at step 6)
    assert trainer.evaluations == straight_trainer.evaluations  # step 2's came from the checkpoint
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    logged = (tmp_path / "resumed" / "run" / "log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in logged[1:]] == ["5", "6"]  # logged every 5 steps and at the end


def test_resuming_restores_the_skip_count_reads_older_states_and_says_where_it_resumed(tmp_path, tokenizer, capsys):
    import json
    import re

    def trainer(progress=False, memory_size=16):
        return Trainer(config(tmp_path, [{"mechanism": "recurrent", "memory_size": memory_size}], steps=2),
                       tiny_model("llama"), tokenizer, progress=progress, data=KeyRecall(batch_size=2))

    directory = trainer().save_checkpoint()
    state_file = directory / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state.update(step=2, skipped_steps=3, evaluations=[{"step": 1, "qa1": 0.5}])  # at the last step: nothing to run
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    resumed = trainer()
    resumed.train()
    assert (resumed.step, resumed.skipped_steps, resumed.evaluations) == (2, 3, [{"step": 1, "qa1": 0.5}])
    assert "resumed from" not in capsys.readouterr().out  # progress off: nothing said
    del state["skipped_steps"], state["evaluations"]  # a state written before these were saved
    state_file.write_text(json.dumps(state))
    older = trainer(progress=True)
    older.train()
    assert (older.step, older.skipped_steps, older.evaluations) == (2, 0, [])
    assert f"resumed from {directory} at step 2" in capsys.readouterr().out
    # The memory's config changed since the checkpoint was saved: the error names the checkpoint.
    with pytest.raises(memlm.IncompatibleMemoryError, match=re.escape(str(directory))):
        trainer(memory_size=8).train()


def _draws() -> list:
    return [random.random(), np.random.randn(3).tolist(), np.random.rand(), torch.randn(3).tolist()]


def test_resuming_random_generators_round_trip_through_the_checkpoints_json():
    """Python's, NumPy's (with a Gaussian cached: NumPy draws them in pairs) and torch's generators,
    saved as the checkpoint saves them (JSON), then restored: the same draws come again."""
    import json

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # an odd number of Gaussians: the second of the pair waits in the state
    assert np.random.get_state()[3] == 1
    saved = json.loads(json.dumps(trainer_module._rng_state()))
    expected = _draws()
    _draws()  # the generators move on
    trainer_module._set_rng_state(saved)
    assert _draws() == expected


def test_resuming_restores_cuda_generators_when_saved_and_on_a_cuda_machine(monkeypatch):
    """CUDA's generators (one per device) are saved when CUDA is there and restored when both the
    checkpoint has them and CUDA is there: a CPU checkpoint resumes on a GPU machine (CUDA faked here)."""
    states = [torch.arange(6, dtype=torch.uint8), torch.arange(6, 12, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [state.clone() for state in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    saved = trainer_module._rng_state()
    assert saved["cuda"] == [state.tolist() for state in states]
    trainer_module._set_rng_state(saved)
    assert len(restored) == 1 and all(torch.equal(got, want) and got.dtype == torch.uint8
                                      for got, want in zip(restored[0], states, strict=True))
    del saved["cuda"]  # saved on a CPU machine: CUDA's generators stay as they are
    trainer_module._set_rng_state(saved)
    assert len(restored) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer_module._set_rng_state({**saved, "cuda": [state.tolist() for state in states]})  # and no CUDA now
    assert len(restored) == 1


@pytest.mark.parametrize("state", ["[]", '{"optimizer": {}}'])
def test_a_checkpoint_whose_state_is_not_a_trainer_state_is_refused(tmp_path, tokenizer, state):
    checkpoint = tmp_path / "run" / "checkpoint-000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(state)
    trainer = Trainer(config(tmp_path, [{"mechanism": "recurrent", "memory_size": 16}], steps=3),
                      tiny_model("llama"), tokenizer, progress=False, data=KeyRecall(batch_size=2))
    with pytest.raises(memlm.CorruptedFileError, match="checkpoint-000002/trainer_state.json is not a memlm trainer"):
        trainer.train()


@pytest.mark.parametrize("values, message", [
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"stpes": 3}}, "unknown option"),
    ({"data": {"tasks": ["qa9"]}}, "unknown"),
    ({"data": {"haystack": ["pg-essays"]}}, "evaluation's haystack"),
    ({"data": {"curriculum": [{"step": 5, "lengths": [0]}]}}, "starting at step 0"),
    ({"model": {"memories": []}}, "non-empty"),
    ({"train": {"precision": "fp8"}}, "precision"),
    ({"train": {"memory_lr": 0}}, "memory_lr must be a positive"),
    ({"train": {"lr": -1e-4}}, "lr must be a non-negative"),
    ({"schedule": {}}, "unknown section"),
])
def test_bad_configs_are_typed_errors(values, message):
    with pytest.raises(memlm.ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_lr_zero_freezes_the_lora_while_the_memories_learn(tmp_path, tokenizer):
    """`train.lr: 0` (a scorer-only run from a preset): the LoRA's weights end exactly as they began
    and hold no optimizer state; the memories' weights move."""
    torch.manual_seed(0)
    options = {"mechanism": "slots", "layers": "all", "memory_slots": 8, "mem_dim": 64}
    trainer = Trainer(config(tmp_path, [options], steps=3, window=17, max_new_tokens=1, lora=LORA, lr=0),
                      tiny_model("llama", hidden_size=64), tokenizer, progress=False, data=KeyRecall())
    lora_before = {name: value.clone() for name, value in trainer.model.lora.state_dict().items()}
    memory_before = [value.detach().clone() for value in trainer.model.memories.parameters()]
    trainer.train()
    assert all(torch.equal(value, lora_before[name]) for name, value in trainer.model.lora.state_dict().items())
    assert any(not torch.equal(value, before) for value, before in
               zip(trainer.model.memories.parameters(), memory_before, strict=True))
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in trainer.model.lora.parameters()}


def test_a_batch_that_no_trained_weight_touched_steps_with_zero_gradients(tmp_path, tokenizer):
    """With the LoRA frozen, a batch that fits the window (length 0: the memory reads nothing) has a loss
    with no gradient path; the step must pass it through, not fail (the 2026-12-07 scorer-only run did)."""
    options = {"mechanism": "slots", "layers": "all", "memory_slots": 8, "mem_dim": 64}
    trainer = Trainer(config(tmp_path, [options], steps=1, window=17, max_new_tokens=1, lora=LORA, lr=0),
                      tiny_model("llama", hidden_size=64), tokenizer, progress=False, data=KeyRecall())
    untouched = torch.tensor(2.5)
    tied = trainer._on_graph(untouched)
    assert tied.requires_grad and tied.item() == 2.5
    tied.backward()
    grads = [p.grad for p in trainer.step_module.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)
    live = torch.ones((), requires_grad=True) * 3
    assert trainer._on_graph(live) is live


def test_a_config_file_loads_and_overrides_apply(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  memories: [importance]\n  lora: {r: 4, layers: above_memory}\ntrain:\n  steps: 7\n")
    loaded = TrainConfig.from_yaml(path)
    assert loaded.train.steps == 7 and loaded.model.lora == {"r": 4, "layers": "above_memory"}
    assert loaded.replace(**{"train.steps": 9, "output": "elsewhere"}).train.steps == 9
    path.write_text("model: [unclosed")
    with pytest.raises(memlm.ConfigError, match="YAML"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs" / "train").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_training_config_loads(path):
    loaded = TrainConfig.from_yaml(path)
    assert loaded.model.memory_specs() and loaded.train.steps > 0


def test_a_babilong_run_end_to_end_trains_saves_and_is_evaluated_by_the_harness(tmp_path, tokenizer):
    """The recipe's whole path on a tiny model: task data from the training split (a haystack of its
    own), labels, LoRA above the memory, held-out evaluation, final weights, and the harness reading
    the run folder as a contender."""
    from memlm.eval.harness import run_suite

    haystack = tmp_path / "haystack.txt"
    haystack.write_text("The river ran cold past the mill. Nobody asked the miller why. " * 200)
    config = TrainConfig.from_dict({
        "model": {"memories": [{"mechanism": "importance", "max_memory_size": 24, "score_layer": 0}],
                  "lora": {"r": 2, "layers": "above_memory"}},
        "data": {"tasks": ["qa1", "followup"], "haystack": [str(haystack)], "lm_corpus": [str(haystack)],
                 "lm_every": 3, "curriculum": [{"step": 0, "lengths": [0, 700]}]},
        "train": {"steps": 4, "batch_size": 2, "window": 400, "eval_every": 4, "eval_samples": 2,
                  "eval_lengths": [700], "save_every": 2, "log_every": 1},
        "output": str(tmp_path / "run")})
    trainer = Trainer(config, tiny_model("llama", num_layers=3), tokenizer, progress=False)
    assert trainer.model.lora is not None
    assert all(".layers.0." not in name for name, _ in trainer.model.lora.named_parameters())  # above layer 0
    kinds = {trainer.data.batch(step).kind for step in range(4)}
    assert "lm" in kinds and kinds & {"qa1", "followup"}
    batch = trainer.data.task_batch("qa1", 700, 1, 2)
    assert batch.memorize_labels.sum() > 0  # the facts are labelled
    result = trainer.train()
    assert result.steps == 4 and list(result.evaluations[-1]) == ["step", "qa1@700", "followup@700"]
    assert (result.output / "checkpoint-000002").is_dir()
    written = run_suite(trainer.model.detach(), tokenizer, "quick", ["none", str(result.final)], tmp_path / "eval",
                        window=400, families=["babilong/qa1", "followup"], progress=False, babilong_tasks=("qa1",),
                        lengths=(0, 700), long_lengths=(), samples=2, followup_lengths=(700,), followup_samples=2,
                        babilong_haystack=str(haystack), max_new_tokens=4)
    records = __import__("json").loads(written["results.json"].read_text())["records"]
    assert {r["task"] for r in records} == {"babilong/qa1", "followup/turn-1", "followup/turn-2", "followup/turn-3"}
    assert all("ci95" in r for r in records)


class PoisonedSteps(KeyRecall):
    """Key recall whose batches at `poisoned` steps make the loss NaN (as one overflowing bf16 batch
    does); the others alternate between two kinds of batch."""

    def __init__(self, poisoned):
        super().__init__(batch_size=4)
        self.poisoned = set(poisoned)

    def batch(self, step, rank=0):
        batch = super().batch(step, rank)
        batch.kind = "poison" if step in self.poisoned else ("even" if step % 2 == 0 else "odd")
        return batch


def poison_aware(trainer):
    """The step's loss is NaN on a poisoned batch (a NaN logit reaches every weight's gradient)."""
    forward = trainer.step_module.forward

    def step(batch):
        outputs = forward(batch)
        if batch.kind == "poison":
            outputs["loss"] = outputs["loss"] * torch.tensor(math.nan)
        return outputs

    trainer.step_module.forward = step
    return trainer


def test_a_step_whose_gradient_is_not_finite_is_skipped_and_training_goes_on(tmp_path, tokenizer):
    torch.manual_seed(0)
    trainer = poison_aware(Trainer(config(tmp_path, [{"mechanism": "recurrent", "memory_size": 8}], steps=6,
                                          log_every=2), tiny_model("llama"), tokenizer, progress=False,
                                   data=PoisonedSteps({2})))
    weights = {}

    def snapshot():
        return [p.detach().clone() for p in trainer.model.trainable_parameters()]

    original_step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        result = original_step(*args, **kwargs)
        weights[trainer.step] = snapshot()
        return result

    trainer.optimizer.step = recording_step
    trainer.train()
    assert sorted(weights) == [0, 1, 3, 4, 5]  # no update at the poisoned step (index 2)
    assert all(torch.isfinite(p).all() for p in trainer.model.trainable_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(weights[1], weights[5], strict=True))  # it kept learning
    assert trainer.skipped_steps == 1
    rows = (trainer.output / "log.csv").read_text().splitlines()
    # One row per kind since the last row: the kinds of batch never alias with log_every.
    kinds = [row.split(",")[4] for row in rows[1:]]
    assert kinds == ["even", "odd", "poison", "odd", "even", "odd"] and rows[-1].endswith(",1")


def test_a_run_that_keeps_diverging_stops_with_a_typed_error(tmp_path, tokenizer):
    trainer = poison_aware(Trainer(config(tmp_path, [{"mechanism": "recurrent", "memory_size": 8}], steps=40),
                                   tiny_model("llama"), tokenizer, progress=False, data=PoisonedSteps(range(40))))
    with pytest.raises(memlm.errors.TrainingDivergedError, match="20 steps in a row"):
        trainer.train()


def test_init_settings_change_a_saved_memory_before_training_and_refuse_what_does_not_fit(tmp_path, tokenizer):
    torch.manual_seed(0)
    saved = memlm.attach(tiny_model("llama", hidden_size=64), memlm.ImportanceConfig(score_layer=0, keep_unit="token"),
                         tokenizer=tokenizer)
    torch.nn.init.normal_(saved.memories["importance"].scorer.out.weight)  # weights worth recognising
    saved.save_pretrained(tmp_path / "stage1")
    weights = saved.memories["importance"].scorer.out.weight.detach().clone()
    backbone = saved.detach()

    def trainer(settings, name):
        options = config(tmp_path / name, ["importance"], steps=1)
        options.model.init, options.model.init_settings = str(tmp_path / "stage1"), settings
        return Trainer(options, backbone, tokenizer, progress=False, data=KeyRecall())

    trainer_a = trainer({"importance": {"keep_unit": "sentence", "max_memory_size": 7}}, "a")
    memory = trainer_a.model.memories["importance"]
    assert (memory.config.keep_unit, memory.config.max_memory_size) == ("sentence", 7)
    torch.testing.assert_close(memory.scorer.out.weight.detach(), weights)
    assert json_of(tmp_path / "stage1")["memories"][0]["keep_unit"] == "token"  # the source is left as it was
    trainer_a.model.detach()  # one model's memories on the backbone at a time
    with pytest.raises(memlm.ConfigError, match="slots"):
        trainer({"slots": {"memory_slots": 4}}, "b")
    with pytest.raises(memlm.IncompatibleMemoryError, match="shape"):
        trainer({"importance": {"hidden_dim": 32}}, "c")


def json_of(folder: Path) -> dict:
    import json

    return json.loads((folder / "memlm_config.json").read_text())


def test_a_run_stopped_by_its_time_limit_saves_a_checkpoint_of_that_step_and_resumes_from_it(tmp_path, tokenizer,
                                                                                             monkeypatch):
    memories = [{"mechanism": "recurrent", "memory_size": 16}]
    clock = iter(range(10**6))  # each reading of the trainer's clock is one more second (pytest's own is untouched)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    first = Trainer(config(tmp_path, memories, steps=50, max_minutes=0.25, save_every=0),
                    tiny_model("llama", hidden_size=64), tokenizer, progress=False, data=KeyRecall())
    stopped = first.train()
    assert 0 < stopped.steps < 50
    assert (tmp_path / "run" / f"checkpoint-{stopped.steps:06d}").is_dir()
    again = Trainer(config(tmp_path, memories, steps=stopped.steps + 2, save_every=0),
                    tiny_model("llama", hidden_size=64), tokenizer, progress=False, data=KeyRecall())
    taken = []
    original = again.step_module.forward
    monkeypatch.setattr(again.step_module, "forward", lambda batch: taken.append(1) or original(batch))
    assert again.train().steps == stopped.steps + 2 and len(taken) == 2  # resumed at the stop, not at step 0
