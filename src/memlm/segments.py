"""What `MemoryModel` derives from a segment's or turn's token ids: masks, position ids, the reply
part of a generated turn, and whether a pass is a cached decode step (which reads memory but never
writes it). Plain tensor functions, so the rules are stated once and the model's passes read as steps.
"""

from __future__ import annotations

from typing import Any

import torch


def ones_mask(reference: torch.Tensor) -> torch.Tensor:
    """The attention mask of a segment without padding: (B, T) ones, for ids (B, T) or embeddings (B, T, C)."""
    return torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding (left padding included)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reply_attention_mask(reply: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """1 for reply tokens up to and including the first end-of-sequence token, 0 after (padding)."""
    if eos_token_id is None or reply.shape[1] == 0:
        return torch.ones_like(reply)
    eos_ids = torch.as_tensor(eos_token_id, device=reply.device).reshape(-1)
    is_eos = torch.isin(reply, eos_ids).long()  # (B, T_new)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # how many EOS strictly before each position
    return (eos_before == 0).long()


def is_decode_step(past_key_values: Any) -> bool:
    """Whether a pass continues a non-empty KV cache (a decode step) rather than starting a segment."""
    if past_key_values is None:
        return False
    get_length = getattr(past_key_values, "get_seq_length", None)
    return bool(get_length() > 0) if get_length is not None else True
