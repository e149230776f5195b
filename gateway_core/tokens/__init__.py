"""Token counting with tiktoken, using encoding files shipped with the install (never downloaded)."""
