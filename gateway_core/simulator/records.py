"""What ``GET /_sim/requests`` shows: the recent requests as the simulator received them.

Tests read these records to prove what a gateway sent upstream, so they keep what the wire carried: the
undecoded path and query string, every header, and the body's bytes (base64, bounded in size).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Literal, TypedDict


class RequestRecord(TypedDict, total=False):
    """One received request, as JSON. ``model`` and ``outcome`` are filled in for inference requests."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_path: str  # before the server decoded %XX
    query_string: str
    body_base64: str  # the body's first ``record_body_bytes`` bytes, exactly as received
    body_bytes: int  # the whole body's length
    body_truncated: bool  # True when body_base64 holds only the first bytes
    model: Any  # the request's "model" field, whatever its type
    outcome: Literal["completed", "client_disconnected"]


def record_of(
    scope: Mapping[str, Any],
    headers: dict[str, str],
    query: dict[str, str],
    body: bytes,
    max_body_bytes: int,
) -> RequestRecord:
    """The record of one request: ``scope`` is its ASGI scope, ``body`` the bytes as they arrived."""
    path: str = scope["path"]
    kept = body[:max_body_bytes]
    return {
        "method": scope["method"],
        "path": path,
        "query": query,
        "headers": {k: _fingerprint(v) if k in _CREDENTIALS else v for k, v in headers.items()},
        "raw_path": scope.get("raw_path", path.encode()).decode("latin-1"),
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "body_base64": base64.b64encode(kept).decode("ascii"),
        "body_bytes": len(body),
        "body_truncated": len(kept) < len(body),
    }


# Credentials are recorded as a fingerprint: tests can still prove which key arrived, and the listing (which
# needs no key) never shows a secret.
_CREDENTIALS = frozenset({"api-key", "authorization"})


def fingerprint(secret: str) -> str:
    """What the records show instead of a credential's value."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


_fingerprint = fingerprint
