"""A real PostgreSQL server for the session (Debian's binaries, a temp folder, a free port), and a fresh
database per test on it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from vr_assets.execution.pg_server import PgServer, start_temp_server

_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_temp_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """`postgresql://…/vr_tN`: an empty database of its own, so no test sees another's runs or locks."""
    import psycopg2

    name = f"vr_t{next(_db_numbers)}"
    conn = psycopg2.connect(pg_server.admin_url())
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return pg_server.url.rsplit("/", 1)[0] + "/" + name
