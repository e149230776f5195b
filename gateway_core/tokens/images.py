"""Image input tokens by the published tile rules; images are never fetched.

``detail: low`` costs 85 tokens. ``high`` (and ``auto``): the image is scaled to fit 2048×2048, then its
shortest side to 768 px (never enlarged), and each 512 px tile costs 170 tokens, plus 85. A ``data:`` URL
is measured from its header bytes; an image given by URL has unknown size and is estimated as 1024×1024
(765 tokens at high detail), the size OpenAI's own examples use.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

BASE_TOKENS = 85
TILE_TOKENS = 170
_UNKNOWN_SIZE = (1024, 1024)


def image_tokens(width: int, height: int, detail: str) -> int:
    if detail == "low":
        return BASE_TOKENS
    if width <= 0 or height <= 0:
        width, height = _UNKNOWN_SIZE
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return BASE_TOKENS + TILE_TOKENS * tiles


def image_part_tokens(part: dict[str, object]) -> int:
    """Tokens for one ``{"type": "image_url", "image_url": {"url", "detail"}}`` content part."""
    spec = part.get("image_url")
    if isinstance(spec, str):
        spec = {"url": spec}
    if not isinstance(spec, dict):
        return 0
    detail = str(spec.get("detail") or "auto")
    url = spec.get("url")
    width, height = data_url_size(url) if isinstance(url, str) else (0, 0)
    return image_tokens(width, height, detail)


def data_url_size(url: str) -> tuple[int, int]:
    """(width, height) of a base64 ``data:`` image (PNG, JPEG, GIF, WebP); (0, 0) when unknown."""
    if not url.startswith("data:") or ";base64," not in url:
        return 0, 0
    encoded = url.split(";base64,", 1)[1]
    try:
        # 64 KiB of base64 holds any real header, including JPEG's EXIF blocks before the frame header.
        head = base64.b64decode(encoded[: 65536 - 65536 % 4], validate=False)
    except (binascii.Error, ValueError):
        return 0, 0
    return _png(head) or _gif(head) or _webp(head) or _jpeg(head) or (0, 0)


def _png(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _gif(data: bytes) -> tuple[int, int] | None:
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + length
    return None
