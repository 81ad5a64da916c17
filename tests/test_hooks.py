"""Finding a backbone's parts by structure, hook helpers, and the backbone fingerprint."""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHITECTURES, tiny_model

import memlm
from memlm.hooks import (
    add_capture_hook,
    add_input_hook,
    add_output_hook,
    backbone_fingerprint,
    check_fingerprint,
    find_attention_module,
    inspect_backbone,
)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layers_embeddings_and_norm_are_found_by_structure(architecture):
    model = tiny_model(architecture)
    layout = inspect_backbone(model)
    assert layout.num_layers == len(layout.layers) == model.config.get_text_config().num_hidden_layers
    assert layout.embeddings is model.get_input_embeddings()
    assert layout.final_norm is not None and layout.final_norm not in list(layout.layers.modules())
    assert layout.hidden_size == 32
    assert find_attention_module(layout.layers[0]).layer_idx == 0
    assert layout.resolve_layer(-1) == layout.num_layers - 1
    with pytest.raises(memlm.IncompatibleMemoryError, match="does not exist"):
        layout.resolve_layer(layout.num_layers)


def test_a_model_without_config_is_refused():
    with pytest.raises(memlm.IncompatibleMemoryError, match="config"):
        inspect_backbone(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("output_kind", ["tensor", "tuple"])
def test_output_and_input_hooks_see_plain_tensors_whatever_the_layer_returns(output_kind):
    class Layer(torch.nn.Module):
        def forward(self, hidden_states, scale=1.0):
            out = hidden_states * scale
            return out if output_kind == "tensor" else (out, "extra")

    layer = Layer()
    seen = []
    handles = [add_output_hook(layer, lambda h: h + 1), add_input_hook(layer, lambda h: h * 10),
               add_capture_hook(layer, seen.append)]
    for call in (lambda x: layer(x), lambda x: layer(hidden_states=x)):
        output = call(torch.ones(1, 2))
        tensor = output if output_kind == "tensor" else output[0]
        assert torch.equal(tensor, torch.full((1, 2), 11.0))  # (1 * 10) + 1
        if output_kind == "tuple":
            assert output[1] == "extra"
    assert all(isinstance(t, torch.Tensor) for t in seen)
    for handle in handles:
        handle.remove()
    assert torch.equal(layer(torch.ones(1, 2)) if output_kind == "tensor" else layer(torch.ones(1, 2))[0],
                       torch.ones(1, 2))


def test_fingerprint_follows_the_weights_not_the_dtype():
    model = tiny_model("llama", seed=0)
    fingerprint = backbone_fingerprint(inspect_backbone(model))
    as_bf16 = backbone_fingerprint(inspect_backbone(tiny_model("llama", seed=0).to(torch.bfloat16)))
    other = backbone_fingerprint(inspect_backbone(tiny_model("llama", seed=1)))
    assert fingerprint["weights_sha"] == as_bf16["weights_sha"] != other["weights_sha"]
    check_fingerprint(fingerprint, other, what="x", require_same_weights=False)  # same shapes: fine
    with pytest.raises(memlm.IncompatibleMemoryError, match="another model"):
        check_fingerprint(fingerprint, other, what="x", require_same_weights=True)
    wide = backbone_fingerprint(inspect_backbone(tiny_model("llama", hidden_size=64)))
    with pytest.raises(memlm.IncompatibleMemoryError, match="hidden_size=32"):
        check_fingerprint(fingerprint, wide, what="x", require_same_weights=False)
