"""Parsing a request body into a JSON object, with the caps that keep hostile shapes from stalling the parser.

Kept apart from ``validate.py``, and importing nothing heavy, so the parser process (``parser_process.py``) can
run exactly this code on large bodies.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest

MAX_NESTING_DEPTH = 64  # objects and arrays, the body itself included; real requests stay under ~20
# Objects and arrays in a body, counted as '[' and '{' bytes before parsing (those inside strings too: an
# over-estimate); parsing and walking millions of them stalls the event loop for seconds.
MAX_CONTAINERS = 100_000
# Elements of arrays and members of objects, counted the same way as ',' bytes: millions of numbers or empty
# strings in one array cost hundreds of MB and seconds to parse. An embeddings input of token ids is at most
# 300,000 tokens; prose has a comma every ~60 bytes (about 280,000 in 16 MiB).
MAX_ELEMENTS = 1_000_000


def parse_object(raw: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object; ``BadRequest`` for an empty body, too many elements, invalid JSON, another
    JSON value than an object, or nesting deeper than ``MAX_NESTING_DEPTH``."""
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.")
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > MAX_CONTAINERS:
        raise BadRequest(
            f"The request body has more than {MAX_CONTAINERS:,} JSON arrays and objects "
            "(counted as '[' and '{' characters).",
            code="too_many_elements",
        )
    if raw.count(b",") > MAX_ELEMENTS:
        raise BadRequest(
            f"The request body has more than {MAX_ELEMENTS:,} JSON elements (counted as ',' characters).",
            code="too_many_elements",
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    # A body with no more brackets than the limit cannot nest past it: most bodies skip the walk.
    if containers > MAX_NESTING_DEPTH and _depth_exceeds(body, MAX_NESTING_DEPTH):
        raise BadRequest(
            f"The request body nests objects and arrays more than {MAX_NESTING_DEPTH} levels deep.",
            code="nesting_too_deep",
        )
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` objects and arrays deep; level by level, not recursive, so any
    depth the parser accepted is fine (about 0.5 s for a body of a million empty arrays)."""
    level = [value]
    for _ in range(limit):
        below = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        if not below:
            return False
        level = below
    return True
