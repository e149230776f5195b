"""No client input shapes the upstream URL: proved over real HTTP with the simulator's record of what reached it.

Requests go out on raw sockets, byte for byte as written here (an HTTP client library would normalise
``..`` or encode what it should not), to a real `aigw serve`; uvicorn decodes %XX in the path before the
gateway sees it. The gateway is zero-config, so its one backend serves any deployment name (the case where a
name would otherwise pass straight into the upstream URL); `GET /_sim/requests` shows the undecoded path and
query each upstream request arrived with.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.servers import BACKEND_KEY, clear_sim_requests, run_aigw, sim_requests

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
KEY = "zero-config-key"
AZURE = "/openai/deployments/gpt-4o/chat/completions"


@pytest.fixture(scope="module")
def wildcard_url(sim_url: str) -> Iterator[str]:
    env = {"AZURE_OPENAI_ENDPOINT": sim_url, "AZURE_OPENAI_API_KEY": BACKEND_KEY, "AIGW_API_KEYS": KEY}
    with run_aigw(["serve"], env=env) as gateway:
        yield gateway.url


def raw_post(base_url: str, target: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    """POST ``target`` exactly as written; (status, JSON body)."""
    address = urlsplit(base_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {target} HTTP/1.1\r\nhost: {address.netloc}\r\napi-key: {KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(content) if content else {}


def upstream(sim_url: str) -> list[tuple[str, str]]:
    """(raw path, raw query) of each inference request the simulator received."""
    return [(r["raw_path"], r["query_string"]) for r in sim_requests(sim_url) if r["method"] == "POST"]


REFUSED = [
    # (request target, body, param the 400 names)
    (
        "/openai/deployments/gpt-4o%3Fapi-version=2099-01-01%23/chat/completions?api-version=2024-10-21",
        CHAT,
        "deployment",
    ),
    (
        "/openai/deployments/gpt-4o%2Fchat%2Fcompletions%3Ffoo=/chat/completions?api-version=2024-10-21",
        CHAT,
        "deployment",
    ),
    ("/openai/deployments/..%2F..%2Fx/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/x%2F..%2Fgpt-4o/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/x/../gpt-4o/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/%2E%2E/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/gpt-4o%25/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/gpt-4o%252F..%252Fx/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/gpt%E2%80%914o/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/gpt-4%D0%BE/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    ("/openai/deployments/gpt-4o%0D%0Ax-evil:1/chat/completions?api-version=2024-10-21", CHAT, "deployment"),
    (AZURE + "?api-version=2024-10-21%26foo=bar", CHAT, "api-version"),
    (AZURE + "?api-version=2024-10-21%23frag", CHAT, "api-version"),
    (AZURE + "?api-version=..%2F..%2Fx", CHAT, "api-version"),
    (AZURE + "?api-version=2024-10-21%2F..%2F..%2Fx", CHAT, "api-version"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4o/../../x"}, "model"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4o?api-version=2099-01-01"}, "model"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4o#x"}, "model"),
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4o%2F.."}, "model"),
    ("/v1/chat/completions", {**CHAT, "model": "deployments/gpt-4o"}, "model"),
]


@pytest.mark.parametrize(("target", "body", "param"), REFUSED)
def test_hostile_names_and_versions_are_400_and_nothing_goes_upstream(
    wildcard_url: str, sim_url: str, target: str, body: dict[str, object], param: str
) -> None:
    clear_sim_requests(sim_url)
    status, answer = raw_post(wildcard_url, target, body)
    assert status == 400, answer
    error = answer["error"]
    assert isinstance(error, dict) and error["param"] == param
    assert error["code"] in ("invalid_deployment_name", "invalid_api_version")
    assert upstream(sim_url) == []


PASSED = [
    # (request target, body, the one (path, query) the backend must see)
    (AZURE + "?api-version=2024-10-21&foo=bar", CHAT, (AZURE, "api-version=2024-10-21")),
    (AZURE + "?foo=1&api-version=2024-10-21&bar=%2F..%2F", CHAT, (AZURE, "api-version=2024-10-21")),
    (AZURE + "?api-version=2024-06-01&api-version=2024-10-21", CHAT, (AZURE, "api-version=2024-10-21")),
    (AZURE + "?api-version=2025-04-01-preview&deployment=x", CHAT, (AZURE, "api-version=2025-04-01-preview")),
    (AZURE + "/?api-version=2024-10-21", CHAT, (AZURE, "api-version=2024-10-21")),
    # A raw fragment: the server drops it, whatever it holds.
    (AZURE + "?api-version=2024-10-21#frag&api-version=2099-01-01", CHAT, (AZURE, "api-version=2024-10-21")),
    (AZURE + "#?api-version=2099-01-01", CHAT, (AZURE, "api-version=2024-10-21")),
    (
        "/v1/chat/completions?api-version=2024-10-21&x=%3F",
        {**CHAT, "model": "gpt-4o"},
        (AZURE, "api-version=2024-10-21"),
    ),
    # The OpenAI surface with no api-version: the backend's configured one, nothing else.
    ("/v1/chat/completions?path=/x", {**CHAT, "model": "gpt-4o"}, (AZURE, "api-version=2024-10-21")),
]


@pytest.mark.parametrize(("target", "body", "seen"), PASSED)
def test_the_backend_sees_only_the_deployment_and_the_version(
    wildcard_url: str, sim_url: str, target: str, body: dict[str, object], seen: tuple[str, str]
) -> None:
    clear_sim_requests(sim_url)
    status, answer = raw_post(wildcard_url, target, body)
    assert status == 200, answer
    assert upstream(sim_url) == [seen]


def test_an_http_client_encoding_the_name_gets_the_same_answers(wildcard_url: str, sim_url: str) -> None:
    # A client that percent-encodes the name as one path segment: the server decodes it, the gateway refuses it.
    with httpx.Client(base_url=wildcard_url, headers={"api-key": KEY}, timeout=10) as http:
        clear_sim_requests(sim_url)
        for name in ("gpt-4o?x=1", "gpt-4o#x", "../x", "gpt-4o/../x", "gpt 4o", "gpt-4o\u2011x"):
            path = f"/openai/deployments/{quote(name, safe='')}/chat/completions"
            response = http.post(path, params={"api-version": "2024-10-21"}, json=CHAT)
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["code"] == "invalid_deployment_name"
        assert upstream(sim_url) == []
