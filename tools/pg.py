"""A throw-away PostgreSQL cluster for tests and benchmarks.

    python -m tools.pg [--port P]        # runs one in the foreground until Ctrl-C

``initdb``/``pg_ctl`` from Debian's ``postgresql`` package (``make test`` installs it when
missing), in a temporary directory, listening on a free loopback port only -- never the
machine's own server. PostgreSQL refuses to run as root, so as root the cluster runs as the
``postgres`` user (or ``nobody``) from a directory under /tmp that user owns.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from tools.broker import free_port

INSTALL_HINT = "initdb not found; install PostgreSQL with: sudo apt-get install postgresql"


def find_bindir() -> Path | None:
    """Directory holding initdb, pg_ctl and postgres: PATH, then Debian's versioned dirs."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    return None


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


_LIVE: "weakref.WeakSet[PgCluster]" = weakref.WeakSet()


@atexit.register
def _reap() -> None:
    for c in list(_LIVE):
        c.stop(mode="immediate")


class PgCluster:
    """One postgres server on 127.0.0.1:port with trust auth, its data in a temp dir.

    ``stop()``/``start()`` keep the data (a database outage); ``close()`` removes it.
    """

    def __init__(self, port: int | None = None, *, fsync: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(INSTALL_HINT)
        self.bindir = bindir
        self.port = port or free_port()
        self.fsync = fsync
        self.user = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="pgcluster-", dir="/tmp"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _kw(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout: float = 60) -> None:
        r = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True,
                           text=True, timeout=timeout, cwd=self.base, **self._kw())
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stderr or r.stdout}"
                               f"\n{self.log_tail()}")

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync", "--locale=C")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> "PgCluster":
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
                f"-c max_connections=60 -c shared_buffers=64MB "
                f"-c fsync={'on' if self.fsync else 'off'}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                  "-w", "-t", "60", "start", timeout=90)
        _LIVE.add(self)
        return self

    def stop(self, mode: str = "fast") -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                      timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass

    def close(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.pg", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        cluster = PgCluster(a.port).start()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    print(cluster.dsn, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
