"""A policy that needs what an earlier one fills says so: out of order, a 500 that names the missing field.

And no ``assert`` stands in for such a check (or any other) in the gateway's code: ``python -O`` drops them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gateway_core.catalogue import PoolTable
from gateway_core.config import LimitsSettings, config_from_dict
from gateway_core.context import Endpoint, EndpointKind, GatewayRequest, GatewayResponse, RequestContext, Surface
from gateway_core.errors import PipelineOrderError
from gateway_core.pipeline import build_chain
from gateway_core.policies.errors import ErrorsPolicy
from gateway_core.policies.tokens import TokensPolicy

ROOT = Path(__file__).resolve().parents[2]


def _context() -> RequestContext:
    request = GatewayRequest("POST", "/openai/deployments/d/chat/completions", {}, {}, b"{}", 2)
    return RequestContext(request=request, request_id="req-1", started_s=0.0)


@pytest.mark.parametrize(
    ("accessor", "field"),
    [
        (RequestContext.require_endpoint, "endpoint"),
        (RequestContext.require_principal, "principal"),
        (RequestContext.require_deployment, "deployment"),
        (RequestContext.require_body, "body"),
    ],
)
def test_each_accessor_names_its_missing_field(accessor: Callable[[RequestContext], object], field: str) -> None:
    with pytest.raises(PipelineOrderError, match=field) as raised:
        accessor(_context())
    assert raised.value.status == 500 and raised.value.field == field


async def test_a_policy_run_before_the_one_it_needs_answers_a_500_naming_the_field() -> None:
    # The tokens policy needs the deployment that the validate policy sets; here nothing set it.
    config = config_from_dict({"backends": [{"name": "b", "url": "http://h", "deployments": ["d"]}]})
    tokens = TokensPolicy(PoolTable(config), LimitsSettings())

    async def never(ctx: RequestContext) -> GatewayResponse:
        raise AssertionError("the chain must stop before the terminal handler")

    ctx = _context()
    ctx.endpoint = Endpoint(EndpointKind.INFERENCE, Surface.AZURE, "chat/completions", "d")
    ctx.body_json = {"messages": [{"role": "user", "content": "hi"}]}
    response = await build_chain([ErrorsPolicy(), tokens], never)(ctx)
    assert response.status == 500
    error = orjson.loads(response.body)["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "deployment" in error["message"]


def _sources() -> list[Path]:
    found = [*sorted((ROOT / "gateway_core").rglob("*.py")), *sorted((ROOT / "aigw").rglob("*.py"))]
    return [*found, ROOT / "function_app.py"]


def test_the_source_walk_finds_the_code() -> None:
    assert len(_sources()) > 50 and all(path.is_file() for path in _sources())


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_assert_in_the_gateways_code(path: Path) -> None:
    lines = [node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Assert)]
    assert not lines, f"{path.relative_to(ROOT)} uses assert at lines {lines}: python -O removes them; raise instead"
