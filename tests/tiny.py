"""Tiny, randomly initialised backbones and a byte-level tokenizer, built offline in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB_SIZE = 300  # 256 byte tokens + specials, rounded up
EOS_ID, PAD_ID = 256, 257
ARCHITECTURES = ("gpt2", "llama", "qwen2", "gemma3")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_config(architecture: str, hidden_size: int = 32, num_layers: int = 2):
    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    if architecture == "gpt2":
        return GPT2Config(n_layer=num_layers, n_embd=hidden_size, n_head=4, n_positions=512, **common)
    llama_like = dict(num_hidden_layers=num_layers, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
    if architecture == "llama":
        return LlamaConfig(**llama_like)
    if architecture == "qwen2":
        return Qwen2Config(**llama_like)
    if architecture == "gemma3":
        return Gemma3TextConfig(head_dim=hidden_size // 4, sliding_window=64, **llama_like)
    raise ValueError(architecture)


_MODEL_CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM,
                  "gemma3": Gemma3ForCausalLM}


def tiny_model(architecture: str = "llama", seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    model = _MODEL_CLASSES[architecture](tiny_config(architecture, **config_kwargs))
    model.config.name_or_path = f"tiny-{architecture}"
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: every byte is a token, so any text round-trips."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    vocab.update({"<|endoftext|>": EOS_ID, "<|pad|>": PAD_ID})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|pad|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_folder(path: Path, architecture: str = "llama", seed: int = 0) -> Path:
    tiny_model(architecture, seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def write_tiny_gguf(path: Path, seed: int = 0, hidden_size: int = 32, num_layers: int = 2) -> Path:
    """A float32 GGUF file of a tiny random Llama with a byte-level tokenizer."""
    import gguf

    model = tiny_model("llama", seed, hidden_size=hidden_size, num_layers=num_layers)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(num_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    tokenizer = tiny_tokenizer()
    tokens = [tokenizer.convert_ids_to_tokens(i) or f"<unused{i}>" for i in range(VOCAB_SIZE)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * VOCAB_SIZE)
    writer.add_token_scores([0.0] * VOCAB_SIZE)
    writer.add_token_merges([])
    writer.add_bos_token_id(EOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for layer in range(num_layers):
        for hf_name, gguf_name in per_layer.items():
            names[f"model.layers.{layer}.{hf_name}.weight"] = f"blk.{layer}.{gguf_name}.weight"
    for hf_name, tensor in model.state_dict().items():
        writer.add_tensor(names[hf_name], tensor.detach().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
