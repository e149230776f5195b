"""`aigw usage` output: names come from keys (JWTs next) and a client's request, so no cell may drive the
admin's terminal or spreadsheet."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from aigw.usage_cli import render

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
EVIL = "\x1b]52;c;b3duZWQ=\x07\x1b[2J\x9b1;1Hfake\x7f\\x1b"


def summary(group_by: str, name: str) -> dict[str, Any]:
    totals: dict[str, Any] = {"requests": 1, "errors": 0, "prompt_tokens": 1, "completion_tokens": 1}
    totals.update(cached_prompt_tokens=0, cost_usd="0.1", unpriced=0, cache_hits=0, saved_usd=None)
    row = {group_by: name, **totals, **({"tenant": "fabrikam"} if group_by == "user" else {})}
    return {"group_by": group_by, "data": [row], "total": totals}


def records(user: str) -> dict[str, Any]:
    row = {"time_s": 1_767_312_000.0, "request_id": "q", "tenant": "t", "user": user, "deployment": None}
    row.update(status=200, prompt_tokens=1, completion_tokens=1, cost_usd="0.1", cache="")
    return {"data": [row]}


def test_a_table_shows_control_characters_escaped_never_raw() -> None:
    for text in (render("records", records(EVIL), "table"), render("summary", summary("tenant", EVIL), "table")):
        lines = text.splitlines()
        assert not _CONTROL.search(text.replace("\n", "")), repr(text)
        assert "\\x1b]52;c;b3duZWQ=\\x07\\x1b[2J\\x9b1;1Hfake\\x7f\\\\x1b" in text
        assert len(lines) == (2 if "request_id" in lines[0] else 3)  # no cell adds a line


def test_a_summary_by_user_shows_each_users_tenant() -> None:
    header, row, _ = render("summary", summary("user", "alice"), "table").splitlines()
    assert header.split()[:2] == ["tenant", "user"] and row.split()[:2] == ["fabrikam", "alice"]


def test_csv_cells_that_a_spreadsheet_would_run_start_with_a_quote() -> None:
    for formula in ('=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"):
        rows = list(csv.reader(io.StringIO(render("records", records(formula), "csv"), newline="")))
        assert rows[1][3] == "'" + formula
    for name in ("alice", "a\rb", "a\nb", "a,b"):  # a CR or LF in a cell never starts a row of its own
        (_, row) = list(csv.reader(io.StringIO(render("records", records(name), "csv"), newline="")))
        assert row[3] == name


def test_json_escapes_control_characters() -> None:
    assert not _CONTROL.search(render("records", records(EVIL), "json").replace("\n", ""))
