"""The simulator's successful answers: a chat or completions response (and the pieces a stream sends it in),
or an embeddings response.

Token counts are exact (tiktoken, generate.py), so tests can check a gateway's accounting against them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .generate import (
    chat_prompt_tokens,
    count_tokens,
    embed,
    embedding_inputs,
    encode_embedding,
    forced_tool,
    prompt_text_tokens,
    reply_words,
    tool_arguments,
)

MAX_EMBEDDING_INPUTS = 2048  # Azure OpenAI refuses longer input lists with a 400


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete chat or completions response, and how to stream it."""

    response: dict[str, Any]  # the JSON body of a non-streamed answer
    pieces: list[str]  # the reply's text (or a forced tool call's arguments) in the pieces a stream sends
    finish: str  # finish_reason: stop, length or tool_calls
    n: int  # choices
    tool: str | None  # the forced function's name, if the reply is a tool call
    call_id: str

    @property
    def total_tokens(self) -> int:
        return int(self.response["usage"]["total_tokens"])


def build_answer(operation: str, request: dict[str, Any], model: str, target_tokens: int) -> Answer:
    """The answer to a chat/completions or completions ``request``: ``target_tokens`` words, unless
    ``max_completion_tokens``/``max_tokens`` cut it shorter (finish ``length``)."""
    target = target_tokens
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    finish = "stop"
    if isinstance(limit, int) and 0 < limit <= target:
        target, finish = limit, "length"
    requested_n = request.get("n")
    n = requested_n if isinstance(requested_n, int) and requested_n > 0 else 1
    chat = operation == "chat/completions"
    if chat:
        prompt_tokens = chat_prompt_tokens(request.get("messages"), model)
        seed = orjson.dumps(request.get("messages")).decode()
    else:
        prompt_tokens = prompt_text_tokens(request.get("prompt"), model)
        seed = orjson.dumps(request.get("prompt")).decode()
    words = reply_words(seed, target)
    text = " ".join(words)
    tool = forced_tool(request) if chat else None
    pieces = tool_arguments(words) if tool is not None else [w if i == 0 else " " + w for i, w in enumerate(words)]
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    if tool is not None:
        # The reply is a forced tool call: its name and arguments are what the model generated (and is billed).
        completion_tokens = (count_tokens(tool, model) + count_tokens("".join(pieces), model)) * n
        finish = "tool_calls" if finish == "stop" else finish
    else:
        completion_tokens = count_tokens(text, model) * n
    created = int(time.time())
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool is not None:
            call = {"id": call_id, "type": "function", "function": {"name": tool, "arguments": "".join(pieces)}}
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        choices: list[dict[str, Any]] = [
            {"index": i, "message": message, "finish_reason": finish, "logprobs": None, "content_filter_results": {}}
            for i in range(n)
        ]
        rid, obj = f"chatcmpl-{uuid.uuid4().hex[:24]}", "chat.completion"
    else:
        choices = [{"index": i, "text": text, "finish_reason": finish, "logprobs": None} for i in range(n)]
        rid, obj = f"cmpl-{uuid.uuid4().hex[:24]}", "text_completion"
    response = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": "fp_aigw_sim",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Answer(response, pieces, finish, n, tool, call_id)


class BadEmbeddingsRequest(ValueError):
    """The input Azure OpenAI answers 400 to; the message is Azure's."""


def embeddings_response(request: dict[str, Any], model: str, default_dimensions: int) -> dict[str, Any]:
    """The embeddings response to ``request``; raises `BadEmbeddingsRequest` for input Azure refuses."""
    texts = embedding_inputs(request.get("input"))
    if not texts:
        raise BadEmbeddingsRequest("'input' must be a string or a list of strings or tokens.")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise BadEmbeddingsRequest(f"Too many inputs. The max number of inputs is {MAX_EMBEDDING_INPUTS}.")
    requested_dims = request.get("dimensions")
    dims = requested_dims if isinstance(requested_dims, int) and requested_dims > 0 else default_dimensions
    fmt = request.get("encoding_format") or "float"
    data = [
        {"object": "embedding", "index": i, "embedding": encode_embedding(embed(text, dims), fmt)}
        for i, text in enumerate(texts)
    ]
    tokens = sum(count_tokens(t, model) for t in texts)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
