"""The sections of the gateway config, one module each (backends, server and keys, limits, cache, stores, usage)
and the whole in gateway.py; gateway_core.config loads a file into them and re-exports every name."""
