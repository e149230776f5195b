"""The store URL grammar, in one place: the config model validates with it and the factory opens with it.

    memory://                                       in-process (unit tests)
    sqlite:///relative/file.db, sqlite:////abs.db   SQLite, as SQLAlchemy spells it
    cosmos://host[:port]/database[?key_env=VAR][&scheme=http|https][&create_if_missing=true]
                                                    Cosmos DB; without key_env, DefaultAzureCredential;
                                                    without create_if_missing, the database and its
                                                    containers must exist (infra/main.bicep creates them)
    tables://account[?create_if_missing=true][&prefix=p]
    tables://?connection_env=VAR[&create_if_missing=true][&prefix=p]
                                                    Table Storage + Storage queue (usage only): the account
                                                    with DefaultAzureCredential, or a connection string
                                                    from VAR (e.g. AzureWebJobsStorage)

Unset, a port's URL is ``AIGW_<PORT>_URL``, else Cosmos DB at ``COSMOS_ENDPOINT`` (for the ports Cosmos DB
serves: not usage), else (usage) Table Storage at ``AzureWebJobsStorage``, else SQLite under ./.aigw/. From
``COSMOS_ENDPOINT``: database ``COSMOS_DATABASE`` (default ``aigw``), managed identity unless ``COSMOS_KEY`` is
set, and ``create_if_missing`` from ``COSMOS_CREATE_IF_MISSING`` (default false; true for an emulator).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

Port = Literal["counters", "cache", "health", "usage"]
PORTS: tuple[Port, ...] = ("counters", "cache", "health", "usage")
DEFAULT_STATE_DIR = ".aigw"
ENV_URL: dict[Port, str] = {
    "counters": "AIGW_COUNTERS_URL",
    "cache": "AIGW_CACHE_URL",
    "health": "AIGW_HEALTH_URL",
    "usage": "AIGW_USAGE_URL",
}
_FORMS = "use memory://, sqlite:///path/file.db, cosmos://host[:port]/database or tables://account"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATABASE_NAME = re.compile(r"^[^/\\#?%\s]{1,255}$")  # Cosmos DB forbids / \ # ? in ids; % and spaces break the URL
_COSMOS_OPTIONS = ("key_env", "scheme", "create_if_missing")
_TABLES_OPTIONS = ("connection_env", "create_if_missing", "prefix")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")  # a storage account name, as Azure allows it
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,19}$")  # starts table and queue names, which both accept it
# The ports each scheme serves; storage/factory.py has one adapter per (port, scheme) pair listed here (a test
# checks that they agree). A backend for some ports only (tables:// for usage) lists just those.
# Cosmos DB does not serve usage: records and summaries go to SQLite or Table Storage.
SERVES: dict[str, tuple[Port, ...]] = {
    "memory": PORTS,
    "sqlite": PORTS,
    "cosmos": ("counters", "cache", "health"),
    "tables": ("usage",),
}


class StoreURLError(ValueError):
    """A store URL that does not parse; the message says what is wrong, not where (the caller knows that)."""


@dataclass(frozen=True, slots=True)
class MemoryURL:
    scheme: Literal["memory"] = "memory"


@dataclass(frozen=True, slots=True)
class SqliteURL:
    path: Path
    scheme: Literal["sqlite"] = "sqlite"


@dataclass(frozen=True, slots=True)
class CosmosURL:
    endpoint: str  # https://host:port/
    database: str
    key_env: str | None  # None: DefaultAzureCredential (managed identity in Azure)
    # False (the default): open what exists, never create. In Azure the identity has data-plane roles only,
    # which cannot create databases or containers; true is for emulators and keyed accounts.
    create_if_missing: bool = False
    scheme: Literal["cosmos"] = "cosmos"


@dataclass(frozen=True, slots=True)
class TablesURL:
    account: str | None  # DefaultAzureCredential at https://<account>.table|queue.core.windows.net
    connection_env: str | None  # or: the variable holding a connection string (exactly one of the two)
    create_if_missing: bool = False  # on for emulators only: in Azure the identity has data-plane roles only
    prefix: str = ""  # before every table and queue name (two gateways sharing one account; tests)
    scheme: Literal["tables"] = "tables"


StoreURL = MemoryURL | SqliteURL | CosmosURL | TablesURL


def parse_store_url(url: str, port: Port) -> StoreURL:
    """``url`` parsed for ``port``; raises ``StoreURLError`` for an unknown scheme, a malformed URL, or a
    backend that does not serve ``port``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreURLError(f"{url!r} is not a store URL: {_FORMS}")
    if scheme in SERVES and port not in SERVES[scheme]:
        raise StoreURLError(f"{scheme}:// does not serve the {port} store (it serves: {', '.join(SERVES[scheme])})")
    if scheme == "memory":
        if rest:
            raise StoreURLError(f"{url!r}: memory:// takes nothing after the scheme")
        return MemoryURL()
    if scheme == "sqlite":
        return _sqlite(url, rest)
    if scheme == "cosmos":
        return _cosmos(url)
    if scheme == "tables":
        return _tables(url)
    raise StoreURLError(f"unknown store scheme {scheme!r} in {url!r}: {_FORMS}")


