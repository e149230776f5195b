"""The ASGI adapter's cheap paths. The watch for a client that leaves while the pipeline works: the work is
cancelled and None returned; a cancel from outside (the server shutting down) still propagates; the task is left
uncancelled. The request with its body keeps every field of its head."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import pytest

from aigw.asgi import _unless_disconnected
from gateway_core.app import CheckedHead
from gateway_core.context import GatewayRequest, GatewayResponse, RequestContext


class Client:
    def __init__(self) -> None:
        self.leaves = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leaves.wait()
        return {"type": "http.disconnect"}


async def test_the_answer_comes_back_when_the_client_stays() -> None:
    async def work() -> GatewayResponse:
        await asyncio.sleep(0)
        return GatewayResponse(200, [], b"ok")

    response = await _unless_disconnected(work(), Client().receive)
    assert response is not None and response.body == b"ok"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_client_that_leaves_cancels_the_work_and_gets_none() -> None:
    client, cancelled = Client(), asyncio.Event()

    async def work() -> GatewayResponse:
        client.leaves.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    assert await _unless_disconnected(work(), client.receive) is None
    task = asyncio.current_task()
    assert cancelled.is_set() and task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the task goes on as usual afterwards: nothing left pending for it


async def test_work_that_absorbs_the_cancel_still_gives_none() -> None:
    client = Client()

    async def work() -> GatewayResponse:
        client.leaves.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return GatewayResponse(200, [], b"late")

    assert await _unless_disconnected(work(), client.receive) is None
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_cancel_from_outside_propagates() -> None:
    started = asyncio.Event()

    async def work() -> GatewayResponse:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    outer = asyncio.ensure_future(_unless_disconnected(work(), Client().receive))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert outer.cancelled()


def test_the_request_with_its_body_keeps_every_field_of_its_head() -> None:
    # Every field set to a value of its own, fields added later included: none may be dropped on the way.
    values: dict[str, Any] = {f.name: f"value of {f.name}" for f in dataclasses.fields(GatewayRequest)}
    head = GatewayRequest(**values)
    assert head.with_body(b"body", 4) == dataclasses.replace(head, body=b"body", body_size=4)


def test_a_checked_head_is_handled_once() -> None:
    # A second run on the same context would record and count the request twice.
    ctx = RequestContext(request=GatewayRequest("POST", "/v1/chat/completions", {}, {}), request_id="r", started_s=0.0)
    checked = CheckedHead(ctx)
    assert checked.take() is ctx
    with pytest.raises(RuntimeError, match="once"):
        checked.take()
