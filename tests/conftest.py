from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import Azurite, run_azurite
from tests.servers import BACKEND_KEY, GATEWAY_ENV, gateway_config, run_aigw, write_yaml

SIM_CONFIG = {
    "api_key": BACKEND_KEY,
    "region": "eastus",
    # "slow": 20 tokens at 25 tokens/s, so a stream takes ~0.8 s and incremental delivery is observable.
    "deployments": [
        {"name": "gpt-4o"},
        {"name": "gpt-4o-mini"},
        {"name": "text-embedding-3-small"},
        {"name": "slow", "tokens_per_s": 25, "completion_tokens": 20},
    ],
}


@pytest.fixture(scope="session")
def sim_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = write_yaml(tmp_path_factory.mktemp("sim") / "sim.yaml", SIM_CONFIG)
    with run_aigw(["simulate", "--config", str(config)]) as sim:
        yield sim.url


@pytest.fixture(scope="session")
def gateway_url(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = write_yaml(tmp_path_factory.mktemp("gw") / "gateway.yaml", gateway_config(sim_url))
    with run_aigw(["serve", "--config", str(config)], env=GATEWAY_ENV) as gateway:
        yield gateway.url


@pytest.fixture
def tmp_config(tmp_path: Path) -> Path:
    return tmp_path / "gateway.yaml"


@pytest.fixture(scope="session")
def cosmos_address() -> Iterator[str]:
    from tests.servers import run_cosmos

    with run_cosmos() as address:
        yield address


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite for the session; each test keeps to its own tables and queues (a URL ``prefix``)."""
    with run_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running
