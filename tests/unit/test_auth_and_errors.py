from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from gateway_core.config import ConfigError, config_from_dict, sha256_hex
from gateway_core.context import GatewayRequest, GatewayResponse, RequestContext
from gateway_core.errors import AuthenticationFailed, BackendUnreachable, error_body
from gateway_core.policies.auth import AuthPolicy
from gateway_core.policies.errors import ErrorsPolicy

BACKEND = {"name": "b", "url": "http://h", "deployments": ["d"]}


def auth(keys: list[dict[str, object]], env: dict[str, str] | None = None, **extra: object) -> AuthPolicy:
    return AuthPolicy(config_from_dict({"backends": [BACKEND], "keys": keys, **extra}), env or {})


def test_keys_map_to_principals_by_hash_or_env() -> None:
    policy = auth(
        [
            {"name": "h", "sha256": sha256_hex("secret-1"), "user": "u1", "tenant": "t1", "deployments": ["d"]},
            {"name": "e", "key_env": "K2", "user": "u2", "admin": True},
        ],
        env={"K2": "secret-2"},
    )
    one = policy.principal_for({"api-key": "secret-1"})
    assert (one.user, one.tenant, one.key_id, one.may_use("d"), one.may_use("x")) == ("u1", "t1", "h", True, False)
    two = policy.principal_for({"authorization": "Bearer secret-2"})
    assert (two.user, two.tenant, two.admin, two.may_use("x")) == ("u2", "default", True, True)


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "Missing credentials"),
        ({"authorization": "Basic abc"}, "Missing credentials"),
        ({"api-key": "nope"}, "Invalid gateway key"),
        ({"authorization": "Bearer eyJ.eyJ.sig"}, "JWT"),
    ],
)
def test_refusals(headers: dict[str, str], fragment: str) -> None:
    policy = auth([{"name": "h", "sha256": sha256_hex("s"), "user": "u"}])
    with pytest.raises(AuthenticationFailed, match=fragment):
        policy.principal_for(headers)


def test_a_configured_key_with_two_dots_is_a_key_not_a_jwt() -> None:
    policy = auth([{"name": "dotted", "sha256": sha256_hex("app.v1.prod"), "user": "u"}])
    assert policy.principal_for({"api-key": "app.v1.prod"}).user == "u"
    assert policy.principal_for({"authorization": "Bearer app.v1.prod"}).user == "u"
    with pytest.raises(AuthenticationFailed, match="Invalid gateway key"):
        policy.principal_for({"api-key": "other.v1.prod"})  # an api-key header is never a JWT


def test_no_keys_refuses_to_start_unless_no_auth() -> None:
    with pytest.raises(ConfigError, match="no client key is configured"):
        auth([])
    anonymous = AuthPolicy(config_from_dict({"backends": [BACKEND]}).model_copy(update={"no_auth": True}), {})
    assert anonymous.principal_for({}).user == "anonymous"


def test_key_env_must_be_set_at_start() -> None:
    with pytest.raises(ConfigError, match="K9 is not set"):
        auth([{"name": "e", "key_env": "K9", "user": "u"}])


def test_unknown_exception_becomes_500_without_internals() -> None:
    status, body, headers = error_body(RuntimeError("password=hunter2 at /srv/app.py:12"), "req-1")
    assert status == 500 and headers == {}
    error = orjson.loads(body)["error"]
    assert "hunter2" not in body.decode() and "req-1" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def ctx() -> RequestContext:
    return RequestContext(GatewayRequest("POST", "/v1/chat/completions", {}, {}), "rid", 0.0)


async def test_errors_policy_answers_json_and_adds_request_id() -> None:
    async def fail(_: RequestContext) -> GatewayResponse:
        raise BackendUnreachable("down")

    response = await ErrorsPolicy()(ctx(), fail)
    assert response.status == 502
    assert response.header("x-request-id") == "rid"
    assert response.header("x-aigw-attempts") == "0"  # every answer says how many backend tries it cost
    assert orjson.loads(response.body)["error"]["code"] == "backend_unreachable"


async def test_errors_policy_ends_a_broken_stream_with_an_sse_error_event() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise BackendUnreachable("broke off")

    async def ok(_: RequestContext) -> GatewayResponse:
        return GatewayResponse(200, [], stream=chunks())

    response = await ErrorsPolicy()(ctx(), ok)
    assert response.stream is not None
    received = [c async for c in response.stream]
    assert received[0] == b"data: {}\n\n"
    assert received[-1].startswith(b"data: ") and received[-1].endswith(b"\n\n")
    assert orjson.loads(received[-1][6:])["error"]["message"] == "broke off"
