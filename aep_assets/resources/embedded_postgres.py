"""A PostgreSQL server the project starts by itself: the local stand-in for Experience Platform.

One server per data directory. Any process (a run, the UI, the daemon, a test) calls
`ensure_running()`; the first one creates and starts the server, the others reuse it. A file lock
makes concurrent starts safe. As root the server runs as an unprivileged user, since initdb and
pg_ctl refuse root.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from aep_assets.lib.processes import alive

log = logging.getLogger(__name__)

SUPERUSER = "aep"
DATABASE = "aep"
SEARCH_PATHS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them: "
    "Debian/Ubuntu `apt-get install -y postgresql`, macOS `brew install postgresql@16`; "
    "or put their folder on PATH / set AEP_ASSETS_PG_BIN."
)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be found, created or started."""


# Local-only server tuned for one analytical user, passed at every start (so older homes get them too).
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "synchronous_commit": "off",
    "max_parallel_workers_per_gather": "2",
    "timezone": "UTC",
    # The datasets sit in memory or on SSD: at the default 4 a small rescore over a large base is planned
    # as a scan of every event instead of index probes for its users (docs/performance.md).
    "random_page_cost": "1.1",
}


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str = SUPERUSER
    dbname: str = DATABASE

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def find_bin_dir() -> Path:
    explicit = os.environ.get("AEP_ASSETS_PG_BIN")
    candidates = [explicit] if explicit else []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    candidates.extend(SEARCH_PATHS)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise EmbeddedPostgresError(INSTALL_HINT)


