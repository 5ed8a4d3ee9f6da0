"""Fixtures for the head-end database tests: one throw-away PostgreSQL cluster per session
(never the machine's own server), a fresh database per test, and SQLite files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.pg import PgCluster, find_bindir

needs_pg = pytest.mark.skipif(find_bindir() is None,
                              reason="initdb not found (make test installs postgresql)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if find_bindir() is None:
        pytest.skip("initdb not found (make test installs postgresql)")
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
