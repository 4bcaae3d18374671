"""A real PostgreSQL for the tests: a cluster of our own on loopback, a fresh database a test.

PostgreSQL refuses to run as root, and CI runs the tests as root: the cluster's folder then
belongs to an unprivileged user, who runs ``initdb`` and the server. The session's cluster is
made once; :class:`Cluster` also makes throwaway ones (a test that stops its server).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Who owns and runs a cluster when the tests run as root; made if the system lacks it.
TEST_USER = "ctgw-test"
_databases = itertools.count()


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server binaries: skip without them, but fail in CI."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(Path(path).parts[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        message = "PostgreSQL is not installed (apt-get install postgresql, or run .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(initdb).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _owner() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as; ``None`` when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


class Cluster:
    """A PostgreSQL cluster in a temporary folder, trusting loopback, on a free port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="ctgw-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.finished: list[str] = []  # databases of ended tests, not yet dropped
        self._owner = _owner()
        if self._owner is not None:
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        # --no-sync: the cluster is thrown away, so initdb need not fsync its files; the
        # server itself runs with fsync on, as the queue demands.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")

    def _run(self, binary: str, *args: str) -> None:
        command = [str(self.bindir / binary), *args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        # The working folder is ours: PostgreSQL fails in one its user may not enter.
        done = subprocess.run(command, cwd=self.dir, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{binary} failed: {done.stdout}{done.stderr}{tail}")

    def start(self, *settings: str) -> None:
        """Start the server; ``settings``: more ``name=value`` for it (``fsync=off``)."""
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                   f"-c unix_socket_directories={self.dir}", "-c max_connections=200",
                   *(f"-c {setting}" for setting in settings)]
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "-o", " ".join(options), "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement through psql; its output, unaligned and without headers."""
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(database), "-c", statement],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def new_database(self) -> str:
        name = f"ctgw_test_{next(_databases)}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop_finished(self) -> None:
        """Drop the databases of tests that have ended (``finished``)."""
        while self.finished:
            self.sql(f"DROP DATABASE {self.finished.pop()} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The session's PostgreSQL server, removed at the end."""
    cluster = Cluster(postgres_bin())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def postgres_url(postgres: Cluster) -> Iterator[str]:
    """The URL of a new, empty database, dropped when the next test starts (or with the cluster).

    Not at this fixture's teardown: pytest tears it down before the fixtures set up ahead of
    it, such as ``start_gateway``, so a drop there forced a still-running gateway off its store
    in the middle of its shutdown (a teardown once hung for 120 s so)."""
    postgres.drop_finished()
    name = postgres.new_database()
    yield postgres.url(name)
    postgres.finished.append(name)
