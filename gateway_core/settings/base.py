"""What every config section shares: the frozen model base, the error type and the name checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..names import DEPLOYMENT_NAME_RULE, is_deployment_name

DEFAULT_API_VERSION = "2024-10-21"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
WILDCARD = "*"


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names the key (and file and line where known)."""


def require_unique(names: list[str], what: str) -> None:
    """Raise ``ValueError`` naming the duplicates if ``names`` repeats any."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} names must be unique: {', '.join(dupes)}")


def check_deployment_name(value: str) -> str:
    """``value`` if it is a valid deployment name; else ``ValueError`` saying the rule."""
    if not is_deployment_name(value):
        raise ValueError(f"a deployment name {DEPLOYMENT_NAME_RULE}")
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
