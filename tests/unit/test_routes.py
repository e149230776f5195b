from __future__ import annotations

import pytest

from gateway_core.context import EndpointKind, Surface
from gateway_core.errors import NotFound
from gateway_core.routes import resolve


@pytest.mark.parametrize(
    ("path", "surface", "operation", "deployment"),
    [
        ("/openai/deployments/gpt-4o/chat/completions", Surface.AZURE, "chat/completions", "gpt-4o"),
        ("/openai/deployments/my.dep-1/completions", Surface.AZURE, "completions", "my.dep-1"),
        ("/openai/deployments/emb/embeddings/", Surface.AZURE, "embeddings", "emb"),
        ("/v1/chat/completions", Surface.OPENAI, "chat/completions", None),
        ("/openai/v1/embeddings", Surface.OPENAI, "embeddings", None),
        ("/v1/completions", Surface.OPENAI, "completions", None),
    ],
)
def test_inference_paths(path: str, surface: Surface, operation: str, deployment: str | None) -> None:
    endpoint = resolve("POST", path)
    assert endpoint.kind is EndpointKind.INFERENCE
    assert (endpoint.surface, endpoint.operation, endpoint.deployment) == (surface, operation, deployment)


def test_service_paths() -> None:
    assert resolve("GET", "/healthz").public
    assert resolve("GET", "/status").kind is EndpointKind.STATUS
    assert not resolve("GET", "/status").public
    for path in ("/v1/models", "/openai/v1/models", "/openai/deployments"):
        assert resolve("GET", path).kind is EndpointKind.LIST_DEPLOYMENTS


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/openai/deployments/gpt-4o/images/generations"),
        ("POST", "/openai/deployments//chat/completions"),
        ("POST", "/v1/audio/speech"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/status"),
        ("POST", "/"),
    ],
)
def test_unserved_paths_raise_404_naming_the_path(method: str, path: str) -> None:
    with pytest.raises(NotFound) as exc:
        resolve(method, path)
    assert exc.value.status == 404
    assert path.rstrip("/") in exc.value.message


@pytest.mark.parametrize(
    ("path", "operation", "deployment"),
    [
        ("/openai/deployments/x/../gpt-4o/chat/completions", "chat/completions", "x/../gpt-4o"),
        (
            "/openai/deployments/gpt-4o/chat/completions?x=/chat/completions",
            "chat/completions",
            "gpt-4o/chat/completions?x=",
        ),
        ("/openai/deployments/a/b/completions", "completions", "a/b"),
        ("/openai/deployments/../../embeddings", "embeddings", "../.."),
    ],
)
def test_a_decoded_slash_stays_part_of_the_deployment_name(path: str, operation: str, deployment: str) -> None:
    # The server decoded %2F already; the whole name goes to the validate policy, which refuses it with a 400.
    endpoint = resolve("POST", path)
    assert (endpoint.surface, endpoint.operation, endpoint.deployment) == (Surface.AZURE, operation, deployment)
