"""aigw's gateway pipeline, framework-free: host adapters hand it ``GatewayRequest``s (see ARCHITECTURE.md)."""
