"""The imports of gateway_core point one way, read from the source (ast), so a layering slip fails here.

Layers, lowest first; a module may import its own layer and the layers listed for it:
  base       context, errors, config and settings/ (the config's sections), catalogue, clock, names,
             store_urls, pipeline, routes, background, usage/record.py and usage/prices.py (the usage types and
             the price table)
  helpers    cache/, tokens/, limits/ (pure logic)
  storage    storage/ (the ports and one adapter per backend)
  providers  providers/ (one translator per wire format, the upstream client, credentials)
  routing    routing/ (strategies, failover, health): storage only through storage.ports
  usage      usage/ (recording, writing, summarising): storage only through storage.ports
  policies   policies/: storage only through storage.ports; never routing; usage to record
  app        app.py (the wiring): anything
The simulator stands apart: it speaks the backend's side and imports only base and helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "gateway_core"

_ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "helpers": {"base", "helpers"},
    "storage": {"base", "helpers", "storage"},
    "providers": {"base", "helpers", "providers"},
    "routing": {"base", "helpers", "storage.ports", "providers", "routing"},
    "usage": {"base", "helpers", "storage.ports", "usage"},
    "policies": {"base", "helpers", "storage.ports", "providers", "usage", "policies"},
    "app": {"base", "helpers", "storage", "storage.ports", "providers", "routing", "usage", "policies", "app"},
    "simulator": {"base", "helpers", "simulator"},
}
_FORBIDDEN_EXTERNAL = ("aigw", "azure.functions", "uvicorn", "function_app")


def _layer(module: str) -> str:
    parts = module.split(".")[1:]  # without "gateway_core"
    head = parts[0] if parts else ""
    if head in ("cache", "tokens", "limits"):
        return "helpers"
    if head == "storage":
        return "storage.ports" if parts[1:] == ["ports"] else "storage"
    if head == "usage":
        return "base" if parts[1:] in (["record"], ["prices"]) else "usage"
    if head in ("providers", "routing", "policies", "simulator", "app"):
        return head
    return "base"


def _allowed(importer: str, imported: str) -> bool:
    layer, target = _layer(importer), _layer(imported)
    allowed = _ALLOWED["storage" if layer == "storage.ports" else layer]
    return target in allowed or (target == "storage.ports" and "storage" in allowed)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (inside functions too), as absolute names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # ``from . import sqlite`` imports the submodule, so name it.
            if not node.module:
                found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, name))
    return found


def _sources() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_walk_sees_the_modules_and_their_imports() -> None:
    # Guards the test itself: a walk that found nothing would pass everything.
    imports = dict.fromkeys(name for _, name in _imports(CORE / "app.py"))
    assert "gateway_core.catalogue" in imports
    assert "gateway_core.routing.forward" in imports
    assert len(_sources()) > 40


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(CORE)))
def test_gateway_core_imports_point_down(path: Path) -> None:
    importer = _module_name(path)
    wrong = [
        f"line {line}: {importer} ({_layer(importer)}) imports {name} ({_layer(name)})"
        for line, name in _imports(path)
        if name.startswith("gateway_core") and not _allowed(importer, name)
    ]
    assert not wrong, "imports that point up or sideways (see this test's docstring):\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(CORE)))
def test_gateway_core_imports_no_host(path: Path) -> None:
    wrong = [
        f"line {line}: {name}"
        for line, name in _imports(path)
        if any(name == host or name.startswith(host + ".") for host in _FORBIDDEN_EXTERNAL)
    ]
    assert not wrong, f"{_module_name(path)} imports a host adapter's library: {wrong}"
