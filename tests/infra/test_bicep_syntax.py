"""Every Bicep file parses with tree-sitter-bicep (no Bicep compiler can be installed on these machines)."""

from __future__ import annotations

import pytest

from tests.infra.bicep import INFRA, Template, templates


def test_the_infra_has_a_main_template_and_its_modules() -> None:
    names = {t.path.relative_to(INFRA).as_posix() for t in templates()}
    assert "main.bicep" in names
    assert {n for n in names if n.startswith("modules/")} >= {
        "modules/cosmos.bicep",
        "modules/functionapp.bicep",
        "modules/storage.bicep",
        "modules/keyvault.bicep",
        "modules/identity.bicep",
        "modules/monitoring.bicep",
        "modules/openai-role.bicep",
    }


@pytest.mark.parametrize("template", templates(), ids=lambda t: t.path.relative_to(INFRA).as_posix())
def test_bicep_file_parses_without_errors(template: Template) -> None:
    assert template.syntax_errors() == []


def test_the_syntax_check_reports_a_broken_template_with_its_line(tmp_path) -> None:
    # The check above must be able to fail: an unclosed object and a dangling parameter default.
    broken = tmp_path / "broken.bicep"
    broken.write_text("param ok string = 'x'\nparam bad string =\nvar v = {\n  a: 1\n")
    errors = Template(broken).syntax_errors()
    assert errors
    assert any("line 2" in e or "line 3" in e for e in errors), errors


def test_every_module_main_uses_exists() -> None:
    main = Template(INFRA / "main.bicep")
    paths = {d.target for d in main.declarations if d.kind == "module"}
    assert paths
    for path in paths:
        assert isinstance(path, str) and (INFRA / path).is_file(), path
