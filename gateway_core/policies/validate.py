"""Checks an inference request before anything costly happens: size, JSON shape, deployment, permission."""

from __future__ import annotations

from typing import Any

import orjson

from ..config import GatewayConfig
from ..context import EndpointKind, GatewayResponse, RequestContext, Surface
from ..errors import BadRequest, PayloadTooLarge, PermissionDenied
from ..pipeline import Handler
from ..routing.pools import PoolTable


class ValidatePolicy:
    def __init__(self, config: GatewayConfig, pools: PoolTable) -> None:
        self._max_body_bytes = config.server.max_body_bytes
        self._pools = pools

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        endpoint = ctx.endpoint
        assert endpoint is not None
        if endpoint.kind is not EndpointKind.INFERENCE:
            return await call_next(ctx)
        assert ctx.principal is not None
        request = ctx.request
        if request.body_size > self._max_body_bytes or len(request.body) > self._max_body_bytes:
            raise PayloadTooLarge(f"Request body is larger than this gateway's limit of {self._max_body_bytes} bytes.")
        body = _parse_object(request.body)
        if endpoint.surface is Surface.OPENAI:
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise BadRequest("'model' is required and must name a deployment of this gateway.", param="model")
            ctx.deployment = model
        else:
            ctx.deployment = endpoint.deployment
        ctx.api_version = request.query.get("api-version") or None
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean.", param="stream")
        ctx.stream = bool(stream)
        ctx.body_json = body
        assert ctx.deployment is not None
        self._pools.check_exists(ctx.deployment)
        if not ctx.principal.may_use(ctx.deployment):
            raise PermissionDenied(f"Your key may not use the deployment '{ctx.deployment}'.")
        return await call_next(ctx)


def _parse_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body
