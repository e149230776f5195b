"""Large prompts are counted exactly as small ones, and off the event loop."""

from __future__ import annotations

import asyncio
import random

import orjson

from gateway_core.tokens.counting import OFF_LOOP_BODY_BYTES, chat_prompt_tokens, prompt_tokens, text_tokens
from gateway_core.tokens.encodings import encoding


def _words(n_chars: int) -> str:
    rng = random.Random(7)
    text = " ".join("".join(rng.choices("abcdefghij klmnop", k=rng.randint(2, 9))) for _ in range(n_chars // 5))
    return text[:n_chars]


def test_long_text_counts_the_same_on_the_numpy_path() -> None:
    enc = encoding("o200k_base")
    text = _words(300_000) + " <|endoftext|>"
    assert text_tokens(text, enc) == len(enc.encode(text, disallowed_special=()))


async def test_large_body_is_counted_while_the_event_loop_goes_on() -> None:
    enc = encoding("o200k_base")
    body = {"messages": [{"role": "user", "content": _words(1024 * 1024)}]}
    size = len(orjson.dumps(body))
    assert size >= OFF_LOOP_BODY_BYTES
    count = asyncio.ensure_future(prompt_tokens("chat/completions", body, enc, size))
    other = asyncio.ensure_future(asyncio.sleep(0))  # another request's work, scheduled after the count began
    done, _ = await asyncio.wait({count, other}, return_when=asyncio.FIRST_COMPLETED)
    assert other in done and count not in done
    assert await count == chat_prompt_tokens(body, enc)
