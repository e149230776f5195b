"""`aigw usage summary|records|prices`: a running gateway's /usage/* API, printed as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .usage_http import RedirectRefused, get, plain_http_warning

DEFAULT_URL = "http://127.0.0.1:7071"  # where `aigw serve` listens by default
_RECORD_COLUMNS = (
    "time",
    "request_id",
    "tenant",
    "user",
    "deployment",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cache",
)
_SUMMARY_COLUMNS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cost_usd",
    "unpriced",
    "cache_hits",
    "saved_usd",
)


# C0, DEL and C1: names come from keys (and JWTs) and a client's request; a terminal would act on them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell as a formula


def add_parser(sub: Any) -> None:
    usage = sub.add_parser("usage", help="read usage and costs from a running gateway (admin keys see all)")
    what = usage.add_subparsers(dest="usage_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("AIGW_URL") or DEFAULT_URL, help="the gateway's URL")
    common.add_argument("--key", help="a gateway key (default: $AIGW_KEY)")
    common.add_argument("--format", choices=("table", "csv", "json"), default="table")
    summary = what.add_parser("summary", parents=[common], help="totals per user, tenant, deployment, model or day")
    summary.add_argument("--from", dest="from_day", help="first UTC day, YYYY-MM-DD (default: 6 days ago)")
    summary.add_argument("--to", dest="to_day", help="last UTC day, YYYY-MM-DD (default: today)")
    summary.add_argument("--group-by", default="day", choices=("user", "tenant", "deployment", "model", "day"))
    summary.add_argument("--tenant")
    summary.add_argument("--user")
    records = what.add_parser("records", parents=[common], help="one row per request, newest first")
    records.add_argument("--request-id")
    records.add_argument("--from", dest="from_day")
    records.add_argument("--to", dest="to_day")
    records.add_argument("--tenant")
    records.add_argument("--user")
    records.add_argument("--limit", type=int)
    what.add_parser("prices", parents=[common], help="the price table in force (admin keys)")


def run(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("AIGW_KEY")
    if not key:
        print("aigw usage: pass --key or set AIGW_KEY", file=sys.stderr)
        return 2
    command = args.usage_command
    params = _params(args, command)
    url = f"{args.url.rstrip('/')}/usage/{command}" + (f"?{urlencode(params)}" if params else "")
    request = urllib.request.Request(url, headers={"api-key": key, "accept": "application/json"})
    warning = plain_http_warning(args.url)
    if warning:
        print(warning, file=sys.stderr)
    try:
        with get(request, timeout_s=30) as response:
            data: dict[str, Any] = json.load(response)
    except RedirectRefused as exc:
        print(f"aigw usage: {exc}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as exc:
        print(f"aigw usage: {exc.code}: {_error_message(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"aigw usage: cannot reach the gateway at {args.url}: {reason}", file=sys.stderr)
        return 2
    sys.stdout.write(render(command, data, args.format))
    return 0


def _params(args: argparse.Namespace, command: str) -> dict[str, str]:
    if command == "prices":
        return {}
    names = {"from": "from_day", "to": "to_day", "tenant": "tenant", "user": "user"}
    if command == "summary":
        names["group_by"] = "group_by"
    else:
        names.update(request_id="request_id", limit="limit")
    return {param: str(getattr(args, attr)) for param, attr in names.items() if getattr(args, attr) is not None}


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason)


def render(command: str, data: dict[str, Any], fmt: str) -> str:
    """The API's answer as ``fmt``: json as it came (control characters escaped by JSON), rows as CSV (a cell that
    starts with ``= + - @`` prefixed with ``'``, so a spreadsheet shows it as text instead of running it), or an
    aligned table (control characters shown escaped, e.g. ``\\x1b``, never sent to the terminal)."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    header, rows = _rows(command, data)
    if fmt == "csv":
        out = io.StringIO()
        # CRLF (RFC 4180): a cell with a CR or LF is then quoted, never read as the start of a row of its own.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows([_csv_cell(cell) for cell in row] for row in rows)
        return out.getvalue()
    return _table(header, [[_visible(cell) for cell in row] for row in rows])


def _rows(command: str, data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    if command == "prices":
        header = ["model", "input", "cached_input", "output", "aliases"]
        aliases: dict[str, list[str]] = {}
        for alias, model in data.get("aliases", {}).items():
            aliases.setdefault(model, []).append(alias)
        rows = [
            [model, p["input"], p["cached_input"] or "", p["output"], " ".join(sorted(aliases.get(model, [])))]
            for model, p in data["models"].items()
        ]
        return header, rows
    if command == "records":
        rows = []
        for record in data["data"]:
            when = datetime.fromtimestamp(record["time_s"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.append([when, *(_cell(record.get(c)) for c in _RECORD_COLUMNS[1:])])
        return list(_RECORD_COLUMNS), rows
    group = data["group_by"]
    names = ["tenant", "user"] if group == "user" else [group]  # a user name is unique only within its tenant
    rows = [[*(_cell(row.get(n)) for n in names), *(_cell(row[c]) for c in _SUMMARY_COLUMNS)] for row in data["data"]]
    rows.append(["TOTAL", *([""] * (len(names) - 1)), *(_cell(data["total"][c]) for c in _SUMMARY_COLUMNS)])
    return [*names, *_SUMMARY_COLUMNS], rows


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _visible(cell: str) -> str:
    """``cell`` with each control character as a ``\\xNN`` escape (a backslash doubled so none is ambiguous)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", cell.replace("\\", "\\\\"))


def _csv_cell(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    return "\n".join(lines) + "\n"
