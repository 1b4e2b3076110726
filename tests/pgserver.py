"""A real PostgreSQL server for the tests: initdb and postgres from the system's packages, on
127.0.0.1 and a free port, in a temp dir that is removed at the end.

Clients get a URL without the password (as in a sweep config) and the password separately, to put
in the environment (``SWEEP_DB_PASSWORD``), so the tests go through the same path as real use.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import pytest

ROLE = "sweep"
# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project installs psycopg2.
SCHEME = "postgresql+psycopg2"
BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Optional[str]:
    """The newest /usr/lib/postgresql/N/bin (Debian, Ubuntu), else the directory of PATH's pg_ctl."""
    def version(path: str) -> tuple:
        return tuple(int(n) for n in re.findall(r"\d+", path.split("/")[-2]))

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    candidates += [os.path.dirname(os.path.realpath(on_path))] if on_path else []
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in BINARIES):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``url`` has no password, ``password`` is the ``sweep`` role's."""

    bindir: str
    root: str
    port: int
    password: str = field(repr=False)
    admin_password: str = field(repr=False)
    url: str = ""

    @classmethod
    def start(cls, bindir: str) -> "PostgresServer":
        root = tempfile.mkdtemp(prefix="sweep-pg-")
        server = cls(bindir=bindir, root=root, port=_free_port(),
                     password=secrets.token_urlsafe(16), admin_password=secrets.token_urlsafe(16))
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "data")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        # PostgreSQL refuses to run as root: as root, run it as the packages' `postgres` user.
        user = {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid, "extra_groups": []} \
            if os.geteuid() == 0 else {}
        result = subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]], cwd=self.root,
                                capture_output=True, text=True, timeout=120, **user)
        if result.returncode:
            log = os.path.join(self.root, "server.log")
            tail = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): "
                               f"{result.stderr.strip()}\n{tail}")
        return result

    def _init_and_start(self) -> None:
        if os.geteuid() == 0:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
        pwfile = os.path.join(self.root, "pwfile")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(self.admin_password)
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        # Password (SCRAM) authentication over TCP, as on a real shared server; no Unix socket.
        self._run("initdb", "-D", self.data_dir, "-U", "postgres", f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                  "--no-sync")
        os.remove(pwfile)
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       "unix_socket_directories = ''\nmax_connections = 200\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self._run("pg_ctl", "start", "-D", self.data_dir, "-w", "-t", "60",
                  "-l", os.path.join(self.root, "server.log"))
        admin = self._admin("postgres")
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD %s", (self.password,))
        admin.close()
        self.url = self.create_database(ROLE)

    def _admin(self, database: str):
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                      password=self.admin_password, dbname=database)
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> str:
        """A new database owned by the ``sweep`` role; its URL, without the password."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name: expected [a-z_][a-z0-9_]*, got {name!r}")
        admin = self._admin("postgres")
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        admin.close()
        return f"{SCHEME}://{ROLE}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            self._run("pg_ctl", "stop", "-D", self.data_dir, "-m", "immediate", "-w", "-t", "60")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session; skipped without the binaries, except under CI."""
    bindir = find_bindir()
    if bindir is None:
        message = ("PostgreSQL server binaries not found (initdb, pg_ctl, postgres under "
                   "/usr/lib/postgresql/*/bin or on PATH); `apt-get install postgresql`")
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install them: .ci/run does)")
        pytest.skip(message)
    server = PostgresServer.start(bindir)
    yield server
    server.stop()
