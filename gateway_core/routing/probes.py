"""Active health probes: a token-free request to each backend (listing its models), on a timer.

Azure OpenAI has no free health endpoint; ``GET /openai/models`` costs no tokens but counts against the
resource's request rate (one call per backend per interval per instance). The path is configurable.
Probes inform, live traffic decides (see ``HealthView.observe_probe``): every backend is probed, whatever its
state, and a probe never takes the half-open slot that a live request needs to close a breaker.
"""

from __future__ import annotations

import asyncio
import logging

from ..clock import Clock
from ..config import Backend, ProbeSettings
from ..errors import GatewayError
from ..providers.client import UpstreamClient
from ..providers.credentials import Credential
from .health import HealthView

log = logging.getLogger("aigw")


class Prober:
    def __init__(
        self,
        backends: list[Backend],
        client: UpstreamClient,
        credentials: dict[str, Credential],
        health: HealthView,
        clock: Clock,
        settings: ProbeSettings,
    ) -> None:
        self._backends = backends
        self._client = client
        self._credentials = credentials
        self._health = health
        self._clock = clock
        self._settings = settings

    def url_of(self, backend: Backend) -> str:
        if self._settings.path:
            return backend.url + self._settings.path
        if backend.type == "azure":
            return f"{backend.url}/openai/models?api-version={backend.api_version}"
        return f"{backend.url}/v1/models"

    async def probe_all(self) -> dict[str, str]:
        """Probe every backend once, concurrently; returns each one's breaker state afterwards."""
        await asyncio.gather(*(self._probe(b) for b in self._backends))
        return {b.name: self._health.state(b.name) for b in self._backends}

    async def _probe(self, backend: Backend) -> None:
        try:
            headers = await self._credentials[backend.name].headers()
            status, _ = await self._client.get(self.url_of(backend), headers, self._settings.timeout_s)
        except GatewayError as exc:
            self._health.observe_probe(backend.name, status=None, error=exc.message)
            return
        self._health.observe_probe(backend.name, status=status)

    async def run_forever(self) -> None:
        """`aigw serve`'s background loop (the Functions app uses its timer trigger instead)."""
        while True:
            try:
                await self.probe_all()
            except Exception:
                log.exception("health probe round failed")
            await asyncio.sleep(self._settings.interval_s)
