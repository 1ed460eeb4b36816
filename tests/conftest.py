"""Shared pytest fixtures. Database provisioning lives in tests/dbs.py (DESIGN.md §9)."""

from tests.dbs import (  # noqa: F401  (fixtures and hook, registered by being imported here)
    mysql_url,
    pg_server_url,
    pg_url,
    pytest_terminal_summary,
    sqlite_url,
)
