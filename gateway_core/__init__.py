"""aigw's gateway pipeline, framework-free: host adapters hand it ``GatewayRequest``s (docs/architecture.md)."""