def _server_user() -> str | None:
    """The unprivileged account to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EmbeddedPostgresError("running as root but no 'postgres' or 'nobody' user exists to run PostgreSQL")


def _processes_in(folder: Path) -> list[int]:
    """Pids of the processes whose working directory is `folder` (empty where /proc is missing)."""
    found, folder = [], folder.resolve()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(entry / "cwd")) == folder:
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgres:
    """The server in `root` (e.g. `$AEP_ASSETS_HOME/postgres`): data in `data/`, log in `server.log`.

    As root, the server runs as an unprivileged user that must reach those files. When `root` lies
    under a folder it cannot traverse (a `mktemp -d` clone, a home folder with mode 700), the data
    and log go to a folder of their own under /var/tmp instead, recorded in `root/server_location`.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock_file = self.root / "server.lock"
        self.port_file = self.root / "port"
        self.location_file = self.root / "server_location"

    @property
    def server_dir(self) -> Path:
        """Where the server's own files (data, log) are."""
        if self.location_file.exists():
            return Path(self.location_file.read_text().strip())
        return self.root

    @property
    def data_dir(self) -> Path:
        return self.server_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.server_dir / "server.log"

    # --- public -------------------------------------------------------------------------------
    def ensure_running(self, database: str = DATABASE) -> ServerAddress:
        """Start the server unless it already answers; return where `database` (created if new) is."""
        address = self.answering_address()
        if address is None:
            address = self._start()
        address = ServerAddress(address.host, address.port, dbname=database)
        self._create_database(address)
        return address

    def _start(self) -> ServerAddress:
        with self._lock():
            address = self.answering_address()
            if address:
                return address
            bin_dir = find_bin_dir()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir)
            self._stop_stale(bin_dir)
            port = _free_port()
            self._run(bin_dir, "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                      "-o", " ".join([f"-p {port} -k ''", *(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())]),
                      "start")
            self.port_file.write_text(str(port))
            return ServerAddress("127.0.0.1", port)

    def stop(self) -> bool:
        """Stop the server if it runs; True when it was running."""
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        bin_dir = find_bin_dir()
        with self._lock():
            result = self._run(bin_dir, "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
            return result.returncode == 0

    def remove(self) -> None:
        """Stop the server and delete its files, the folder under /var/tmp included when it was relocated
        there: nothing of this home's platform stays on the machine."""
        self.stop()
        if self.location_file.exists():
            shutil.rmtree(self.server_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def answering_address(self) -> ServerAddress | None:
        """Where the server listens when it runs and accepts connections, else None."""
        if not self.port_file.exists() or not (self.data_dir / "postmaster.pid").exists():
            return None
        try:
            port = int(self.port_file.read_text().strip())
        except ValueError:
            return None
        address = ServerAddress("127.0.0.1", port)
        try:  # the maintenance database: the project's may not be created yet by the starting process
            with psycopg.connect(f"host={address.host} port={port} user={SUPERUSER} dbname=postgres",
                                 connect_timeout=3):
                return address
        except psycopg.OperationalError:
            return None

    # --- internals ----------------------------------------------------------------------------
    @contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, bin_dir: Path, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        user = _server_user()
        result = subprocess.run(
            [str(bin_dir / tool), *args],
            user=user,
            capture_output=True,
            text=True,
            cwd="/",
            env={**os.environ, "LC_ALL": "C"},
        )
        if check and result.returncode != 0:
            log_tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"{tool} failed in {self.root} (exit {result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log_tail}"
            )
        return result

    def _initdb(self, bin_dir: Path) -> None:
        user = _server_user()
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made data dir from an interrupted initdb
        if user:
            self._prepare_server_dir(user)
        else:
            self.data_dir.mkdir(parents=True)
        self._run(bin_dir, "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                  "--no-locale", "-E", "UTF8", "--no-sync")

    def _prepare_server_dir(self, user: str) -> None:
        """An empty data folder that `user` owns, in a folder it can write: `root` if it can reach it,
        else the folder recorded by an earlier start, else a new one under /var/tmp (kept across
        reboots, unlike /tmp), recorded for later starts."""
        pw = pwd.getpwnam(user)

        def writable(folder: Path) -> bool:
            return subprocess.run(["test", "-w", str(folder)], user=user).returncode == 0

        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if writable(self.root):
            self.location_file.unlink(missing_ok=True)
        elif not (self.location_file.exists() and self.server_dir.is_dir() and writable(self.server_dir)):
            parent = Path(os.environ.get("AEP_ASSETS_SERVER_TMP", "/var/tmp")) / "aep_assets-postgres"
            parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            server_dir = Path(tempfile.mkdtemp(prefix="server-", dir=parent))
            os.chown(server_dir, pw.pw_uid, pw.pw_gid)
            if not writable(server_dir):
                raise EmbeddedPostgresError(
                    f"the server user {user!r} can reach neither {self.root} nor {server_dir}: every parent "
                    "folder must be searchable by it (chmod o+x), or set AEP_ASSETS_HOME elsewhere")
            self.location_file.write_text(str(server_dir))
            log.warning("the server user %r cannot reach %s: PostgreSQL's data and log are in %s instead",
                        user, self.root, server_dir)
        self.data_dir.mkdir()
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)

    def _stop_stale(self, bin_dir: Path) -> None:
        """A server left running on a port we lost track of, or a pid file left by a crash."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run(bin_dir, "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False)
            self._end_orphans()

    def _end_orphans(self, deadline_seconds: float = 30.0) -> None:
        """Server processes left behind by a killed postmaster, ended before a new start.

        A backend busy in a query when its postmaster died keeps running until the query ends (minutes,
        for a feature CTAS) and keeps the old shared memory attached, so PostgreSQL refuses to start
        ("pre-existing shared memory block is still in use") and tells to terminate them. They can
        no longer serve anyone. Found by their working directory, the data directory (Linux /proc).
        """
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists() or alive(int(pid_file.read_text().split()[0])):
            return
        orphans = _processes_in(self.data_dir)
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + deadline_seconds
        while any(alive(pid) for pid in orphans):
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"processes {orphans} of a killed server in {self.data_dir} "
                                            f"did not end within {deadline_seconds:.0f} s")
            time.sleep(0.05)
        if orphans:
            log.warning("ended %d process(es) left by a killed server in %s", len(orphans), self.data_dir)

    @staticmethod
    def drop_database(address: ServerAddress) -> None:
        """Remove a scratch database (a fake Query Service's), ending the connections still open on it."""
        with psycopg.connect(f"host={address.host} port={address.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(address.dbname)))

    @staticmethod
    def _create_database(address: ServerAddress) -> None:
        with psycopg.connect(f"host={address.host} port={address.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (address.dbname,)).fetchone():
                return
            try:
                conn.execute(f'CREATE DATABASE "{address.dbname}"')
            except psycopg.errors.UniqueViolation:
                pass  # another process created it at the same moment
            except psycopg.errors.DuplicateDatabase:
                pass



def main(argv: list[str]) -> int:
    """`python -m aep_assets.resources.embedded_postgres start|stop|status|remove` (`make stop`, `make clean`)."""
    from aep_assets.settings import assets_home

    server = EmbeddedPostgres(assets_home() / "postgres")
    command = argv[0] if argv else "status"
    if command == "start":
        print(server.ensure_running().uri)
    elif command == "stop":
        print("stopped" if server.stop() else "not running")
    elif command == "remove":
        server.remove()
        print(f"removed {server.root}")
    elif command == "status":
        address = server.answering_address()
        print(address.uri if address else "not running")
    else:
        print(f"unknown command {command!r}: start | stop | status | remove")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
