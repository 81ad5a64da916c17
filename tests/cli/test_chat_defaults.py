"""What `memlm chat` and `memlm serve` attach by default: the trained chat preset once it is shipped,
its bank on the user's fact store; and the memory-backed model listed first."""

from __future__ import annotations

import json

import memlm.registry as registry
from memlm.cli.chat import _bank_specs, default_chat_memories
from memlm.registry import Preset, Pretrained, pretrained_of
from memlm.server.app import server_memories


def trained_folder(tmp_path, memories):
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "memlm_config.json").write_text(json.dumps({"format": "memlm-adapter", "memories": memories}))
    return folder


def test_the_chat_preset_is_the_default_once_shipped(monkeypatch, tmp_path):
    monkeypatch.delitem(registry._presets, "chat", raising=False)
    assert default_chat_memories(["recurrent"]) == ["recurrent"]
    assert default_chat_memories(["bank", "recurrent"]) == ["bank", "recurrent"]
    monkeypatch.setitem(registry._presets, "chat", Preset({}, "test", weights="chat"))
    monkeypatch.delenv("MEMLM_GGUF", raising=False)
    assert default_chat_memories(["recurrent"]) == ["chat"]
    # trained for the embedded default model: another backbone keeps the fallback (it would refuse the weights)
    assert default_chat_memories(["recurrent"], backbone="some/model") == ["recurrent"]
    assert default_chat_memories(["recurrent"], backbone="SmolLM2") == ["chat"]  # an alias of the default
    monkeypatch.setenv("MEMLM_GGUF", str(tmp_path / "other.gguf"))
    assert default_chat_memories(["recurrent"]) == ["recurrent"]


def test_a_trained_bank_reads_the_users_fact_store(tmp_path):
    folder = trained_folder(tmp_path, [{"mechanism": "bank", "fusion": "prompt", "top_k": 4}])
    specs = _bank_specs([str(folder)], "ada")
    assert len(specs) == 1 and isinstance(specs[0], Pretrained)  # no second bank added
    assert specs[0].settings["bank"]["user"] == "ada" and specs[0].settings["bank"]["store"].endswith("facts.sqlite")
    served = server_memories([str(folder)], tmp_path / "home")
    assert served[0].settings["bank"]["store"].startswith(str(tmp_path / "home"))
    # weights without a bank get the user's bank beside them
    plain = trained_folder(tmp_path / "x", [{"mechanism": "recurrent"}]) if (tmp_path / "x").mkdir() is None else None
    specs = _bank_specs([str(plain)], "ada")
    assert isinstance(specs[0], Pretrained) and specs[1].mechanism == "bank" and specs[1].user == "ada"


def test_pretrained_of_knows_weights_from_configs(tmp_path):
    assert pretrained_of("recurrent") is None and pretrained_of("knn-joint") is None
    assert pretrained_of({"mechanism": "bank"}) is None
    assert pretrained_of("babilong").path.name == "importance-babilong"
    assert pretrained_of(str(trained_folder(tmp_path, []))).path.name == "trained"


def test_chat_with_trained_weights_holding_a_bank_uses_the_users_facts(run, tiny_folder, tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    from memlm import MemoryModel

    weights = tmp_path / "chat-weights"
    trained = MemoryModel(tiny_model("llama"), [{"mechanism": "bank", "fusion": "prompt", "top_k": 4}],
                          tokenizer=tiny_tokenizer())
    trained.add_lora({"r": 2})
    trained.save_pretrained(weights)
    args = ["--home", tmp_path / "home", "chat", "--user", "ada", "--backbone", tiny_folder, "--memory", weights,
            "--max-new-tokens", 2, "--show-memory"]
    first = run(*args, input="My dog is called Rollo.\n")
    assert first.exit_code == 0, first.output
    assert "memories: bank" in first.output and "learned: stored The user's dog is called Rollo." in first.output
    second = run(*args, input="What is my dog called?\n")
    assert second.exit_code == 0, second.output
    assert "used [1] The user's dog is called Rollo." in second.output  # one bank: the user's, across runs
