"""The deployment catalogue: which (backend, deployment) targets serve each gateway deployment, and their
models, built once from config. It sits below policies, routing and providers, which all read it."""

from __future__ import annotations

from dataclasses import dataclass

from .config import WILDCARD, Backend, DeploymentRef, GatewayConfig
from .errors import DeploymentNotFound


@dataclass(slots=True, frozen=True)
class Target:
    backend: Backend
    upstream_name: str  # the deployment (Azure) or model (OpenAI) name on that backend
    model: str


class PoolTable:
    def __init__(self, config: GatewayConfig) -> None:
        self._pools: dict[str, list[Target]] = {}
        self._wildcard: list[Backend] = []
        for backend in config.backends:
            for ref in backend.deployments:
                if ref.name == WILDCARD:
                    self._wildcard.append(backend)
                else:
                    self._pools.setdefault(ref.name, []).append(_target(backend, ref))

    @property
    def has_wildcard(self) -> bool:
        return bool(self._wildcard)

    def check_exists(self, deployment: str) -> None:
        """Raise ``DeploymentNotFound`` unless some backend serves ``deployment``."""
        if deployment not in self._pools and not self._wildcard:
            raise DeploymentNotFound(f"The deployment '{deployment}' does not exist on this gateway.", param="model")

    def serves(self, deployment: str) -> bool:
        """Whether some backend serves ``deployment`` (by name, or as a wildcard backend passing it through)."""
        return deployment in self._pools or bool(self._wildcard)

    def targets(self, deployment: str) -> list[Target]:
        """Every target that serves ``deployment``, unordered; wildcard backends pass the name through."""
        named = self._pools.get(deployment)
        if named is not None:
            return named
        if self._wildcard:
            return [Target(b, deployment, deployment) for b in self._wildcard]
        self.check_exists(deployment)
        return []

    def deployment_ref(self, deployment: str) -> DeploymentRef | None:
        """The first backend's definition of ``deployment`` (model, encoding); None for wildcard-served names."""
        for target in self._pools.get(deployment, ()):
            for ref in target.backend.deployments:
                if ref.name == deployment:
                    return ref
        return None

    def model_of(self, deployment: str, backend: str | None = None) -> str | None:
        """The model behind ``deployment`` on ``backend`` (the one that answered), else on the first backend
        that serves it; None if no backend serves it."""
        named = self._pools.get(deployment)
        if named is None:
            return deployment if self._wildcard else None
        for target in named:
            if target.backend.name == backend:
                return target.model
        return named[0].model

    def named_deployments(self) -> list[str]:
        """Every deployment named in config (not the names a wildcard backend passes through)."""
        return list(self._pools)

    def deployments_of(self, backend: Backend) -> list[str]:
        return [ref.name for ref in backend.deployments]


def _target(backend: Backend, ref: DeploymentRef) -> Target:
    return Target(backend, ref.upstream_name, ref.model or ref.name)
