"""The tokenizer files ship with the install: counting works with the network unreachable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import socket

def refuse(*args, **kwargs):
    raise OSError("network unreachable (test)")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from gateway_core.tokens.encodings import encoding
print(len(encoding("o200k_base").encode("hello world")), len(encoding("cl100k_base").encode("hello world")))
"""


def test_encodings_load_with_no_network_and_an_empty_cache(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={"TIKTOKEN_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2"]
    assert len(list(cache.iterdir())) == 2  # both shipped encodings, written where tiktoken looks
