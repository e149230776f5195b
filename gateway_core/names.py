"""What a deployment name and an api-version may look like: the parts of an upstream URL a client chooses.

Both are checked where they enter (the request, the config file) so that an upstream URL is only ever built
from these shapes: no ``/``, ``..``, ``?``, ``#``, ``%`` or non-ASCII look-alike can reach a backend's path or
query.
"""

from __future__ import annotations

import datetime
import re

MAX_DEPLOYMENT_NAME = 64
# ASCII classes spelled out: \w and \d would admit other scripts' letters and digits.
_DEPLOYMENT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_DEPLOYMENT_NAME - 1}}}")
_API_VERSION = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(-preview)?|v1|latest|preview")

DEPLOYMENT_NAME_RULE = (
    f"starts with a letter or digit and has only letters, digits, '-', '_' and '.', "
    f"at most {MAX_DEPLOYMENT_NAME} characters"
)
API_VERSION_RULE = "a date (YYYY-MM-DD, optionally followed by -preview), v1, latest or preview"


def is_deployment_name(name: str) -> bool:
    return _DEPLOYMENT_NAME.fullmatch(name) is not None


def is_api_version(version: str) -> bool:
    match = _API_VERSION.fullmatch(version)
    if match is None:
        return False
    if match.group(1) is None:
        return True
    try:
        datetime.date.fromisoformat(match.group(1))
    except ValueError:
        return False
    return True
