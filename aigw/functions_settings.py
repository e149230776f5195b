"""The Functions app's settings: its config from ``AIGW_CONFIG``, the timeouts Azure's front end allows, logging.

``AIGW_CONFIG`` is either a path (relative to the app root) or the YAML itself. It is YAML when it has a line
break, starts with ``{`` (flow style: ``{backends: [...]}``), or starts with a top-level config key and a colon
(``backends: [...]``); otherwise a path. No config file has such a name, and no one-line YAML config looks
like a path, so the two cannot be mistaken for each other. Unset: zero-config from the app settings.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from gateway_core.config import GatewayConfig, load_config, load_config_text

log = logging.getLogger("aigw")

INLINE_SOURCE = "AIGW_CONFIG (inline YAML)"
# Azure's HTTP front end ends a request when no byte has come for 230 s (a stream that is sending lives on):
# on Functions, every wait for a backend (the routing budget, a backend's timeout) stays under it, so the
# client gets the gateway's 504 rather than a dropped connection.
FRONT_END_TIMEOUT_S = 230.0
MAX_WAIT_S = 220.0
_TOP_LEVEL_KEY = re.compile(r"^\s*(?:" + "|".join(GatewayConfig.model_fields) + r")\s*:")


def is_inline_yaml(setting: str) -> bool:
    """Whether ``AIGW_CONFIG`` holds the YAML itself rather than a path (see the module's docstring)."""
    return "\n" in setting or setting.lstrip().startswith("{") or bool(_TOP_LEVEL_KEY.match(setting))


def config_from_app_settings(app_root: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The config for the Functions app: ``AIGW_CONFIG`` (inline YAML, or a path relative to ``app_root``) or
    zero-config from the app settings, with its waits kept under the front end's limit. Raises ``ConfigError``."""
    env = os.environ if env is None else env
    setting = env.get("AIGW_CONFIG", "")
    if is_inline_yaml(setting):
        config = load_config_text(setting, INLINE_SOURCE, env)
    else:
        path = setting.strip()
        if path and not Path(path).is_absolute():
            path = str(app_root / path)
        config = load_config(path or None, env)
    return writable_spill_dir(within_front_end_timeout(config))


def writable_spill_dir(config: GatewayConfig, temp_dir: str | None = None) -> GatewayConfig:
    """``config`` with a relative ``usage.spill_dir`` moved under the temp directory: on Flex Consumption the
    app's own directory is the read-only deployment package, so the default ``.aigw/usage-spill`` could not be
    created and records the store refused would be lost rather than spilled. (Files there live as long as the
    instance; the store's retries come first.)"""
    spill = Path(config.usage.spill_dir)
    if spill.is_absolute():
        return config
    moved = Path(temp_dir or tempfile.gettempdir()) / "aigw" / spill
    return config.model_copy(update={"usage": config.usage.model_copy(update={"spill_dir": str(moved)})})


def within_front_end_timeout(config: GatewayConfig) -> GatewayConfig:
    """``config`` with each backend's ``timeout_s`` and ``routing.budget_s`` at most ``MAX_WAIT_S``.

    Unset, they take that cap as their default (``timeout_s`` is 300 elsewhere). Set above it, they are
    capped too (a longer wait could only end in the front end dropping the connection) and a warning names
    each one. Long non-streaming calls should stream: a stream's budget counts to its first byte.
    """
    backends = []
    for backend in config.backends:
        if backend.timeout_s > MAX_WAIT_S:
            if "timeout_s" in backend.model_fields_set:
                _warn_capped(f"backends[{backend.name}].timeout_s", backend.timeout_s)
            backend = backend.model_copy(update={"timeout_s": MAX_WAIT_S})
        backends.append(backend)
    routing = config.routing
    if routing.budget_s > MAX_WAIT_S:
        _warn_capped("routing.budget_s", routing.budget_s)
        routing = routing.model_copy(update={"budget_s": MAX_WAIT_S})
    return config.model_copy(update={"backends": tuple(backends), "routing": routing})


def _warn_capped(key: str, value_s: float) -> None:
    log.warning(
        "%s is %g s: capped to %g s on Azure Functions, whose front end ends a request after %g s without a "
        "byte (long non-streaming calls should stream)",
        key,
        value_s,
        MAX_WAIT_S,
        FRONT_END_TIMEOUT_S,
    )


def configure_logging() -> None:
    """The gateway's logger at INFO, into the worker's root handler (which sends records to the Functions host,
    and so to Application Insights when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set); the Azure SDKs'
    per-request HTTP logging (INFO) kept out. A level already chosen (by the app's own code) is left alone.

    What ``aigw`` logs carries request ids, statuses, messages and backend host names, never keys or bodies.
    """
    for name, level in (("aigw", logging.INFO), ("azure", logging.WARNING)):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
