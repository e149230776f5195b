"""The usage queue on a Storage queue (``tables://``): batch ids for the summariser, base64 as the Functions
queue trigger decodes them, and a poison queue for what cannot be processed."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import typing
from typing import Any

from ..usage.record import QueueMessage
from .tables import AccountClient, TablesTarget, sdk_errors

QUEUE = "aigw-usage"
POISON_QUEUE = "aigw-usage-poison"


class StorageQueue:
    """The ``UsageQueue`` on a Storage queue: ``aigw-usage``, base64 messages (what the Functions queue trigger
    decodes), and ``aigw-usage-poison`` for messages that cannot be processed (JSON: batch id and reason)."""

    def __init__(self, target: TablesTarget) -> None:
        self._target = target
        self._account = AccountClient(target, target.queue_service)
        self._queue: Any = None
        self._poison: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        from azure.storage.queue import TextBase64EncodePolicy

        async with self._lock:
            if self._queue is not None:
                return
            service = self._account.service()
            prefix = self._target.url.prefix
            # Received messages are decoded here, not by the SDK: a message that is not base64 (put there by
            # something else) must reach the poison queue, not stop every receive.
            queue, poison = (
                service.get_queue_client(prefix + name, message_encode_policy=TextBase64EncodePolicy())
                for name in (QUEUE, POISON_QUEUE)
            )
            if self._target.url.create_if_missing:
                from azure.core.exceptions import ResourceExistsError

                with sdk_errors(self._target, "create queues"):
                    for client in (queue, poison):
                        with contextlib.suppress(ResourceExistsError):
                            await client.create_queue()
            self._queue, self._poison = queue, poison

    async def _ready(self) -> Any:
        if self._queue is None:
            await self.start()
        return self._queue

    async def close(self) -> None:
        await self._account.close()
        self._queue = self._poison = None

    async def send(self, batch_id: str) -> None:
        queue = await self._ready()
        with sdk_errors(self._target, "send"):
            await queue.send_message(batch_id)

    async def receive(self, max_messages: int, visibility_timeout_s: float) -> list[QueueMessage]:
        """At most 32 messages at once (the service's limit); the timeout is whole seconds, at least 1."""
        queue = await self._ready()
        count = max(1, min(32, max_messages))
        timeout = max(1, math.ceil(visibility_timeout_s))
        with sdk_errors(self._target, "receive"):
            pages = queue.receive_messages(messages_per_page=count, visibility_timeout=timeout, max_messages=count)
            got = [m async for m in pages]
        return [QueueMessage(_decode(m.content), m.dequeue_count or 1, (m.id, m.pop_receipt)) for m in got]

    async def delete(self, message: QueueMessage) -> None:
        """Deleting a message already deleted, or received again by another consumer since, does nothing."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        queue = await self._ready()
        message_id, pop_receipt = typing.cast(tuple[str, str], message.receipt)
        with sdk_errors(self._target, "delete"):
            try:
                await queue.delete_message(message_id, pop_receipt)
            except ResourceNotFoundError:
                pass
            except HttpResponseError as exc:
                if getattr(exc, "error_code", None) != "PopReceiptMismatch":
                    raise

    async def poison(self, message: QueueMessage, reason: str) -> None:
        await self._ready()
        body = json.dumps({"batch_id": message.body, "reason": reason, "dequeue_count": message.dequeue_count})
        with sdk_errors(self._target, "poison"):
            await self._poison.send_message(body)
        await self.delete(message)


def _decode(content: Any) -> str:
    """A base64 message's text; anything else as it came (the summariser then poisons it)."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return text
