"""``install()``/``uninstall()``: a Tortoise config whose connections use Reality's engines.

Tortoise loads a connection's client class from the module its config names as
``engine`` (its documented extension point), so installing the plugin is a change of
config, made once where the config is written::

    TORTOISE_ORM = reality_tortoise.install({
        "connections": {"default": "postgres://app@localhost/app"},
        "apps": {"models": {"models": ["app.models"]}},
    })
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from tortoise.backends.base.config_generator import expand_db_url

from reality_core.catalog import RawSQLPolicy, Settings
from reality_core.errors import ConfigurationError
from reality_core.urls import DatabaseURL

from ._tracking import RealityClient, RealityTransaction

#: Tortoise's engine -> Reality's engine for the same driver.
ENGINES: Final[Mapping[str, str]] = {
    "tortoise.backends.asyncpg": "reality_tortoise.backends.asyncpg",
    "tortoise.backends.psycopg": "reality_tortoise.backends.psycopg",
    "tortoise.backends.sqlite": "reality_tortoise.backends.sqlite",
}
_ORIGINAL: Final = {ours: theirs for theirs, ours in ENGINES.items()}
#: The credentials entry that carries the plugin's settings to the client.
SETTINGS_KEY: Final = "reality"


def _as_dict(config: Any) -> dict[str, Any]:
    to_dict = getattr(config, "to_dict", None)  # a TortoiseConfig
    if callable(to_dict):
        config = to_dict()
    if not isinstance(config, Mapping) or not isinstance(config.get("connections"), Mapping):
        raise ConfigurationError(
            "install() takes a Tortoise config (a dict or TortoiseConfig with a "
            f'"connections" section), not {type(config).__name__}'
        )
    return dict(config)


def _expanded(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = expand_db_url(value)
    elif isinstance(value, Mapping) and value.get("db_url"):
        value = expand_db_url(str(value["db_url"]))
    if not isinstance(value, Mapping) or "engine" not in value:
        raise ConfigurationError(
            f"connection {name!r}: expected a database URL or a dict with engine and "
            f"credentials, not {value!r:.80}"
        )
    return {**value, "credentials": dict(value.get("credentials") or {})}


def install(config: Any, *, raw_sql: RawSQLPolicy = "conservative",
            max_keys: int | None = 1000,
            connections: Iterable[str] | None = None) -> dict[str, Any]:
    """A copy of a Tortoise config in which ``connections`` (default: all) use Reality's
    engines, so every write through them bumps the keys of tracked models.

    Example::

        TORTOISE_ORM = reality_tortoise.install({...})
        await Tortoise.init(config=TORTOISE_ORM)
        # FastAPI: register_tortoise(app, config=TORTOISE_ORM) / RegisterTortoise(...)

    Takes a config dict or a ``TortoiseConfig``; returns a dict. URL connections come back
    expanded to ``{"engine": ..., "credentials": ...}``. Installing twice changes nothing
    (but the settings); :func:`uninstall` gives Tortoise's own engines back. ``raw_sql`` and
    ``max_keys`` are described in :class:`Settings`. The config is not modified.
    """
    settings = Settings(raw_sql=raw_sql, max_keys=max_keys)
    out = _as_dict(config)
    conns: dict[str, Any] = dict(out["connections"])
    names = list(conns) if connections is None else list(connections)
    for name in names:
        if name not in conns:
            raise ConfigurationError(
                f"install(connections=...) names {name!r}, which the config lacks "
                f"(it has: {', '.join(conns)})"
            )
        conn = _expanded(name, conns[name])
        engine = conn["engine"]
        if engine in ENGINES:
            conn["engine"] = ENGINES[engine]
        elif engine not in _ORIGINAL:
            raise ConfigurationError(
                f"connection {name!r} uses engine {engine!r}; Reality supports "
                + ", ".join(sorted(ENGINES))
            )
        conn["credentials"][SETTINGS_KEY] = settings.as_dict()
        conns[name] = conn
    out["connections"] = conns
    return out


def uninstall(config: Any) -> dict[str, Any]:
    """A copy of ``config`` with Tortoise's own engines back where :func:`install` put
    Reality's (and the plugin's settings removed). Connections already created keep their
    clients until the next ``Tortoise.init``."""
    out = _as_dict(config)
    conns: dict[str, Any] = dict(out["connections"])
    for name, value in conns.items():
        if isinstance(value, Mapping) and value.get("engine") in _ORIGINAL:
            conn = _expanded(name, value)
            conn["engine"] = _ORIGINAL[conn["engine"]]
            conn["credentials"].pop(SETTINGS_KEY, None)
            conns[name] = conn
    out["connections"] = conns
    return out


def connection_config(url: str | DatabaseURL, *, raw_sql: RawSQLPolicy = "conservative",
                      max_keys: int | None = 1000) -> dict[str, Any]:
    """A Tortoise connection entry, with a Reality engine, for a database URL in the usual
    (SQLAlchemy) spelling: ``postgresql+asyncpg://...`` or ``postgresql+psycopg://...``
    (plain ``postgresql://`` picks asyncpg, as Tortoise does), ``sqlite:///path.db``.

    Example::

        config = {"connections": {"default": connection_config(os.environ["DATABASE_URL"])},
                  "apps": {"models": {"models": ["app.models"]}}}
    """
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    settings = Settings(raw_sql=raw_sql, max_keys=max_keys).as_dict()
    if parsed.dialect == "sqlite":
        credentials: dict[str, Any] = {"file_path": parsed.database or ":memory:",
                                        SETTINGS_KEY: settings}
        return {"engine": ENGINES["tortoise.backends.sqlite"], "credentials": credentials}
    if parsed.dialect != "postgresql":
        raise ConfigurationError(
            "reality_tortoise supports PostgreSQL (asyncpg, psycopg) and SQLite, "
            f"not {parsed.dialect}"
        )
    driver = parsed.driver or "asyncpg"
    if driver not in ("asyncpg", "psycopg"):
        raise ConfigurationError(
            f"Tortoise talks to PostgreSQL through asyncpg or psycopg, not {driver!r}: "
            "use postgresql+asyncpg:// or postgresql+psycopg://"
        )
    credentials = {
        "host": parsed.host or "localhost", "port": parsed.port or 5432,
        "user": parsed.username, "password": parsed.password, "database": parsed.database,
        SETTINGS_KEY: settings,
    }
    return {"engine": ENGINES[f"tortoise.backends.{driver}"], "credentials": credentials}


def installed() -> list[str]:
    """The connection names of the current Tortoise context served by Reality's clients."""
    from tortoise.connection import get_connections

    handler = get_connections()
    return [name for name in handler.db_config
            if isinstance(handler.get(name), (RealityClient, RealityTransaction))]