def _sqlite(url: str, rest: str) -> SqliteURL:
    # sqlite:///relative/path and sqlite:////absolute/path: the third slash ends the (empty) host.
    if not rest.startswith("/") or len(rest) < 2:
        raise StoreURLError(f"bad SQLite URL {url!r}: use sqlite:///relative/file.db or sqlite:////abs/file.db")
    if "?" in rest or "#" in rest:
        raise StoreURLError(f"bad SQLite URL {url!r}: SQLite store URLs take no query options")
    if rest.endswith("/"):
        raise StoreURLError(f"bad SQLite URL {url!r}: names a directory, not a database file")
    return SqliteURL(Path(rest[1:]))


def _cosmos(url: str) -> CosmosURL:
    parts = urlsplit(url)
    if not parts.hostname:
        raise StoreURLError(f"bad Cosmos DB URL {url!r}: no host (cosmos://host[:port]/database)")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError:
        raise StoreURLError(f"bad Cosmos DB URL {url!r}: the port is not a number from 0 to 65535") from None
    database = parts.path.strip("/")
    if not database or "/" in database or parts.fragment:
        raise StoreURLError(f"bad Cosmos DB URL {url!r}: name one database (cosmos://host[:port]/database)")
    options = _options(parts.query, f"bad Cosmos DB URL {url!r}", _COSMOS_OPTIONS)
    key_env = options["key_env"][-1] if "key_env" in options else None
    if key_env is not None and not _ENV_NAME.match(key_env):
        raise StoreURLError(f"bad Cosmos DB URL {url!r}: key_env must name an environment variable")
    scheme = options["scheme"][-1] if "scheme" in options else "https"
    if scheme not in ("http", "https"):
        raise StoreURLError(f"bad Cosmos DB URL {url!r}: scheme must be http or https")
    create = _flag(options, "create_if_missing", f"bad Cosmos DB URL {url!r}")
    return CosmosURL(
        endpoint=f"{scheme}://{parts.netloc}/", database=database, key_env=key_env, create_if_missing=create
    )


def _options(query: str, bad: str, known: tuple[str, ...]) -> dict[str, list[str]]:
    """A store URL's query as name -> values; ``StoreURLError`` (starting with ``bad``) if malformed or unknown."""
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise StoreURLError(f"{bad}: the query is not name=value pairs") from None
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise StoreURLError(f"{bad}: unknown option {', '.join(unknown)} (known: {', '.join(known)})")
    return options


def _flag(options: dict[str, list[str]], name: str, bad: str) -> bool:
    value = options[name][-1] if name in options else "false"
    if value not in ("true", "false"):
        raise StoreURLError(f"{bad}: {name} must be true or false")
    return value == "true"


