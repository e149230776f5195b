"""What the simulator says: deterministic replies, exact token counts, meaningful embeddings."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from typing import Any

from ..tokens.encodings import encoding_for_model

# Each of these is a single token (with its leading space) in o200k_base and cl100k_base, so a reply of
# N words is N tokens and usage counts stay easy to reason about in tests.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "her",
    "all",
    "she",
    "there",
    "would",
    "their",
    "we",
    "him",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
]
_WORD_RE = re.compile(r"[a-z0-9']+")


def count_tokens(text: str, model: str) -> int:
    return len(encoding_for_model(model).encode(text, disallowed_special=()))


def chat_prompt_tokens(messages: Any, model: str) -> int:
    """Tokens of a chat prompt: each message's content and role plus the chat format's fixed overhead."""
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    if not isinstance(messages, list):
        return total
    for message in messages:
        total += 3
        if isinstance(message, dict):
            for key, value in message.items():
                if isinstance(value, str):
                    total += count_tokens(value, model)
                    if key == "name":
                        total += 1
                elif isinstance(value, list):  # content parts
                    texts = [p.get("text") for p in value if isinstance(p, dict)]
                    total += sum(count_tokens(t, model) for t in texts if isinstance(t, str))
    return total


def prompt_text_tokens(prompt: Any, model: str) -> int:
    if isinstance(prompt, str):
        return count_tokens(prompt, model)
    if isinstance(prompt, list):
        return sum(prompt_text_tokens(p, model) if not isinstance(p, int) else 1 for p in prompt)
    return 0


def reply_words(seed_text: str, count: int) -> list[str]:
    """``count`` words chosen deterministically from ``seed_text``: the same prompt gets the same answer."""
    digest = hashlib.sha256(seed_text.encode()).digest()
    words = []
    for i in range(count):
        words.append(_WORDS[(digest[i % 32] + i * 7) % len(_WORDS)])
    return words


def forced_tool(request: dict[str, Any]) -> str | None:
    """The function a chat request forces (``tool_choice`` naming one, or ``"required"`` with tools), else None."""
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        return name if isinstance(name, str) and name else None
    tools = request.get("tools")
    if choice != "required" or not isinstance(tools, list):
        return None
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    return None


def tool_arguments(words: list[str]) -> list[str]:
    """A tool call's arguments, a JSON object holding the reply's words, in the pieces a stream sends them in."""
    return ['{"text": "', *(w if i == 0 else " " + w for i, w in enumerate(words)), '"}']


def embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return [" ".join(map(str, value))]
        if all(isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, int) for t in v)) for v in value):
            return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    return []  # the caller answers 400, as Azure does


def embed(text: str, dimensions: int) -> list[float]:
    """A deterministic bag-of-words embedding: each word adds ±1 at a hashed position, then unit length.

    Texts sharing most words land close together, and texts differing in one word of four ("turn on the
    light" / "turn off the light") have cosine 0.75, below the 0.95 a semantic cache uses by default.
    """
    vector = [0.0] * dimensions
    for word in _WORD_RE.findall(text.lower()):
        h = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(h[:4], "little") % dimensions
        vector[index] += 1.0 if h[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # The openai SDK asks for base64 by default: little-endian float32, as OpenAI sends it.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
