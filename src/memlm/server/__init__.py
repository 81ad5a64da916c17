"""`memlm serve`: an OpenAI-compatible chat server with memory, a memory API, MCP tools and a web page.

* `create_app(model, tokenizer, settings)` — the FastAPI app (`memlm.server.app`);
* `server_memories(specs, home)` — memory configs whose `bank` shares the server's fact store;
* `KeyStore` — API keys, stored hashed (`memlm keys create --user NAME`).

Modules: `auth` and `keys` (who a request acts for), `engine` (the model's worker thread and per-user
state), `openai_api` (chat completions, models), `memories` and `facts` (the mem0-style memory API),
`documents` (long texts into the key/value memory), `human` (blind pairwise votes), `web` (the page
and the report), `mcp` (the same operations as MCP tools), `middleware` (size, Host, cross-site
checks), `errors` (one JSON error shape). See docs/server.md.
"""

from memlm.server.app import ServerSettings, create_app, server_memories
from memlm.server.keys import KeyStore, Principal

__all__ = ["KeyStore", "Principal", "ServerSettings", "create_app", "server_memories"]
