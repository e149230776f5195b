"""tiktoken encodings without the network.

tiktoken downloads its BPE files on first use; these machines and many locked-down Azure networks cannot.
The PyPI package ``bpe-openai`` ships ``o200k_base`` and ``cl100k_base`` (gzipped) whose bytes match tiktoken's
expected SHA-256, so we write them, decompressed, into tiktoken's cache directory under the name tiktoken
looks for (the SHA-1 of the file's URL), and tiktoken loads them from there.

Each encoding costs a worker tens of MB (o200k_base ~75 MB, cl100k_base ~30 MB), so one is loaded only when a
deployment needs it: the tokens policy loads the configured deployments' encodings at start and any other
(a wildcard backend serving a model of the other family) on first use, in a thread (``load``), off the event
loop.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib.util
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import tiktoken

from ..config import ConfigError

SHIPPED = ("o200k_base", "cl100k_base")
COMMON = "o200k_base"  # gpt-4o, gpt-4.1, gpt-5, o-series: what a gateway serving any name loads at start
_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    # One per user: a shared /tmp/aigw-tiktoken could be made by anyone, with files of their choosing.
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"aigw-tiktoken-{os.getuid()}"


def private_dir(directory: Path) -> Path:
    """``directory``, created 0700 and only writable by this user: tiktoken trusts the files it finds there.

    Refuses (``ConfigError``, naming TIKTOKEN_CACHE_DIR) a directory of another user, a symlink, or one that
    cannot be made; one of ours that others could write is closed (0700) and emptied of whatever they may have
    put there (``_clear_planted``), and its encoding files are written afresh.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise ConfigError(
            f"TIKTOKEN_CACHE_DIR: cannot use {directory} as the tokenizer cache ({exc.strerror}): "
            "set TIKTOKEN_CACHE_DIR to a directory this user may create"
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"TIKTOKEN_CACHE_DIR: tokenizer cache {directory} is not a directory of this user: "
            "set TIKTOKEN_CACHE_DIR to one that is"
        )
    if info.st_mode & 0o022:
        directory.chmod(0o700)  # first: from here on no one else can add an entry
        _clear_planted(directory)
    return directory


def _clear_planted(directory: Path) -> None:
    """Remove from ``directory`` (just closed to others) every entry but regular files of this user, and the
    encoding files whoever wrote them: a planted symlink (under a temp or a final name) would have had the
    gateway write, or tiktoken read, through it."""
    ours = {cached_file(directory, name).name for name in SHIPPED}
    for entry in os.scandir(directory):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and entry.name not in ours:
            continue
        try:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            raise ConfigError(
                f"TIKTOKEN_CACHE_DIR: tokenizer cache {directory} was open to other users and its entry "
                f"{entry.name!r} cannot be removed ({exc.strerror}): remove it, or set TIKTOKEN_CACHE_DIR elsewhere"
            ) from None


def seed_cache(directory: Path | None = None, names: tuple[str, ...] = SHIPPED) -> Path:
    """Write the shipped encodings ``names`` into ``directory`` (default: ``cache_dir()``); point tiktoken at it."""
    directory = private_dir(directory or cache_dir())
    data = _shipped_data_dir()
    for name in names:
        target = cached_file(directory, name)
        if not target.exists():
            raw = gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes())
            # Write then rename, so a concurrent worker never reads a half-written file; mkstemp creates a new
            # file of an unguessable name (O_EXCL), never writing through an entry that was there.
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(raw)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    return directory


def cached_file(directory: Path, name: str) -> Path:
    """Where tiktoken looks for encoding ``name`` in ``directory``."""
    return directory / hashlib.sha1(_URL.format(name=name).encode()).hexdigest()


def _shipped_data_dir() -> Path:
    # Locate the files without importing bpe_openai: its import builds both encodings, slowly.
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the package bpe-openai (which ships the tokenizer files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# The encodings loaded in this process: written once per name (under the lock), read without it, so the event
# loop never waits on a load running in a thread.
_loaded: dict[str, tiktoken.Encoding] = {}
_loading = threading.Lock()


def encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, loaded offline (blocking, ~0.5 s the first time); raises ``ValueError`` for
    encodings aigw does not ship."""
    enc = _loaded.get(name)
    if enc is not None:
        return enc
    if name not in SHIPPED:
        raise ValueError(f"unknown encoding {name!r}: aigw ships {', '.join(SHIPPED)}")
    with _loading:
        enc = _loaded.get(name)
        if enc is None:
            seed_cache(names=(name,))
            enc = tiktoken.get_encoding(name)
            # tiktoken keeps the Python dict of ranks it built its (Rust) encoder from only to pickle the
            # encoding: ~28 MB per worker for o200k_base. aigw never pickles one (workers build their own).
            enc._mergeable_ranks = {}
            _loaded[name] = enc
    return enc


def loaded(name: str) -> tiktoken.Encoding | None:
    """The named encoding if this process has loaded it, else None; never blocks."""
    return _loaded.get(name)


async def load(name: str) -> tiktoken.Encoding:
    """The named encoding; the first time, loaded in a thread so the event loop keeps serving."""
    enc = loaded(name)
    return enc if enc is not None else await asyncio.to_thread(encoding, name)


def encoding_name(model: str) -> str:
    """o200k_base for gpt-4o, gpt-4.1, gpt-5 and o-series; cl100k_base for gpt-4, gpt-3.5 and embeddings."""
    lowered = model.lower()
    legacy = ("gpt-4-", "gpt-4", "gpt-35", "gpt-3.5", "text-embedding")
    if lowered.startswith(legacy) and not lowered.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5")):
        return "cl100k_base"
    return COMMON


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding of ``model`` (see ``encoding_name``), loaded on this thread if it was not yet."""
    return encoding(encoding_name(model))
