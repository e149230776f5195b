"""Large prompts are counted exactly as small ones, and off the event loop."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import orjson

from gateway_core.tokens.counting import OFF_LOOP_BODY_BYTES, chat_prompt_tokens, prompt_tokens, text_tokens
from gateway_core.tokens.encodings import encoding

ROOT = Path(__file__).resolve().parents[2]


def _words(n_chars: int) -> str:
    rng = random.Random(7)
    text = " ".join("".join(rng.choices("abcdefghij klmnop", k=rng.randint(2, 9))) for _ in range(n_chars // 5))
    return text[:n_chars]


def test_long_text_counts_the_same_on_the_buffer_path() -> None:
    for name in ("o200k_base", "cl100k_base"):
        enc = encoding(name)
        text = _words(300_000) + " <|endoftext|> ünïcødé 中文 🎉"
        assert text_tokens(text, enc) == len(enc.encode(text, disallowed_special=()))
        assert text_tokens(text, enc) == enc.encode_to_numpy(text, disallowed_special=()).size


def test_counting_a_long_text_does_not_import_numpy() -> None:
    """numpy's import, on the first large prompt of each worker, held the GIL for 50-400 ms: the event loop
    stalled while it ran (and the worker grew by ~15 MB). Run in a fresh interpreter, as a worker starts."""
    script = (
        "import sys\n"
        "from gateway_core.tokens.counting import text_tokens\n"
        "from gateway_core.tokens.encodings import encoding\n"
        "print(text_tokens('lorem ipsum ' * 20_000, encoding('o200k_base')), 'numpy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    enc = encoding("o200k_base")
    assert result.stdout.split() == [str(len(enc.encode("lorem ipsum " * 20_000))), "False"]


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
