"""`aigw simulate`: an Azure OpenAI simulator, a real HTTP server speaking both wire formats.

Tests, the demo and benchmarks put it where an Azure OpenAI resource would be. It answers chat, completions
and embeddings (JSON and SSE), with token counts from tiktoken, configurable latency, and injected faults.
"""
