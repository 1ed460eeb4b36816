"""The ``reality`` command.

::

    reality serve   --database-url URL [--host H] [--port P] [--base /reality] [--workers N]
                    [--refresh-interval S] [--max-staleness S] [--no-cache] [--max-in-flight N]
                    [--replica-url URL]
    reality migrate --database-url URL [--revision reality@head] [--downgrade REVISION]
    reality fold    --database-url URL
    reality reset-epoch --database-url URL
    reality demo    [--port P] [--database-url URL] [--orm sqlalchemy|tortoise|peewee]

``serve`` answers ``POST {base}/sync`` and ``GET {base}/health`` for an existing database
(the standalone-server mode). ``migrate`` creates or upgrades the metadata tables through
the alembic branch ``reality``. ``demo`` runs a small chat app on SQLite (or your URL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .cache import DEFAULT_INTERVAL
from .errors import RealityError
from .shedding import http_protocol
from .urls import DatabaseURL

ENV_URL = "REALITY_DATABASE_URL"
ENV_BASE = "REALITY_BASE_PATH"
ENV_OPTIONS = "REALITY_SERVE_OPTIONS"


def _url(value: str) -> str:
    try:
        DatabaseURL.parse(value)
    except RealityError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return value


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, not {value!r}")
    return int(value)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds, e.g. 0.05, not {value!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reality", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the sync endpoint for an existing database")
    serve.add_argument("--database-url", type=_url, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--base", default="/reality", help="path prefix (default /reality)")
    serve.add_argument("--workers", type=_positive, default=1)
    serve.add_argument("--refresh-interval", type=_seconds, default=DEFAULT_INTERVAL,
                       metavar="SECONDS",
                       help="how often each process refreshes its version cache (default "
                            f"{DEFAULT_INTERVAL}: with folding, at most 20 statements a "
                            "second per process)")
    serve.add_argument("--max-staleness", type=_seconds, default=2.0, metavar="SECONDS",
                       help="answer 503 when the cache has not refreshed for this long "
                            "(default 2)")
    serve.add_argument("--replica-url", type=_url, default=None,
                       help="a PostgreSQL streaming replica to read cache refreshes from")
    serve.add_argument("--no-cache", action="store_true",
                       help="query the database for every request instead of caching")
    serve.add_argument("--max-in-flight", type=_positive, default=64,
                       help="sync requests handled at once per process; more get 503 at "
                            "once, from the HTTP protocol before the app or the body "
                            "(default 64)")

    migrate = sub.add_parser("migrate", help="create or upgrade the metadata tables (alembic)")
    migrate.add_argument("--database-url", type=_url, required=True)
    migrate.add_argument("--revision", default="reality@head")
    migrate.add_argument("--downgrade", metavar="REVISION", default=None,
                         help="downgrade to REVISION instead (e.g. base)")

    fold = sub.add_parser("fold", help="fold the version log now (for a scheduled job)")
    fold.add_argument("--database-url", type=_url, required=True)

    reset = sub.add_parser("reset-epoch",
                           help="new epoch after restoring a backup: clients drop what they know")
    reset.add_argument("--database-url", type=_url, required=True)

    demo = sub.add_parser("demo", help="run the demo chat app")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument("--database-url", type=_url, default=None,
                      help="default: an SQLite file in the current directory")
    demo.add_argument("--orm", choices=["sqlalchemy", "tortoise", "peewee"], default="sqlalchemy")
    return parser


def serve_app() -> object:
    """uvicorn factory for ``reality serve`` (``--workers`` needs an import string)."""
    from .asgi import SyncASGIApp
    from .cache import VersionCache
    from .reader import DBAPIReader
    from .sync import SyncService

    url = os.environ.get(ENV_URL)
    if not url:
        raise RealityError(f"{ENV_URL} is not set; start the server with 'reality serve'")
    options = json.loads(os.environ.get(ENV_OPTIONS, "{}"))
    reader = DBAPIReader.from_url(url)
    replica = options.get("replica_url")
    # Options missing from the environment take the constructors' own defaults.
    cache_options = {name: options[option] for name, option in (
        ("interval", "refresh_interval"), ("max_staleness", "max_staleness")) if option in options}
    app_options = {"max_in_flight": options["max_in_flight"]} if "max_in_flight" in options else {}
    source = reader if options.get("no_cache") else VersionCache(
        reader, replica=DBAPIReader.from_url(replica, fold_threshold=None) if replica else None,
        **cache_options)
    return SyncASGIApp(SyncService(source, fold_interval=1.0),
                       base=os.environ.get(ENV_BASE, "/reality"), **app_options)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("reality serve needs uvicorn: pip install 'reality-sync[server]'", file=sys.stderr)
        return 2
    from .asgi import normalize_base

    base = normalize_base(args.base)
    if args.replica_url and (args.no_cache or any(
            DatabaseURL.parse(u).dialect != "postgresql"
            for u in (args.replica_url, args.database_url))):
        print("reality serve: --replica-url needs PostgreSQL for both URLs and the cache "
              "(not --no-cache)", file=sys.stderr)
        return 2
    if args.max_staleness <= args.refresh_interval:
        print("reality serve: --max-staleness must be longer than --refresh-interval",
              file=sys.stderr)
        return 2
    os.environ[ENV_URL] = args.database_url
    os.environ[ENV_BASE] = args.base
    # The factory runs in each worker process: the options travel in the environment.
    os.environ[ENV_OPTIONS] = json.dumps({
        "no_cache": args.no_cache, "refresh_interval": args.refresh_interval,
        "max_staleness": args.max_staleness, "max_in_flight": args.max_in_flight,
        "replica_url": args.replica_url})
    print(f"reality: serving {base}/sync on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run("reality_core.cli:serve_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", http=http_protocol())
    return 0


def _migrate(args: argparse.Namespace) -> int:
    try:
        from reality_sqlalchemy.migrate import downgrade, upgrade
    except ImportError as exc:
        print(f"reality migrate needs alembic and SQLAlchemy: pip install "
              f"'reality-sync[sqlalchemy]' ({exc})", file=sys.stderr)
        return 2
    if args.downgrade is not None:
        downgrade(args.database_url, args.downgrade)
        print(f"reality: downgraded to {args.downgrade}", file=sys.stderr)
    else:
        upgrade(args.database_url, args.revision)
        print(f"reality: upgraded to {args.revision}", file=sys.stderr)
    return 0


def _existing_store(raw: str) -> DatabaseURL:
    """The URL of a store that must exist already: an SQLite path that does not is an
    error here, not a new empty file."""
    from pathlib import Path

    from .errors import StoreError

    url = DatabaseURL.parse(raw)
    if url.dialect == "sqlite" and (not url.database or not Path(url.database).exists()):
        raise StoreError(f"no SQLite database at {url.database or ':memory:'!r}")
    return url


def _fold(args: argparse.Namespace) -> int:
    from .reader import DBAPIReader

    reader = DBAPIReader.from_url(_existing_store(args.database_url), fold_threshold=None)
    try:
        moved = reader.fold()
    finally:
        reader.close()
    print(f"reality: folded {moved} log row(s)", file=sys.stderr)
    return 0


def _reset_epoch(args: argparse.Namespace) -> int:
    from .errors import StoreError
    from .store import reset_epoch_statement

    url = _existing_store(args.database_url)
    try:
        conn = url.dbapi_connect()
    except Exception as exc:
        raise StoreError(f"cannot connect: {exc}") from exc
    try:
        cur = conn.cursor()
        try:
            cur.execute(*reset_epoch_statement(url.paramstyle))
        except Exception as exc:
            raise StoreError(
                f"cannot reset the epoch ({exc}); create the tables first (reality migrate)"
            ) from exc
        changed = cur.rowcount
        conn.commit()
    finally:
        conn.close()
    if changed != 1:
        raise StoreError("no epoch row to reset: create the tables first (reality migrate)")
    print("reality: new epoch set; clients will drop what they know", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(host=args.host, port=args.port, database_url=args.database_url, orm=args.orm)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"serve": _serve, "migrate": _migrate, "fold": _fold,
                "reset-epoch": _reset_epoch, "demo": _demo}
    try:
        return handlers[args.command](args)
    except RealityError as exc:
        print(f"reality {args.command}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
