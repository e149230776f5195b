"""Checks an inference request before anything costly happens: size, JSON shape, deployment, permission (a
deployment the key may not use is answered as an unknown one).

Everything later in the chain may rely on what passed here: the deployment name and api-version have the
shapes in ``names.py`` (they become part of an upstream URL), token and choice counts are positive integers
within bounds, and the body nests at most ``json_body.MAX_NESTING_DEPTH`` levels (so code that walks it
recursively, or ``orjson.dumps`` with its own recursion limit, never fails on it).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..catalogue import PoolTable
from ..config import GatewayConfig
from ..context import EndpointKind, GatewayResponse, RequestContext, Surface
from ..errors import BadRequest, DeploymentNotFound, PayloadTooLarge
from ..names import API_VERSION_RULE, DEPLOYMENT_NAME_RULE, is_api_version, is_deployment_name
from ..pipeline import Handler
from .json_body import parse_object, within_exact_caps
from .parser_process import LARGE_BODY_BYTES, ParserProcess

MAX_MESSAGES = 10_000
MAX_TOKENS_FIELD = 1_000_000  # no model's context window is larger today
MAX_CHOICES = 128  # OpenAI's own cap on n (best_of is capped lower upstream)
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CHOICE_FIELDS = ("n", "best_of")


class ValidatePolicy:
    def __init__(self, config: GatewayConfig, pools: PoolTable) -> None:
        self._max_body_bytes = config.server.max_body_bytes
        self._pools = pools
        self._parser = ParserProcess()

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        endpoint = ctx.require_endpoint()
        if endpoint.kind is not EndpointKind.INFERENCE:
            return await call_next(ctx)
        principal = ctx.require_principal()
        request = ctx.request
        if request.body_size > self._max_body_bytes or len(request.body) > self._max_body_bytes:
            raise PayloadTooLarge(f"Request body is larger than this gateway's limit of {self._max_body_bytes} bytes.")
        # A large body, or one whose shape needs counting, is parsed in a child process: no parser releases the
        # GIL, so a thread would not do.
        raw = request.body
        inline = len(raw) < LARGE_BODY_BYTES and within_exact_caps(raw)
        body = parse_object(raw) if inline else await self._parser.parse(raw)
        if endpoint.surface is Surface.OPENAI:
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise BadRequest("'model' is required and must name a deployment of this gateway.", param="model")
            deployment, source = model, "model"
        else:
            deployment, source = endpoint.deployment or "", "deployment"
        if not is_deployment_name(deployment):
            raise BadRequest(
                f"The deployment name {_quoted(deployment)} is not valid: a deployment name {DEPLOYMENT_NAME_RULE}.",
                param=source,
                code="invalid_deployment_name",
            )
        ctx.deployment = deployment
        api_version = request.query.get("api-version") or None
        if api_version is not None and not is_api_version(api_version):
            raise BadRequest(
                f"The api-version {_quoted(api_version)} is not valid: it must be {API_VERSION_RULE}.",
                param="api-version",
                code="invalid_api_version",
            )
        ctx.api_version = api_version
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean.", param="stream")
        ctx.stream = bool(stream)
        _check_counts(body)
        if endpoint.operation == "chat/completions":
            messages = body.get("messages")
            if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
                raise BadRequest(
                    f"'messages' has more than {MAX_MESSAGES:,} messages.", param="messages", code="too_many_elements"
                )
            _check_text_parts(messages)
        ctx.body_json = body
        try:
            self._pools.check_exists(deployment)
            if not principal.may_use(deployment):
                # The very answer an unknown name gets: a 403 told a restricted key which names others use.
                raise DeploymentNotFound(f"The deployment '{deployment}' does not exist on this gateway.")
        except DeploymentNotFound as exc:
            exc.param = source  # on the Azure surface the name came from the path, not a 'model' field
            raise
        return await call_next(ctx)

    async def close(self) -> None:
        """Stop the parser process, if a large body started one."""
        await self._parser.close()


def _check_counts(body: dict[str, Any]) -> None:
    """Token and choice counts, when present and not null, are positive integers within sane bounds."""
    for fields, bound in ((_TOKEN_FIELDS, MAX_TOKENS_FIELD), (_CHOICE_FIELDS, MAX_CHOICES)):
        for field in fields:
            value = body.get(field)
            if value is None:
                continue
            # bool is an int to Python, and 1e23 or 2.0 are floats to the parser: none of them is a count.
            if type(value) is not int or not 1 <= value <= bound:
                raise BadRequest(
                    f"'{field}' must be an integer from 1 to {bound:,}; got {_quoted(orjson.dumps(value).decode())}.",
                    param=field,
                    code="invalid_value",
                )


def _check_text_parts(messages: Any) -> None:
    """A text content part's ``text`` is a string: the semantic cache joins these texts (other shapes pass
    through to the backend, which judges them)."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and not isinstance(part.get("text"), str):
                raise BadRequest(
                    f"messages[{i}].content[{j}] is a text part, so its 'text' must be a string.",
                    param=f"messages[{i}].content[{j}].text",
                    code="invalid_value",
                )


def _quoted(text: str) -> str:
    """A client's string in an error message: repr-escaped (control characters, look-alikes) and short."""
    shown = text if len(text) <= 80 else text[:80] + "..."
    return ascii(shown)
