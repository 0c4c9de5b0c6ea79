"""A real PostgreSQL server for the storage tests: Debian's binaries, a temporary data directory, listening
on 127.0.0.1 only, on a free port, with password authentication for the test role. Never a mock."""

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from rm_pipeline_tests.support.dagster_dev import HOST, free_port

BINARIES = "/usr/lib/postgresql/*/bin"
ROLE = "rm_pipeline_test"
SERVER_USER = "postgres"  # initdb and postgres refuse to run as root


def server_binaries() -> Path:
    """The newest installed PostgreSQL's bin folder; the test fails (never skips) without one."""
    found = sorted(
        (Path(p).parent for p in glob.glob(f"{BINARIES}/initdb")), key=lambda p: int(p.parent.name.split(".")[0])
    )
    if not found or not (found[-1] / "pg_ctl").exists():
        pytest.fail(
            f"no PostgreSQL server binaries ({BINARIES}/initdb, pg_ctl): install Debian's `postgresql` package "
            "(`.ci/run` installs it with apt-get when it is missing)"
        )
    return found[-1]


@dataclass
class PostgresServer:
    bin: Path
    folder: Path  # data directory, socket and log, owned by the server's user
    port: int
    password: str
    run_as: list[str]  # the prefix that runs a command as the server's user (empty when not root)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def pg_ctl(self, *args: str) -> None:
        done = subprocess.run(
            [*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stderr}\n{log[-3000:]}")

    def start(self) -> None:
        options = f"-c listen_addresses={HOST} -p {self.port} -k {self.folder}"
        self.pg_ctl("start", "-w", "-l", str(self.log), "-o", options)

    def stop(self) -> None:
        self.pg_ctl("stop", "-w", "-m", "fast")

    def restart(self) -> None:
        """Stop the server and start it again on the same data directory and port."""
        self.stop()
        self.start()

    def connect(self, database: str = "postgres"):
        """A connection over TCP with the test role's password (no socket, no peer authentication)."""
        return psycopg2.connect(host=HOST, port=self.port, user=ROLE, password=self.password, dbname=database)

    def create_database(self, name: str) -> dict:
        """A new, empty database; returns dagster-postgres' `postgres_db` settings for it."""
        connection = self.connect()
        connection.autocommit = True  # CREATE DATABASE can't run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return {
            "username": ROLE,
            "password": self.password,
            "hostname": HOST,
            "port": self.port,
            "db_name": name,
            # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; dagster-postgres ships psycopg2
            "scheme": "postgresql+psycopg2",
        }


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb a temporary cluster, start it, and stop it (`pg_ctl stop -m fast`) and delete it at the end."""
    binaries = server_binaries()
    run_as = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
    # not under pytest's tmp folders: they are private to root, and the server's user must reach its own folder
    folder = Path(tempfile.mkdtemp(prefix="rm-pipeline-postgres-"))
    password = secrets.token_hex(16)
    password_file = folder / "password"
    password_file.write_text(password + "\n")
    if run_as:
        owner = pwd.getpwnam(SERVER_USER)
        for path in (folder, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(binaries, folder, free_port(), password, run_as)
    try:
        done = subprocess.run(
            [
                *run_as,
                str(binaries / "initdb"),
                "-D",
                str(server.data),
                "-U",
                ROLE,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",  # every connection, socket or TCP, needs the password
                "--encoding=UTF8",
                "--no-locale",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        password_file.unlink()
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
