"""`memlm generate`: continue a prompt, or answer one message with --chat, with memories attached."""

from __future__ import annotations

from typing import Annotated

import typer

from memlm.cli.options import (
    AdapterOpt,
    BackboneOpt,
    DecodingOptions,
    DeviceOpt,
    DtypeOpt,
    MemoryConfigOpt,
    MemoryOpt,
    build_model,
    console,
    decoding_options,
    friendly_errors,
    memory_specs,
)


@friendly_errors
@decoding_options()
def generate(
    prompt: Annotated[str, typer.Argument(help="text to continue (or a message, with --chat)")],
    chat: Annotated[bool, typer.Option("--chat/--raw", help="wrap the prompt in the chat template")] = False,
    *,
    decoding: DecodingOptions,
    stream: Annotated[bool, typer.Option(help="print tokens as they are generated")] = True,
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Generate text from PROMPT, with any memories attached. Decoding flags mirror transformers'."""
    if not prompt.strip():
        raise typer.BadParameter("the prompt is empty", param_hint="PROMPT")
    memory_model, tokenizer = build_model(backbone, device, dtype, memory_specs(memory, memory_config), adapter)
    if chat:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
    else:
        encoded = tokenizer(prompt, return_tensors="pt")
    encoded = {key: value.to(memory_model.layout.device) for key, value in encoded.items()}
    options = decoding.to_generate_kwargs()
    streamer = decoding.streamer(tokenizer) if stream else None
    if streamer is not None and not chat:  # the streamer skips the prompt; a raw continuation shows it
        console.print(prompt, end="", highlight=False, markup=False)
    output = memory_model.generate(**encoded, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **options)
    if streamer is None:
        text = tokenizer.decode(output[0, 0 if not chat else encoded["input_ids"].shape[1]:],
                                skip_special_tokens=True)
        console.print(text, highlight=False, markup=False)
