"""The server on the real default model (SmolLM2-135M-Instruct): what one user told it, it recalls."""

from __future__ import annotations

import pytest
from openai import OpenAI
from serverkit import serving

from memlm import MemoryModel
from memlm.paths import home_dir
from memlm.server import ServerSettings, create_app, server_memories

pytestmark = pytest.mark.integration


def test_the_default_model_recalls_a_fact_across_requests(default_backbone, keys):
    model, tokenizer = default_backbone
    memory_model = MemoryModel(model, server_memories(["bank"], home_dir()), tokenizer=tokenizer)
    try:
        app = create_app(memory_model, tokenizer, ServerSettings(generation={"max_new_tokens": 24}))
        with serving(app) as url:
            alice = OpenAI(base_url=f"{url}/v1", api_key=keys["alice"], max_retries=0)
            bob = OpenAI(base_url=f"{url}/v1", api_key=keys["bob"], max_retries=0)
            model_id = alice.models.list().data[0].id  # the memory-backed model comes first
            assert model_id.startswith("SmolLM2-135M-Instruct") and model_id.endswith("+bank")
            alice.chat.completions.create(model=model_id, messages=[
                {"role": "user", "content": "My dog is called Biscuit."}])
            question = [{"role": "user", "content": "What is my dog's name?"}]
            answer = alice.chat.completions.create(model=model_id, messages=question)
            assert "Biscuit" in answer.choices[0].message.content
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in alice.chat.completions.create(
                model=model_id, messages=question, stream=True) if chunk.choices)
            assert "Biscuit" in streamed
            theirs = bob.chat.completions.create(model=model_id, messages=question)
            assert "Biscuit" not in theirs.choices[0].message.content
            assert theirs.model_extra["memlm"]["memories"] == []
    finally:
        memory_model.detach()  # the backbone is shared with the other integration tests
