"""A relayed stream that is also fed to a ``StreamAssembler``, and that reports its end however it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from .assemble import StreamAssembler


class RecordedStream:
    """Relays ``stream`` and calls ``on_end(assembler, complete)`` exactly once.

    ``complete`` is True when the stream was read to its end. ``on_end`` also runs when the consumer closes
    the stream before reading it at all (an async generator's ``finally`` would not run then), when reading
    or closing the upstream fails, and when the task is cancelled: the cache's single flight relies on it.
    """

    def __init__(self, stream: AsyncIterator[bytes], on_end: Callable[[StreamAssembler, bool], None]) -> None:
        self._stream = stream
        self._on_end = on_end
        self._ended = False
        self.assembler = StreamAssembler()

    def __aiter__(self) -> RecordedStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            await self._end(complete=True)
            raise
        except BaseException:
            await self._end(complete=False)
            raise
        self.assembler.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        await self._end(complete=False)

    async def _end(self, complete: bool) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._on_end(self.assembler, complete)
