"""A throwaway PostgreSQL server for the tests of the search on a database server.

``postgres_server`` (one per test session) runs ``initdb`` and ``pg_ctl`` of PostgreSQL
(``$FASTMLP_PG_BIN``, default Debian's ``/usr/lib/postgresql/15/bin``) in a new folder
under the system's temporary folder, listening only on a unix socket in that folder
(no TCP port, so nothing else on the machine can reach it or clash with it). Run as
root, the server runs as the ``postgres`` user (PostgreSQL refuses root), which owns the
folder. ``postgres_url`` creates a fresh database in it for one test and gives its
SQLAlchemy URL for Optuna (``postgresql+psycopg://...``); the server is stopped and its
folder removed at the end of the session.

Without ``initdb`` the tests that use it skip, unless ``FASTMLP_REQUIRE_POSTGRES=1``
(``.ci/run`` sets it): then they fail, so that CI cannot pass without the server.

Use it from a test module with ``from _postgres import postgres_server, postgres_url``.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("FASTMLP_PG_BIN", "/usr/lib/postgresql/15/bin"))
PORT = 5432  # the socket's name only: the server listens on no TCP port
SUPERUSER = "postgres"
_databases = itertools.count()


def _as_server_user() -> list[str]:
    """The command prefix that runs a program as the server's user (none unless we are root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root, and runuser (util-linux) is missing to run PostgreSQL as 'postgres'",
                    pytrace=False)
    return [runuser, "-u", SUPERUSER, "--"]


def _run(command: list, what: str, log: Path | None = None) -> None:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        if log is not None and log.is_file():
            detail += "\n" + log.read_text(errors="replace")[-2000:]
        pytest.fail(f"{what} failed (exit {result.returncode}): {detail}", pytrace=False)


def _missing_server() -> None:
    message = f"PostgreSQL's initdb not found in {PG_BIN} (set FASTMLP_PG_BIN to the folder holding it)"
    if os.environ.get("FASTMLP_REQUIRE_POSTGRES") == "1":
        pytest.fail(message + " (FASTMLP_REQUIRE_POSTGRES=1: the server is required)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server():
    """A running throwaway server: yields the folder of its unix socket (its data folder is inside)."""
    if not (PG_BIN / "initdb").is_file():
        _missing_server()
    pytest.importorskip("psycopg")
    as_user = _as_server_user()
    # Not under pytest's tmp_path: that is private to root, and the server runs as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="fastmlp-pg-"))
    data, log = root / "data", root / "server.log"
    if as_user:
        shutil.chown(root, user=SUPERUSER, group=SUPERUSER)
    try:
        _run([*as_user, PG_BIN / "initdb", "-D", data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
              "--no-sync", "--no-instructions"], "initdb")
        options = f"-k {root} -c listen_addresses='' -p {PORT} -c fsync=off"
        _run([*as_user, PG_BIN / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"],
             "pg_ctl start", log)
        try:
            yield root
        finally:
            subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The SQLAlchemy URL of a new, empty database on the throwaway server (one per test)."""
    name = f"fastmlp_test_{os.getpid()}_{next(_databases)}"
    _run([*_as_server_user(), PG_BIN / "createdb", "-h", postgres_server, "-p", PORT, "-U", SUPERUSER, name],
         f"createdb {name}")
    return f"postgresql+psycopg://{SUPERUSER}@/{name}?host={postgres_server}&port={PORT}"
