"""Parsing a request body into a JSON object, with the caps that keep hostile shapes from stalling the parser.

Kept apart from ``validate.py``, and importing nothing heavy, so the parser process (``parser_process.py``) can
run exactly this code on large bodies.

Two kinds of cap. Byte counts before parsing (``,``, ``[``, ``{``, ``:`` bytes, those inside strings too, so an
over-estimate) refuse the shapes that would stall the parser itself. Exact counts of the parsed body bound what
the event loop may ever be handed: whoever builds the object there (orjson, or ``pickle.loads`` of the parser
child's answer) pays per object, ~0.1-0.3 us each, so one dict of a million keys cost the loop ~0.5 s. The
exact caps apply wherever the body is parsed; a body whose byte counts are already under them needs no count.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest

MAX_NESTING_DEPTH = 64  # objects and arrays, the body itself included; real requests stay under ~20
# Before parsing: parsing millions of '[]' or numbers stalls even the parser child for seconds.
MAX_CONTAINER_BYTES = 100_000  # '[' and '{' bytes
MAX_COMMA_BYTES = 1_000_000  # ',' bytes; prose has one every ~60 bytes (about 280,000 in 16 MiB)
# After parsing, exact: what the event loop is handed, so at most ~25 ms of its CPU to build (bench/README.md).
# A chat of MAX_MESSAGES messages is ~10,000 objects, ~20,000 members and ~20,000 strings; 128 tools with large
# JSON schemas ~12,000 members and ~8,000 strings; an embeddings request of OpenAI's largest size (2,048 inputs,
# 300,000 tokens in all) ~300,000 token ids. Distinct keys and strings cost the most to build, numbers the least.
MAX_CONTAINERS = 20_000  # objects and arrays
MAX_MEMBERS = 40_000  # members of objects, all objects together
MAX_STRINGS = 40_000  # string values (keys apart)
MAX_ELEMENTS = 320_000  # every value but the body itself: members of objects and items of arrays


def parse_object(raw: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object; ``BadRequest`` for an empty body, a shape over the caps above, invalid JSON,
    another JSON value than an object, or nesting deeper than ``MAX_NESTING_DEPTH``."""
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.")
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > MAX_CONTAINER_BYTES:
        raise _too_many(f"{MAX_CONTAINER_BYTES:,} JSON arrays and objects (counted as '[' and '{{' characters)")
    commas = raw.count(b",")
    if commas > MAX_COMMA_BYTES:
        raise _too_many(f"{MAX_COMMA_BYTES:,} JSON elements (counted as ',' characters)")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not _bounded(raw, containers, commas):
        _check_shape(body)  # the byte counts do not settle it: count exactly
    # A body with no more brackets than the limit cannot nest past it: most bodies skip the walk.
    elif containers > MAX_NESTING_DEPTH and _depth_exceeds(body, MAX_NESTING_DEPTH):
        raise _too_deep()
    return body


def within_exact_caps(raw: bytes | bytearray) -> bool:
    """Whether the byte counts alone show ``raw`` under the exact caps (cheap to parse, nothing to count)."""
    return _bounded(raw, raw.count(b"[") + raw.count(b"{"), raw.count(b","))


def _bounded(raw: bytes | bytearray, containers: int, commas: int) -> bool:
    # A container of n > 0 values holds n - 1 commas, so all values together are at most commas + containers.
    return (
        containers <= MAX_CONTAINERS
        and commas + containers <= MAX_ELEMENTS
        and raw.count(b":") <= MAX_MEMBERS  # each member has one ':'
        and raw.count(b'"') // 2 <= MAX_STRINGS  # each string and key has two '"'
    )


def _check_shape(body: dict[str, Any]) -> None:
    """The exact caps and the depth, in one walk level by level (not recursive, so any depth orjson accepted is
    fine); it stops at the first cap passed."""
    containers, members, elements, strings = 1, len(body), len(body), 0
    level: list[Any] = [body]
    for _ in range(MAX_NESTING_DEPTH):
        below: list[Any] = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                if type(child) is dict:
                    members += len(child)
                elif type(child) is str:
                    strings += 1
                    continue
                elif type(child) is not list:
                    continue
                elements += len(child)
                below.append(child)
            # Checked per container walked, so a body far over a cap is refused early.
            if containers + len(below) > MAX_CONTAINERS:
                raise _too_many(f"{MAX_CONTAINERS:,} JSON arrays and objects")
            if members > MAX_MEMBERS:
                raise _too_many(f"{MAX_MEMBERS:,} members of JSON objects in all", "too_many_members")
            if strings > MAX_STRINGS:
                raise _too_many(f"{MAX_STRINGS:,} JSON strings in all (keys apart)", "too_many_strings")
            if elements > MAX_ELEMENTS:
                raise _too_many(f"{MAX_ELEMENTS:,} JSON values in all")
        if not below:
            return
        containers += len(below)
        level = below
    raise _too_deep()


def _too_many(what: str, code: str = "too_many_elements") -> BadRequest:
    return BadRequest(f"The request body has more than {what}.", code=code)


def _too_deep() -> BadRequest:
    return BadRequest(
        f"The request body nests objects and arrays more than {MAX_NESTING_DEPTH} levels deep.",
        code="nesting_too_deep",
    )


_CONTAINER_TYPES = frozenset((dict, list))


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` objects and arrays deep; level by level, not recursive, so any
    depth the parser accepted is fine (about 0.5 s for a body of a million empty arrays)."""
    level = [value]
    for _ in range(limit):
        below = []
        for item in level:
            children = item.values() if type(item) is dict else item
            if _CONTAINER_TYPES.isdisjoint(map(type, children)):
                continue  # a leaf, e.g. a list of token ids: the type scan runs at C speed, twice the loop's
            for child in children:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        if not below:
            return False
        level = below
    return True
