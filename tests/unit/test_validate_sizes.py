"""What validate refuses beyond names and counts: bodies within the size limit whose shape would stall the event
loop (millions of tiny arrays or messages), and where an unknown deployment name came from.

Parsing 16 MiB of ``[],`` took orjson about 7 s and the depth walk 3 s more, on the event loop; these bodies are
refused by a count of '[' and '{' bytes before parsing, and bodies of millions of numbers or strings by a count
of ',' bytes. A large body of plain text still passes.
"""

from __future__ import annotations

import orjson
import pytest

from gateway_core.app import Gateway
from gateway_core.errors import BadRequest
from gateway_core.policies.json_body import MAX_CONTAINERS, MAX_ELEMENTS, parse_object
from gateway_core.policies.parser_process import LARGE_BODY_BYTES
from gateway_core.policies.validate import MAX_MESSAGES
from tests.unit.test_validate import HELLO, error_of, gateway, post, sim

__all__ = ["gateway", "sim"]  # the fixtures, shared with test_validate.py

CHAT = "/v1/chat/completions"


async def test_a_body_of_millions_of_empty_arrays_is_refused_before_parsing(gateway: Gateway) -> None:
    head = orjson.dumps({"model": "gpt-4o", "messages": HELLO})[:-1]
    raw = head + b',"x":[' + b"[]," * 5_500_000 + b"[]]}"  # just under 16 MiB
    error = error_of(await post(gateway, CHAT, raw))
    assert error["code"] == "too_many_elements" and f"{MAX_CONTAINERS:,}" in error["message"]


async def test_millions_of_numbers_or_empty_strings_in_one_array_are_refused_before_parsing(gateway: Gateway) -> None:
    """The reviewer's bodies: no bracket beyond the first, so the container count let them through, and each cost
    ~200 MB and seconds to parse."""
    head = orjson.dumps({"model": "gpt-4o", "messages": HELLO})[:-1]
    for items in (b"1234567," * 2_000_000, b'"",' * 5_000_000):
        raw = head + b',"x":[' + items[:-1] + b"]}"
        error = error_of(await post(gateway, CHAT, raw))
        assert error["code"] == "too_many_elements" and f"{MAX_ELEMENTS:,}" in error["message"]


async def test_fifteen_mebibytes_of_prose_with_commas_still_pass(gateway: Gateway) -> None:
    text = "lorem ipsum, dolor sit amet " * (15 * 1024 * 1024 // 28)  # a comma every 28 bytes: ~560,000
    response = await post(gateway, CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    assert response.status == 200, response.body[:300]


async def test_half_a_million_tiny_messages_are_refused(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": "x"}] * 500_000
    error = error_of(await post(gateway, CHAT, {"model": "gpt-4o", "messages": messages}))
    assert error["code"] == "too_many_elements"


async def test_more_messages_than_the_cap_are_refused_naming_the_field(gateway: Gateway) -> None:
    messages = [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)
    error = error_of(await post(gateway, CHAT, {"model": "gpt-4o", "messages": messages}))
    assert (error["param"], error["code"]) == ("messages", "too_many_elements")
    assert f"{MAX_MESSAGES:,}" in error["message"]


async def test_sixteen_mebibytes_of_words_in_one_message_still_pass(gateway: Gateway) -> None:
    text = "lorem ipsum dolor sit amet " * (15 * 1024 * 1024 // 27)
    response = await post(gateway, CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    assert response.status == 200, response.body[:300]


async def test_a_large_body_parsed_in_the_child_process_gets_the_400_an_inline_parse_gives(gateway: Gateway) -> None:
    """Bodies of LARGE_BODY_BYTES or more are parsed in a child process (the loop keeps serving meanwhile)."""
    text = "lorem ipsum dolor sit amet " * (LARGE_BODY_BYTES // 27 + 1)
    raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    for bad in (raw[:-1], raw[:-2] + b"\xff}", b"[" + raw + b"]"):
        with pytest.raises(BadRequest) as inline:
            parse_object(bad)
        assert error_of(await post(gateway, CHAT, bad))["message"] == inline.value.message
    assert (await post(gateway, CHAT, raw)).status == 200


async def test_an_unknown_deployment_is_named_by_the_field_it_came_from(gateway: Gateway) -> None:
    # Not about sizes, but about what validate answers: on the Azure surface the name is in the path.
    azure = await post(
        gateway, "/openai/deployments/not-here/chat/completions", {"messages": HELLO}, {"api-version": "2024-10-21"}
    )
    assert (error_of(azure, 404)["param"], error_of(azure, 404)["code"]) == ("deployment", "DeploymentNotFound")
    openai = await post(gateway, CHAT, {"model": "not-here", "messages": HELLO})
    assert error_of(openai, 404)["param"] == "model"
