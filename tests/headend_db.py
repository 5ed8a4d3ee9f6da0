"""Fixtures for the head-end database tests: one throw-away PostgreSQL cluster per session
(never the machine's own server), a fresh database per test, and SQLite files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.pg import PgCluster, find_bindir

def _have_psycopg() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


needs_pg = pytest.mark.skipif(find_bindir() is None or not _have_psycopg(),
                              reason="initdb or psycopg not found (make test installs both)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if find_bindir() is None or not _have_psycopg():
        pytest.skip("initdb or psycopg not found (make test installs both)")
    c = PgCluster().start()
    try:
        yield c
    finally:
        c.close()


def fresh_pg_db(cluster: PgCluster) -> str:
    """A new empty database on the cluster; its DSN."""
    import psycopg
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.dsn.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'headend.db'}"
    return fresh_pg_db(request.getfixturevalue("pg_cluster"))
