"""`memlm serve`: the chat server with memory (OpenAI-compatible API, memory API, MCP, web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memlm.cli.options import (
    AdapterOpt,
    BackboneOpt,
    DeviceOpt,
    DtypeOpt,
    MemoryConfigOpt,
    MemoryOpt,
    console,
    friendly_errors,
    memory_specs,
)


@friendly_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on (off loopback, API keys are required)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free port)")] = 8000,
    memory: MemoryOpt = None,
    memory_config: MemoryConfigOpt = None,
    adapter: AdapterOpt = None,
    user: Annotated[str, typer.Option(help="the one user of a server without API keys")] = "local",
    report: Annotated[Path | None, typer.Option(
        help="evaluation report folder shown on the web page [default: docs/results/eval-quick if present]")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="an origin allowed to call the API from a browser (repeatable; default: none, CORS off)")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="default answer length in tokens")] = 128,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="the longest answer a request may ask for")] = 1024,
    temperature: Annotated[float, typer.Option(min=0.0, help="default temperature (0: greedy)")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option(min=0.0, help="default repetition penalty")] = 1.1,
    max_queue: Annotated[int, typer.Option(min=1, help="model jobs waiting at most before 503 busy")] = 64,
    batch_size: Annotated[int | None, typer.Option(
        min=0, help="chat turns decoded together at most (continuous batching); 0 or 1: one at a time "
                    "[default: 32 on CUDA, one at a time on CPU]")] = None,
    max_body_kb: Annotated[int, typer.Option(min=1, help="largest request body (documents excepted), KB")] = 1024,
    max_document_chars: Annotated[int, typer.Option(min=1, help="longest document, in characters")] = 2_000_000,
    mcp: Annotated[bool, typer.Option(help="also serve the MCP tools at /mcp")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads [default: torch's]")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    backbone: BackboneOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Serve chat with memory: an OpenAI-compatible API (/v1/chat/completions, /v1/models), the memory
    API (/v1/memories, /v1/documents), MCP tools (/mcp) and a web page (/). Memories default to
    bank,recurrent; add knn-joint for documents. Without API keys (`memlm keys create`), it runs as one
    local user and only on loopback."""
    import uvicorn

    from memlm.cli.options import build_model
    from memlm.paths import home_dir
    from memlm.server import KeyStore, ServerSettings, create_app, server_memories
    from memlm.server.auth import check_exposure
    from memlm.server.keys import keys_path

    home = home_dir()
    keys = KeyStore(keys_path(home))
    mode = check_exposure(host, keys)  # refuses a reachable server without keys, before loading anything
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from memlm.cli.chat import default_chat_memories

    specs = (memory_specs(memory, memory_config) if (memory or memory_config or adapter)
             else default_chat_memories(["bank", "recurrent"], backbone))
    model, tokenizer = build_model(backbone, device, dtype, server_memories(specs, home), adapter)
    if report is None and Path("docs/results/eval-quick/results.json").is_file():
        report = Path("docs/results/eval-quick")
    from memlm.backbone import is_embedded_default

    default_name = "SmolLM2-135M-Instruct" if is_embedded_default(backbone) else None  # not the GGUF file's stem
    settings = ServerSettings(name=default_name,
                              home=home, auth=mode, local_user=user, host=host, cors_origins=cors_origin or [],
                              max_body_bytes=max_body_kb * 1024, max_document_chars=max_document_chars,
                              max_tokens_limit=max_tokens_limit, max_queue=max_queue, report_dir=report, mcp=mcp,
                              batch_size=batch_size,
                              generation={"max_new_tokens": max_tokens, "repetition_penalty": repetition_penalty,
                                          **({"temperature": temperature} if temperature > 0 else {})})
    app = create_app(model, tokenizer, settings, keys=keys)
    engine = app.state.engine
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    console.print(f"memlm serve: {engine.default_model} (memories: {', '.join(engine.memory_names) or 'none'}) "
                  f"on {base}", highlight=False, soft_wrap=True)
    batching = (f"batched, up to {engine.batcher.max_rows} together" if engine.batcher is not None
                else "one at a time")
    console.print(f"  chat turns: {batching}", highlight=False)
    if mode == "local":
        console.print(f"[yellow]no API key configured: every request acts as the local user {user!r}; listening on "
                      f"{host} only. Create keys with `memlm keys create --user NAME` to serve several users.[/]",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"API keys required ({keys.active_count()} active); send 'Authorization: Bearer <key>'",
                      highlight=False, soft_wrap=True)
    console.print(f"  web page  {base}/\n  OpenAI    {base}/v1  (e.g. OpenAI(base_url='{base}/v1', api_key=...))\n"
                  f"  API       {base}/openapi.json (listed on the page's API tab)"
                  + (f"\n  MCP       {base}/mcp" if mcp else "")
                  + (f"\n  report    {report}" if report else ""), highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
