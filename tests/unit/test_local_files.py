"""Local files only the gateway's user may read or write: SQLite stores and the tokenizer cache."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_core.config import ConfigError
from gateway_core.storage.factory import cache_store, counter_store, health_store, usage_store
from gateway_core.storage.ports import CacheStore, CounterStore, HealthStore, UsageStore
from gateway_core.tokens.encodings import SHIPPED, cache_dir, cached_file, seed_cache
from gateway_core.usage.record import UsageBatch


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o002)  # what a shared host often has: files would be 0664 by default
    yield
    os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
async def test_every_sqlite_store_file_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    counters = counter_store(f"sqlite:///{tmp_path}/counters.db")
    cache = cache_store(f"sqlite:///{tmp_path}/cache.db")
    health = health_store(f"sqlite:///{tmp_path}/health.db")
    usage = usage_store(f"sqlite:///{tmp_path}/usage.db")
    stores: list[CounterStore | CacheStore | HealthStore | UsageStore] = [counters, cache, health, usage]
    for store in stores:
        await store.start()
    try:
        await counters.add("k", 0, 1, 60)
        await health.publish_throttle("east", "gpt-4o", 1.0)
        await usage.write_batch(UsageBatch("b1", ()))
        for name in ("counters.db", "cache.db", "health.db", "usage.db"):
            for suffix in ("", "-wal", "-shm"):
                path = tmp_path / f"{name}{suffix}"
                assert path.exists() and mode_of(path) == 0o600, f"{path.name}: {oct(mode_of(path))}"
    finally:
        for store in stores:
            await store.close()


@pytest.mark.usefixtures("permissive_umask")
async def test_an_existing_store_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "health.db"
    path.touch(mode=0o644)
    store = health_store(f"sqlite:///{path}")
    await store.start()
    await store.close()
    assert mode_of(path) == 0o600


def test_the_tokenizer_cache_is_per_user_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    assert cache_dir().name == f"aigw-tiktoken-{os.getuid()}"  # not one name in /tmp shared by every user
    fresh = seed_cache(tmp_path / "fresh")
    assert mode_of(fresh) == 0o700


def test_a_tokenizer_cache_others_could_write_is_closed_and_its_files_written_afresh(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    planted = cached_file(directory, SHIPPED[0])
    planted.write_bytes(b"planted by someone else")
    seed_cache(directory)
    assert mode_of(directory) == 0o700
    assert planted.read_bytes() != b"planted by someone else"


def test_a_tokenizer_cache_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    if os.getuid() == 0:
        os.chown(theirs, 65534, 65534)  # nobody
    else:
        theirs = Path("/")  # root's
    with pytest.raises(ConfigError, match=r"TIKTOKEN_CACHE_DIR: .* not a directory of this user"):
        seed_cache(theirs)


def test_symlinks_planted_in_a_tokenizer_cache_others_could_write_are_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's repro: in a 0777 cache, symlinks under the temp names the gateway wrote through (the pid
    is easy to guess) and under a final name; seeding clobbered one file and created the other where the
    planter chose, and left the cache entries as symlinks out of the directory."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "unused"))  # restored after seed_cache sets it
    victim, chosen, outside = tmp_path / "victim.txt", tmp_path / "victim2.txt", tmp_path / "outside"
    victim.write_text("precious")
    outside.mkdir()
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    for name, points_to in zip(SHIPPED, (victim, chosen), strict=True):
        (directory / f"{cached_file(directory, name).name}.{os.getpid()}.tmp").symlink_to(points_to)
    (directory / "some-other-name").symlink_to(outside)
    (directory / "a-planted-dir").mkdir()
    seed_cache(directory)
    assert victim.read_text() == "precious" and not chosen.exists() and not any(outside.iterdir())
    entries = sorted(directory.iterdir())
    assert entries == sorted(cached_file(directory, name) for name in SHIPPED)  # nothing planted is left
    assert all(stat.S_ISREG(e.lstat().st_mode) and mode_of(e) == 0o600 for e in entries)
