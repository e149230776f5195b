"""checkov over infra/: zero failed checks except those listed, with reasons, in infra/checkov-skips.md.

checkov lives in its own virtualenv (.venv-checkov, from requirements-checkov.txt, installed by
``scripts/bootstrap --dev``): its pins clash with ours. It runs once per session (some 10-30 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep import INFRA

ROOT = INFRA.parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = INFRA / "checkov-skips.md"
_ROW = re.compile(r"^\|\s*(CKV2?_[A-Z]+_\d+)\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|\s*$")

pytestmark = pytest.mark.timeout(600)

Finding = tuple[str, str, str]  # check id, file under infra/, resource


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if not CHECKOV.exists():
        raise RuntimeError(f"{CHECKOV} is missing: run scripts/bootstrap --dev (scripts/test does)")
    # --skip-download: no calls to the vendor's platform (there is no network here beyond package registries).
    result = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
        cwd=ROOT,
    )
    # Exit 1 means "some check failed", which the tests below judge; anything else is checkov itself failing.
    if result.returncode not in (0, 1):
        raise RuntimeError(f"checkov exited {result.returncode}: {result.stderr[-2000:]}")
    data = json.loads(result.stdout)
    found: dict[str, Any] = data[0] if isinstance(data, list) else data  # a list when several frameworks ran
    return found


def skips() -> dict[Finding, str]:
    rows: dict[Finding, str] = {}
    for line in SKIPS.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            check, file, resource, reason = match.groups()
            rows[(check, file, resource)] = reason
    return rows


def failures(report: dict[str, Any]) -> set[Finding]:
    return {
        (c["check_id"], c["file_path"].lstrip("/"), c["resource"]) for c in report["results"].get("failed_checks", [])
    }


def test_checkov_reads_every_template(report: dict[str, Any]) -> None:
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")
    checked = {c["file_path"].lstrip("/") for c in report["results"]["passed_checks"]}
    checked |= {f for _, f, _ in failures(report)}
    # The modules that hold resources checkov has checks for; a template it skipped would vanish from here.
    assert checked >= {
        "modules/storage.bicep",
        "modules/cosmos.bicep",
        "modules/keyvault.bicep",
        "modules/functionapp.bicep",
    }


def test_no_failed_check_outside_the_listed_exceptions(report: dict[str, Any]) -> None:
    unlisted = sorted(failures(report) - set(skips()))
    described = [
        f"{check} {file} {resource}: {c['check_name']}"
        for check, file, resource in unlisted
        for c in report["results"]["failed_checks"]
        if c["check_id"] == check and c["resource"] == resource
    ]
    assert not unlisted, "fix these or list them, with a reason, in infra/checkov-skips.md:\n" + "\n".join(described)


def test_every_listed_exception_still_fails_and_says_why(report: dict[str, Any]) -> None:
    listed = skips()
    assert listed, "infra/checkov-skips.md lists nothing: the table's format changed?"
    stale = sorted(set(listed) - failures(report))
    assert not stale, f"checkov no longer reports these: delete their rows from infra/checkov-skips.md: {stale}"
    assert all(len(reason) > 20 for reason in listed.values())


def test_checkov_env_is_pinned_and_installed_by_bootstrap() -> None:
    pins = (ROOT / "requirements-checkov.txt").read_text().splitlines()
    assert any(line.startswith("checkov==") for line in pins)
    assert all("==" in line for line in pins if line and not line.startswith("#"))
    assert "requirements-checkov.txt" in (ROOT / "scripts" / "bootstrap").read_text()
    assert Path(CHECKOV).exists()
