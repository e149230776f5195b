"""Which endpoint a path names. Unknown paths raise a 404 that names the path."""

from __future__ import annotations

from .context import Endpoint, EndpointKind, Surface
from .errors import NotFound

OPERATIONS = ("chat/completions", "completions", "embeddings")
_HEALTHZ = Endpoint(EndpointKind.HEALTHZ, public=True)
_STATUS = Endpoint(EndpointKind.STATUS)
_LIST = Endpoint(EndpointKind.LIST_DEPLOYMENTS)
_USAGE = {
    "/usage/prices": Endpoint(EndpointKind.USAGE_PRICES),
    "/usage/records": Endpoint(EndpointKind.USAGE_RECORDS),
    "/usage/summary": Endpoint(EndpointKind.USAGE_SUMMARY),
}
_OPENAI_OPS = {
    f"{prefix}{op}": Endpoint(EndpointKind.INFERENCE, Surface.OPENAI, op)
    for prefix in ("/v1/", "/openai/v1/")
    for op in OPERATIONS
}
_AZURE_PREFIX = "/openai/deployments/"
_LONGEST_FIRST = sorted(OPERATIONS, key=len, reverse=True)


def resolve(method: str, path: str) -> Endpoint:
    """Map ``method`` + ``path`` to an ``Endpoint``; raise ``NotFound`` for anything aigw does not serve."""
    path = path.rstrip("/") or "/"
    if method == "POST":
        endpoint = _OPENAI_OPS.get(path)
        if endpoint is not None:
            return endpoint
        if path.startswith(_AZURE_PREFIX):
            azure = _azure_inference(path[len(_AZURE_PREFIX) :])
            if azure is not None:
                return azure
    elif method in ("GET", "HEAD"):
        if path == "/healthz":
            return _HEALTHZ
        if path == "/status":
            return _STATUS
        if path in ("/v1/models", "/openai/v1/models", "/openai/deployments", "/openai/models"):
            return _LIST
        if path in _USAGE:
            return _USAGE[path]
    raise NotFound(
        f"aigw does not serve {method} {path}: it serves chat/completions, completions and embeddings "
        "under /openai/deployments/{deployment}/, /v1/ and /openai/v1/",
        code="path_not_found",
    )


def _azure_inference(rest: str) -> Endpoint | None:
    """``{deployment}/{operation}``. The server has already decoded %2F, so a name may arrive with slashes in
    it: everything before the operation is then the name, which the validate policy refuses with a 400 that
    says why (rather than a 404 for a path that looks like one aigw serves)."""
    deployment, _, operation = rest.partition("/")
    if not (deployment and operation in OPERATIONS):
        operation = next((op for op in _LONGEST_FIRST if rest.endswith("/" + op)), "")
        deployment = rest[: -len(operation) - 1] if operation else ""
    if not deployment:
        return None
    return Endpoint(EndpointKind.INFERENCE, Surface.AZURE, operation, deployment)
