"""Prompt fusion: where retrieved facts go in the chat messages."""

from __future__ import annotations

from memlm.fusion import fuse_facts


def test_prompt_fusion_puts_the_most_relevant_fact_next_to_the_question():
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "What is my job?"}]
    best, second = "The user works as a luthier.", "The user's hobby is pottery."
    fused = fuse_facts(messages, [best, second])
    assert fused[0]["content"].startswith("Be kind.") and fused[0]["content"].index(second) < fused[0][
        "content"].index(best)
    assert fused[1:3] == messages[1:3]  # earlier turns are kept, in order
    recap_question, recap, question = fused[3:]
    assert recap_question["role"] == "user" and recap["role"] == "assistant" and question == messages[-1]
    assert recap["content"].endswith(best) and second in recap["content"]
    assert fuse_facts(messages, []) == messages
