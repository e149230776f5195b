"""Token counting costs the event loop little and the CPU at most linearly, whatever the text's runs.

tiktoken's BPE on one long piece (letters without spaces) is superlinear: 250 KB of such letters cost ~190 ms
of event-loop CPU in one block, and requests that ended in 429 paid it too (the count runs before the limiter).
"""

from __future__ import annotations

import random
import string
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway_core.tokens.counting import OFF_LOOP_BODY_BYTES, chat_prompt_tokens, prompt_tokens, text_tokens
from gateway_core.tokens.encodings import encoding
from gateway_core.tokens.long_runs import SEGMENT_CHARS

ROOT = Path(__file__).resolve().parents[2]


class RecordingEncoding:
    """A real tiktoken encoding that notes which thread used it and the length of every text it encoded."""

    def __init__(self, name: str) -> None:
        self._real = encoding(name)
        self.name = name
        self.threads: set[int] = set()
        self.lengths: list[int] = []

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        self.threads.add(threading.get_ident())
        self.lengths.append(len(text))
        return self._real.encode(text, **kwargs)

    def encode_ordinary(self, text: str) -> list[int]:
        self.threads.add(threading.get_ident())
        self.lengths.append(len(text))
        return self._real.encode_ordinary(text)

    def encode_to_numpy(self, text: str, **kwargs: Any) -> Any:
        self.threads.add(threading.get_ident())
        self.lengths.append(len(text))
        return self._real.encode_to_numpy(text, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr == "_core_bpe":  # its raw encode would bypass the record
            raise AttributeError(attr)
        self.threads.add(threading.get_ident())
        return getattr(self._real, attr)


def _unspaced(n_chars: int) -> str:
    rng = random.Random(11)
    return "".join(rng.choices(string.ascii_lowercase, k=n_chars))


async def test_an_unspaced_body_under_the_old_threshold_is_counted_off_the_event_loop() -> None:
    enc = RecordingEncoding("o200k_base")
    body = {"messages": [{"role": "user", "content": _unspaced(250_000)}]}
    size = len(orjson.dumps(body))
    assert size < 256 * 1024  # counted on the loop before
    counted = await prompt_tokens("chat/completions", body, enc, size)  # type: ignore[arg-type]
    assert counted >= chat_prompt_tokens(body, encoding("o200k_base"))  # an upper bound (see below)
    assert threading.get_ident() not in enc.threads


async def test_a_small_body_is_still_counted_on_the_event_loop() -> None:
    enc = RecordingEncoding("o200k_base")
    content = f"What is the capital of France? {random.random()}"  # not in the memo: it is encoded
    body = {"messages": [{"role": "user", "content": content}]}
    size = len(orjson.dumps(body))
    assert size < OFF_LOOP_BODY_BYTES
    counted = await prompt_tokens("chat/completions", body, enc, size)  # type: ignore[arg-type]
    assert counted == chat_prompt_tokens(body, encoding("o200k_base"))
    assert enc.threads == {threading.get_ident()}


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_a_long_unspaced_run_is_encoded_in_bounded_segments_and_never_under_counted(name: str) -> None:
    """BPE work is bounded by the segment length, so CPU grows linearly with the text (4 MB of letters: ~1.2 s,
    was 9 s); the count is an upper bound, a few dozen tokens over for 250 KB."""
    enc = RecordingEncoding(name)
    text = _unspaced(250_000)
    counted = text_tokens(text, enc)  # type: ignore[arg-type]
    assert enc.lengths and max(enc.lengths) <= SEGMENT_CHARS
    exact = len(encoding(name).encode(text))
    assert exact <= counted <= exact + len(text) // SEGMENT_CHARS


def _prose(n_chars: int) -> str:
    rng = random.Random(3)
    words = [
        "".join(rng.choices(string.ascii_letters, k=rng.randint(1, 11))) + rng.choice(["", "", ",", ".", "'s"])
        for _ in range(n_chars // 5)
    ]
    return " ".join(words)[:n_chars] + " <|endoftext|> ünïcødé 中文 🎉\n\n  indented\tline"


def _code() -> str:
    return "".join(p.read_text() for p in sorted((ROOT / "gateway_core").rglob("*.py")))


def _json() -> str:
    schema = {
        "type": "object",
        "properties": {
            f"field_{i}": {"type": "string", "enum": ["alpha", "beta", f"v{i}"], "description": "Some text."}
            for i in range(800)
        },
    }
    return orjson.dumps(schema).decode() + orjson.dumps({"rows": [[i, f"x{i}", i / 3] for i in range(2000)]}).decode()


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
@pytest.mark.parametrize("kind", ["prose", "code", "json"])
def test_ordinary_long_texts_are_counted_exactly_in_segments(name: str, kind: str) -> None:
    text = {"prose": lambda: _prose(200_000), "code": _code, "json": _json}[kind]()
    enc = RecordingEncoding(name)
    assert text_tokens(text, enc) == len(encoding(name).encode(text, disallowed_special=()))  # type: ignore[arg-type]
    assert max(enc.lengths) <= SEGMENT_CHARS


def test_a_long_whitespace_run_is_segmented_too() -> None:
    enc = RecordingEncoding("o200k_base")
    text = "start" + " " * 100_000 + "\n" * 50_000 + "end"
    assert text_tokens(text, enc) >= len(encoding("o200k_base").encode(text))  # type: ignore[arg-type]
    assert max(enc.lengths) <= SEGMENT_CHARS


async def test_many_tool_properties_are_counted_off_the_event_loop() -> None:
    enc = RecordingEncoding("o200k_base")
    properties = {f"p{i:05d}": 0 for i in range(5_000)}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": properties}}}],
    }
    size = len(orjson.dumps(body))
    counted = await prompt_tokens("chat/completions", body, enc, size)  # type: ignore[arg-type]
    assert counted == chat_prompt_tokens(body, encoding("o200k_base"))
    assert threading.get_ident() not in enc.threads
