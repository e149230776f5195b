"""A bounded memo of short texts' token counts.

Real traffic repeats texts: system prompts, few-shot messages, tool descriptions, and every message's role.
Encoding one again cost as much as the first time (tiktoken was ~6% of the event loop's time per request).
The memo maps (encoding, text) to its exact count and is bounded three ways: entries, total characters held,
and the longest text it keeps (a longer one is encoded each time, never kept), so a client sending unique
texts only churns it. Oldest out first: a text still in use is back after one more encode, and a hit costs
one dict lookup (no reordering). Counts are the encoder's own: a hit returns what a miss computed.
"""

from __future__ import annotations

import threading
from collections import deque

import tiktoken

MAX_ENTRIES = 4096
MAX_TOTAL_CHARS = 2 * 1024 * 1024  # at most 2-8 MB of text held per process (1-4 bytes per character)
MAX_TEXT_CHARS = 8 * 1024  # a system prompt, a few-shot example: longer texts are counted each time


class TokenCountMemo:
    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_total_chars: int = MAX_TOTAL_CHARS,
        max_text_chars: int = MAX_TEXT_CHARS,
    ) -> None:
        self.max_entries = max_entries
        self.max_total_chars = max_total_chars
        self.max_text_chars = max_text_chars
        self._counts: dict[tuple[str, str], int] = {}
        self._order: deque[tuple[str, str]] = deque()  # the keys, oldest first
        self.total_chars = 0
        # Large bodies are counted in worker threads while the loop counts others: changes take the lock.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, encoding: tiktoken.Encoding, text: str) -> int:
        """The number of tokens ``encoding`` makes of ``text`` (special-token text counted as ordinary text)."""
        if len(text) > self.max_text_chars:
            return len(encoding.encode_ordinary(text))
        key = (encoding.name, text)
        found = self._counts.get(key)
        if found is not None:
            return found
        # encode_ordinary: encode(text, disallowed_special=()) without its scan for special-token text (~10-20%)
        counted = len(encoding.encode_ordinary(text))  # not under the lock: it may take a while
        with self._lock:
            if key not in self._counts:
                self._counts[key] = counted
                self._order.append(key)
                self.total_chars += len(text)
                while len(self._order) > self.max_entries or self.total_chars > self.max_total_chars:
                    oldest = self._order.popleft()
                    del self._counts[oldest]
                    self.total_chars -= len(oldest[1])
        return counted
