"""Errors that speak OpenAI.

Every failure the gateway reports is a ``GatewayError``; each one knows its HTTP status, the OpenAI error
``type`` and ``code``, extra headers, and whether a client may retry it::

    GatewayError                     500 server_error
    ├── BadRequest                   400 invalid_request_error
    │   ├── PayloadTooLarge          413 invalid_request_error / payload_too_large
    │   └── RequestTimeout           408 invalid_request_error / request_timeout (the client's body stalled)
    ├── AuthenticationFailed         401 authentication_error / invalid_api_key
    ├── PermissionDenied             403 permission_error
    ├── TokenLimitExceeded           429 rate_limit_exceeded / tokens_per_minute, or 403/429 quota_exceeded
    │   └── BudgetExceeded           403/429 insufficient_quota / budget_exceeded (a budget in USD)
    ├── NotFound                     404 not_found_error
    │   └── DeploymentNotFound       404 not_found_error / DeploymentNotFound
    ├── BackendUnreachable           502 bad_gateway / backend_unreachable     (retryable)
    ├── ServiceUnavailable           503 service_unavailable                   (retryable)
    ├── BackendTimeout               504 timeout / backend_timeout             (retryable)
    └── PipelineOrderError           500 server_error / internal_error (a policy ran before what it needs: a bug)

``error_body`` turns any exception into ``{"error": {"message", "type", "param", "code"}}``; an exception that
is not a ``GatewayError`` becomes a 500 that names the request id and nothing of the internals.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})  # own copy: policies add headers to it


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class RequestTimeout(BadRequest):
    status = 408
    code = "request_timeout"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class TokenLimitExceeded(GatewayError):
    """A token rule refused the request; ``status`` is per instance (429 for rates, 403 or 429 for quotas)."""

    type = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, status: int, code: str, headers: dict[str, str], rule: str | None = None
    ) -> None:
        super().__init__(message, code=code, headers=headers)
        self.status = status
        self.rule = rule  # the limit rule that refused (usage records name it); None: the backend's own limit
        if code == "quota_exceeded":
            self.type = "insufficient_quota"


class BudgetExceeded(TokenLimitExceeded):
    """A budget rule (``cost_quota_usd``) refused the request: its period's money is spent, or would be."""

    def __init__(self, message: str, *, status: int, code: str, headers: dict[str, str], rule: str) -> None:
        super().__init__(message, status=status, code=code, headers=headers)
        self.type = "insufficient_quota"
        self.rule: str | None = rule  # the budget rule that refused (usage records name it)


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class DeploymentNotFound(NotFound):
    # Azure OpenAI's own code for this case, so SDK users see what they would see without the gateway.
    code = "DeploymentNotFound"


class BackendUnreachable(GatewayError):
    status = 502
    type = "bad_gateway"
    code = "backend_unreachable"
    retryable = True


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    retryable = True


class BackendTimeout(GatewayError):
    status = 504
    type = "timeout"
    code = "backend_timeout"
    retryable = True
    started = False  # the backend had sent its status line: a slow generation, not a dead backend


class PipelineOrderError(GatewayError):
    """A policy needed a context field that an earlier policy should have filled: the chain is mis-wired."""

    code = "internal_error"

    def __init__(self, field: str) -> None:
        super().__init__(
            f"The gateway failed to handle this request: an internal step ran before the request's {field} "
            "was known (a gateway bug)."
        )
        self.field = field


def error_payload(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON-able body and extra headers for ``exc``; internals of unknown errors never leak."""
    if isinstance(exc, GatewayError):
        body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
        return exc.status, body, exc.headers
    body = {
        "error": {
            "message": f"The gateway failed to handle this request (request id {request_id}).",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    return 500, body, {}


def error_body(exc: BaseException, request_id: str) -> tuple[int, bytes, dict[str, str]]:
    """Like ``error_payload`` but with the body serialised."""
    status, body, headers = error_payload(exc, request_id)
    return status, orjson.dumps(body), headers


def sse_error_event(exc: BaseException, request_id: str) -> bytes:
    """The final SSE event sent when a stream fails after it has started."""
    _, body, _ = error_body(exc, request_id)
    return b"data: " + body + b"\n\n"
