"""Bounded tokenizer work for long texts.

tiktoken splits a text into pieces (words, punctuation runs, whitespace runs) and runs BPE on each piece; BPE on
one long piece is superlinear (250 KB of letters without spaces cost ~250 ms of CPU, 4 MB cost 9 s). A long text
is therefore counted in segments of at most ``SEGMENT_CHARS`` characters. A segment ends, where it can, at a
point where tiktoken's pieces end too (before a space, between a letter and a quote...), so the sum is exact for
prose, code and JSON. Only a run with no such point (letters without spaces, a long punctuation or whitespace
run) is cut arbitrarily; its count is then an upper bound, a few tokens over at most, and the backend's
reported usage settles it.
"""

from __future__ import annotations

import re

import tiktoken

SEGMENT_CHARS = 1000
# The last point in a window where a tiktoken piece ends: ``.*`` runs to the window's end and backs off, so one
# search finds it. A piece ends: before a space that follows a non-space; after an ASCII letter followed by
# whitespace, a digit or punctuation other than ' (which may start a contraction such as 's); after a digit
# followed by anything but a digit (numbers are pieces of their own); after punctuation followed by a digit.
# The next piece starts there whatever came before: the encoders' split patterns look ahead, never behind.
_LAST_PIECE_END = re.compile(
    r".*(?:\S(?= )|[A-Za-z](?=[\s!-&(-@\[-`{-~])|[0-9](?=[\s!-/:-~])|[!-/:-@\[-`{-~](?=[0-9]))", re.S
)


def segmented_tokens(text: str, encoding: tiktoken.Encoding) -> int:
    """Tokens of ``text``, encoded in segments of at most ``SEGMENT_CHARS`` characters."""
    total = 0
    start = 0
    while len(text) - start > SEGMENT_CHARS:
        limit = start + SEGMENT_CHARS
        # Only the window's second half is searched, so every segment is at least half full.
        found = _LAST_PIECE_END.match(text, start + SEGMENT_CHARS // 2, limit)
        end = found.end() if found is not None else limit
        total += len(encoding.encode_ordinary(text[start:end]))
        start = end
    return total + len(encoding.encode_ordinary(text[start:]))
