"""`memlm train`: command-line overrides reach the config the trainer runs."""

from __future__ import annotations

from memlm.train import TrainConfig


def test_overrides_reach_the_trainer_and_bad_ones_are_refused(run, tmp_path, monkeypatch):
    import memlm.train

    seen: list[TrainConfig] = []

    class Recording:
        def __init__(self, config, device=None):
            seen.append(config)

        def train(self, resume=True):
            raise SystemExit(0)

    monkeypatch.setattr(memlm.train, "Trainer", Recording)
    config = tmp_path / "run.yaml"
    config.write_text("model: {memories: [recurrent]}\ndata: {tasks: [qa1]}\ntrain: {steps: 50, max_minutes: 6}\n")
    result = run("train", "--config", config, "--steps", 7, "--batch-size", 3, "--max-minutes", 1.5,
                 "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    train = seen[0].train
    assert (train.steps, train.batch_size, train.max_minutes, seen[0].output) == (7, 3, 1.5, str(tmp_path / "out"))
    refused = run("train", "--config", config, "--max-minutes", -1)
    assert refused.exit_code != 0 and "max-minutes" in refused.output
