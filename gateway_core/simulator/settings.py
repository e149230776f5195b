"""The simulator's settings: latency and faults, per deployment or by default, loaded from YAML at start and
changed while it runs through ``POST /++/config`` (`patched`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ConfigError

FaultKind = Literal["429", "500", "503", "slow", "drop"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fault(_Model):
    """A fault injected into a share (``rate``) of a deployment's requests."""

    kind: FaultKind
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    retry_after_s: float = Field(default=1.0, ge=0.0)
    extra_latency_ms: float = Field(default=2000.0, ge=0.0)  # for "slow"


class SimDeployment(_Model):
    name: str
    model: str | None = None  # what the response's "model" field says; default: the deployment name
    ttft_ms: float | None = Field(default=None, ge=0.0)
    tokens_per_s: float | None = Field(default=None, ge=0.0)
    completion_tokens: int | None = Field(default=None, ge=1)
    embedding_dimensions: int = Field(default=1536, ge=1, le=8192)
    faults: tuple[Fault, ...] = ()
    tpm_limit: int | None = Field(default=None, ge=1)  # this deployment's own tokens-per-minute limit


class SimConfig(_Model):
    # When set, callers must send it as `api-key` or `Authorization: Bearer`, as Azure OpenAI requires a key.
    api_key: str | None = None
    # Empty: every deployment name exists. Otherwise unknown names answer 404 DeploymentNotFound.
    deployments: tuple[SimDeployment, ...] = ()
    ttft_ms: float = Field(default=0.0, ge=0.0)  # time to first token (and to a non-streamed answer)
    tokens_per_s: float = Field(default=0.0, ge=0.0)  # 0: as fast as possible
    completion_tokens: int = Field(default=16, ge=1)  # reply length when max_tokens does not cut it
    region: str = "simulated"
    faults: tuple[Fault, ...] = ()  # for every deployment (what /++/config flips at run time)
    tpm_limit: int | None = Field(default=None, ge=1)  # default per-deployment tokens-per-minute limit
    seed: int = 0
    record_requests: int = Field(default=200, ge=0)  # how many recent requests /_sim/requests keeps
    record_body_bytes: int = Field(default=65536, ge=0)  # how much of each request body a record keeps
    # False: streams ignore stream_options.include_usage and send no usage chunk, as some servers do.
    stream_usage: bool = True


def load_sim_config(path: str | Path | None) -> SimConfig:
    """The simulator's settings from a YAML file; ``ConfigError`` (one message, no traceback) if unusable."""
    if path is None:
        return SimConfig()
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        return SimConfig.model_validate(data)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"simulator config {file}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"simulator config {file}: {problems}") from None


def patched(config: SimConfig, body: bytes) -> SimConfig:
    """``config`` with the JSON object ``body`` merged into it (top-level keys replace); ValueError if invalid."""
    try:
        patch: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(patch, dict):
        raise ValueError("the settings must be a JSON object")
    return SimConfig.model_validate({**config.model_dump(), **patch})
