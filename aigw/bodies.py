"""Reading a request body without ever holding more than the configured limit (shared by both hosts)."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def read_limited(chunks: AsyncIterator[bytes], content_length: str, limit: int) -> tuple[bytes, int]:
    """(body, size). Past ``limit`` bytes reading stops and the body is empty: the size tells the pipeline
    to answer 413, so a client cannot make the gateway buffer an arbitrarily large upload."""
    if content_length.isdigit() and int(content_length) > limit:
        return b"", int(content_length)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return b"", size
        parts.append(chunk)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), size