def _tables(url: str) -> TablesURL:
    parts = urlsplit(url)
    bad = f"bad Table Storage URL {url!r}"
    if parts.path or parts.fragment:
        raise StoreURLError(f"{bad}: use tables://account or tables://?connection_env=VAR")
    options = _options(parts.query, bad, _TABLES_OPTIONS)
    account = parts.netloc or None
    connection_env = options["connection_env"][-1] if "connection_env" in options else None
    if (account is None) == (connection_env is None):
        raise StoreURLError(f"{bad}: name an account (tables://account) or connection_env=VAR, not both")
    if account is not None and not _ACCOUNT.match(account):
        raise StoreURLError(f"{bad}: the account name is 3 to 24 lowercase letters and digits")
    if connection_env is not None and not _ENV_NAME.match(connection_env):
        raise StoreURLError(f"{bad}: connection_env must name an environment variable")
    create = _flag(options, "create_if_missing", bad)
    prefix = options["prefix"][-1] if "prefix" in options else ""
    if prefix and not _PREFIX.match(prefix):
        raise StoreURLError(f"{bad}: prefix is a lowercase letter and up to 19 lowercase letters or digits")
    return TablesURL(account, connection_env, create, prefix)


def tables_default(env: Mapping[str, str]) -> str | None:
    """The usage store the Functions app's own storage account gives: ``AzureWebJobsStorage`` (a connection
    string; an emulator's gets ``create_if_missing``), else ``AzureWebJobsStorage__accountName`` (managed
    identity); None if neither is set. Raises ``StoreURLError`` naming the variable when it is unusable."""
    connection = env.get("AzureWebJobsStorage")
    if connection:
        emulator = "usedevelopmentstorage=true" in connection.lower() or "devstoreaccount1" in connection
        return "tables://?connection_env=AzureWebJobsStorage" + ("&create_if_missing=true" if emulator else "")
    account = env.get("AzureWebJobsStorage__accountName")
    if account:
        if not _ACCOUNT.match(account):
            raise StoreURLError(
                "environment variable AzureWebJobsStorage__accountName: "
                f"{account!r} is not a storage account name (3 to 24 lowercase letters and digits)"
            )
        return f"tables://{account}"
    return None


def default_url(port: Port, env: Mapping[str, str]) -> str:
    """``AIGW_<PORT>_URL``; else Cosmos DB at ``COSMOS_ENDPOINT`` (the Functions app) for a port it serves;
    else, for usage, Table Storage in the Functions app's storage account (``tables_default``); else SQLite
    under ./.aigw/.

    Raises ``StoreURLError`` naming the environment variable when the URL it gives does not parse.
    """
    variable = ENV_URL[port]
    if env.get(variable):
        url = env[variable]
        _check(url, port, variable)
        return url
    endpoint = env.get("COSMOS_ENDPOINT")
    if endpoint and port in SERVES["cosmos"]:
        return _from_cosmos_settings(endpoint, port, env)
    tables = tables_default(env) if port == "usage" else None
    if tables is not None:
        return tables
    return f"sqlite:///{DEFAULT_STATE_DIR}/{port}.db"


def _from_cosmos_settings(endpoint: str, port: Port, env: Mapping[str, str]) -> str:
    # An https://host:port/ endpoint as the portal shows it (http:// for an emulator), or a bare host[:port].
    netloc = urlsplit(endpoint).netloc if "://" in endpoint else endpoint.rstrip("/")
    options = []
    if env.get("COSMOS_KEY"):
        options.append("key_env=COSMOS_KEY")
    if endpoint.lower().startswith("http://"):
        options.append("scheme=http")
    create = env.get("COSMOS_CREATE_IF_MISSING", "").strip().lower()
    if create not in ("", "true", "false"):
        raise StoreURLError(f"environment variable COSMOS_CREATE_IF_MISSING: {create!r} is not true or false")
    if create == "true":
        options.append("create_if_missing=true")
    database = env.get("COSMOS_DATABASE") or "aigw"
    if not _DATABASE_NAME.match(database):
        raise StoreURLError(
            f"environment variable COSMOS_DATABASE: {database!r} is not a database name (1-255 characters, "
            "none of / \\ # ? % or spaces)"
        )
    url = f"cosmos://{netloc}/{database}" + ("?" + "&".join(options) if options else "")
    _check(url, port, "COSMOS_ENDPOINT", shown=endpoint)
    return url


def _check(url: str, port: Port, variable: str, shown: str | None = None) -> None:
    try:
        parse_store_url(url, port)
    except StoreURLError as exc:
        detail = f"{shown!r} is not a Cosmos DB endpoint (https://host[:port]/)" if shown is not None else str(exc)
        raise StoreURLError(f"environment variable {variable}: {detail}") from None
