"""`aigw simulate`: an Azure OpenAI simulator, a real HTTP server speaking both wire formats.

Tests, the demo and benchmarks put it where an Azure OpenAI resource would be. It answers chat, completions
and embeddings (JSON and SSE), with token counts from tiktoken, configurable latency, and injected faults.

A request goes: app.py (its paths) -> inference.py (Azure's checks, then the reply) -> faults.py (faults and the
TPM limit), answers.py + generate.py (what it says), sse.py (stream frames) -> reply.py (`SimReply`, sent once).
settings.py is its config (also changed at run time), records.py what ``GET /_sim/requests`` shows, asgi.py the
ASGI plumbing.
"""
