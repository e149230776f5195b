"""Host adapters for gateway_core: the ASGI app behind `aigw serve`, and the `aigw` command line."""
