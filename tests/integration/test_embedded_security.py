"""The embedded PostgreSQL is locked down: nobody connects without its generated password.

Issue 13, item 2: scram-sha-256 for every connection (socket and 127.0.0.1, replication too), the password in a
0600 file, the socket and its directory 0700, the data dir 0700 and bankflow's files 0600; a second local OS
user cannot connect without the password; `status` tells how to reach the server without printing the password.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bankflow.errors import ServiceError
from bankflow.source.embedded import CONFIG_FILE, LOCK_FILE, PASSWORD_FILE, STATE_FILE, EmbeddedPostgres

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "pipelines" / "banking.yaml")
NOBODY = 65534
NOT_ALLOWED = ("no password supplied", "password authentication failed", "Permission denied")


@pytest.fixture(autouse=True)
def _no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """libpq must not find a password anywhere but where a test puts it."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGUSER", "PGHOST", "PGPORT", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _connect(pg: EmbeddedPostgres, host: str, **extra: object) -> object:
    import psycopg2

    return psycopg2.connect(host=host, port=pg.port, user="postgres", dbname="postgres", connect_timeout=10,
                            passfile=os.devnull, **extra)


@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_no_password_is_refused(pg_server: EmbeddedPostgres, via: str) -> None:
    import psycopg2

    host = pg_server.host if via == "tcp" else str(pg_server.socket_dir)
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        _connect(pg_server, host)


@pytest.mark.parametrize("via", ["tcp", "socket"])
def test_wrong_password_is_refused(pg_server: EmbeddedPostgres, via: str) -> None:
    import psycopg2

    host = pg_server.host if via == "tcp" else str(pg_server.socket_dir)
    with pytest.raises(psycopg2.OperationalError, match='password authentication failed for user "postgres"'):
        _connect(pg_server, host, password="not-" + pg_server.password)
    conn = _connect(pg_server, host, password=pg_server.password)  # and the right one is accepted
    conn.close()  # type: ignore[attr-defined]


def test_replication_connection_needs_the_password(pg_server: EmbeddedPostgres) -> None:
    import psycopg2
    import psycopg2.extras

    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        _connect(pg_server, pg_server.host, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    conn = psycopg2.connect(**pg_server.connect_kwargs(),
                            connection_factory=psycopg2.extras.LogicalReplicationConnection)
    conn.close()


def test_server_settings_and_hba(pg_server: EmbeddedPostgres) -> None:
    assert pg_server.execute("SHOW password_encryption") == [("scram-sha-256",)]
    assert pg_server.execute("SHOW unix_socket_permissions") == [("0700",)]
    rules = pg_server.execute("SELECT type, database, user_name, address, auth_method, error "
                              "FROM pg_hba_file_rules ORDER BY rule_number")
    assert rules == [("local", ["all"], ["all"], None, "scram-sha-256", None),
                     ("host", ["all"], ["all"], "127.0.0.1", "scram-sha-256", None),
                     ("local", ["replication"], ["all"], None, "scram-sha-256", None),
                     ("host", ["replication"], ["all"], "127.0.0.1", "scram-sha-256", None)]
    # the superuser's password is stored as a SCRAM verifier
    assert pg_server.execute("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'postgres'") == [
        ("SCRAM-SHA-256$",)]


def test_password_file_and_directory_modes(pg_server: EmbeddedPostgres) -> None:
    password_file = pg_server.data_dir / PASSWORD_FILE
    assert password_file == pg_server.password_path
    assert _mode(password_file) == 0o600
    assert password_file.stat().st_uid == os.geteuid()  # bankflow's, not the server user's
    assert len(pg_server.password) >= 24
    # a libpq password file: PGPASSFILE=... psql works with it
    assert password_file.read_text().splitlines()[0].startswith("127.0.0.1:*:*:postgres:")
    assert _mode(pg_server.data_dir) == 0o700
    for name in (STATE_FILE, LOCK_FILE):
        assert _mode(pg_server.data_dir / name) == 0o600, name
    server_uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    cluster = pg_server.cluster_dir
    assert _mode(cluster) == 0o700 and cluster.stat().st_uid == server_uid
    for name in (CONFIG_FILE, "pg_hba.conf", "postgresql.conf"):
        assert _mode(cluster / name) == 0o600, name
        assert (cluster / name).stat().st_uid == server_uid, name  # the server reads them
    socket_dir = pg_server.socket_dir
    assert _mode(socket_dir) == 0o700 and socket_dir.stat().st_uid == server_uid
    socket = socket_dir / f".s.PGSQL.{pg_server.port}"
    assert stat.S_ISSOCK(socket.stat().st_mode) and _mode(socket) == 0o700
    assert not list(cluster.parent.glob(".bankflow-initdb-*")), "initdb's password file must be removed"


def _as_other_user(uid: int) -> list[str] | None:
    """A command prefix running as another local OS user; None when there is no way to switch."""
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "-u", f"#{uid}", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n", "-u", f"#{uid}"]
    return None


def _psql(pg: EmbeddedPostgres, prefix: list[str], host: str, **env: str) -> subprocess.CompletedProcess[str]:
    args = [*prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()), str(pg.bin_dir() / "psql"), "-X", "-w",
            "-h", host, "-p", str(pg.port), "-U", "postgres", "-d", "postgres", "-At", "-c", "SELECT 42"]
    return subprocess.run(args, cwd="/", capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("uid", [NOBODY, 65533], ids=["nobody", "uid65533"])
def test_another_local_user_cannot_connect_without_the_password(pg_server: EmbeddedPostgres, uid: int) -> None:
    """As root the server itself runs as nobody: even that user needs the password, on TCP and on the socket;
    any other user cannot even reach the socket. Neither can read the password file."""
    prefix = _as_other_user(uid)
    if prefix is None:
        pytest.skip("not root, and no passwordless sudo to run a client as another local user")
    for host in (pg_server.host, str(pg_server.socket_dir)):
        proc = _psql(pg_server, prefix, host, HOME="/nonexistent")
        assert proc.returncode != 0 and "42" not in proc.stdout, (host, proc.stdout, proc.stderr)
        assert any(reason in proc.stderr for reason in NOT_ALLOWED), (host, proc.stderr)
    read = subprocess.run([*prefix, "cat", str(pg_server.password_path)], cwd="/", capture_output=True, text=True)
    assert read.returncode != 0 and pg_server.password not in read.stdout
    if os.geteuid() != 0:
        return
    # the same user with the password gets in over TCP (the server is reachable; only the password was missing)
    copy = Path("/tmp") / f"bankflow-test-pgpass-{uid}-{os.getpid()}"
    copy.write_text(pg_server.password_path.read_text())
    os.chmod(copy, 0o600)
    os.chown(copy, uid, uid)
    try:
        proc = _psql(pg_server, prefix, pg_server.host, HOME="/nonexistent", PGPASSFILE=str(copy))
        assert proc.returncode == 0 and proc.stdout.strip() == "42", proc.stderr
    finally:
        copy.unlink()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pg")
    try:
        yield pg
    finally:
        pg.destroy()


def test_cluster_from_an_earlier_bankflow_is_refused(own_server: EmbeddedPostgres) -> None:
    """A cluster without a password file (made with trust auth by an earlier version) is refused in one line."""
    own_server.start()
    own_server.stop()
    own_server.password_path.unlink()  # what an earlier bankflow left: a cluster and no password
    with pytest.raises(ServiceError) as excinfo:
        EmbeddedPostgres(own_server.data_dir).start()
    message = str(excinfo.value)
    assert "\n" not in message
    assert "earlier bankflow without a password" in message and f"delete {own_server.data_dir} " in message
    assert not own_server.is_running()
    with pytest.raises(ServiceError, match="earlier bankflow without a password"):
        own_server.connect_kwargs()  # what `status` or `down --drop-slot` would try


def test_no_secret_in_state_files_or_errors(own_server: EmbeddedPostgres, pg_server: EmbeddedPostgres) -> None:
    own_server.start()
    password = own_server.password
    own_server.execute("SELECT 1")
    own_server.stop()
    clash = EmbeddedPostgres(own_server.data_dir, port=pg_server.port)  # port taken: start fails, log tail shown
    with pytest.raises(ServiceError, match="did not start") as excinfo:
        clash.start(timeout=20)
    assert password not in str(excinfo.value) and password not in repr(clash)
    with pytest.raises(ServiceError) as missing:
        EmbeddedPostgres(own_server.data_dir / "never-started").connect_kwargs()
    assert "start()" in str(missing.value)
    scanned = 0
    for root in {own_server.data_dir, own_server.cluster_dir.parent, own_server.socket_dir}:
        for path in root.rglob("*"):
            if path.is_file() and path != own_server.password_path:
                assert password.encode() not in path.read_bytes(), path
                scanned += 1
    assert scanned > 100  # the whole cluster, its log, bankflow's state


def test_status_tells_how_to_connect_and_down_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from bankflow.cli import main
    from bankflow.source import source_connect_kwargs
    from bankflow.spec.loader import load_spec

    state_dir = tmp_path / "state"
    monkeypatch.setenv("BANKFLOW_STATE_DIR", str(state_dir))
    resolved = load_spec(SPEC, env="local")
    pg = EmbeddedPostgres(resolved.state_dir / "postgres")
    try:
        source_connect_kwargs(resolved, start=True)  # starts the embedded server, creates the database
        assert _mode(resolved.state_dir) == 0o700
        capsys.readouterr()
        main(["status", SPEC])
        out = capsys.readouterr().out
        assert pg.password not in out
        line = next(x for x in out.splitlines() if x.strip().startswith("connect"))
        words = shlex.split(line.split("connect", 1)[1])
        assert words[0] == f"PGPASSFILE={pg.password_path}" and words[1] == "psql", line
        assert f"-p {pg.port}" in line and "-U postgres" in line and f"-d {resolved.spec.source.database}" in line
        # the line works as printed (psql from the wheel: it need not be on PATH)
        proc = subprocess.run(["env", "-i", words[0], str(pg.bin_dir() / "psql"), *words[2:], "-X", "-w", "-At",
                               "-c", "SELECT current_user"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout.strip() == "postgres", proc.stderr
        main(["status", SPEC, "--json"])
        document = json.loads(capsys.readouterr().out)
        assert pg.password not in json.dumps(document)
        assert document["source"]["up"] is True
        assert document["source"]["connection"] == {
            "host": "127.0.0.1", "port": pg.port, "user": "postgres", "database": resolved.spec.source.database,
            "socket_dir": str(pg.socket_dir), "password_file": str(pg.password_path)}
        assert main(["down", SPEC]) == 0
        assert not pg.is_running()
        capsys.readouterr()
        main(["status", SPEC, "--json"])
        down = json.loads(capsys.readouterr().out)["source"]
        assert down["up"] is False and down["connection"]["password_file"] == str(pg.password_path)
    finally:
        pg.destroy()


def test_a_hostile_path_cannot_add_a_setting_to_postgresql_conf(tmp_path: Path) -> None:
    """A quote in the directory bankflow runs the server under stays inside its string value."""
    from bankflow.source.embedded import conf_string

    assert conf_string("/a/it's\\here") == "'/a/it''s\\\\here'"
    with pytest.raises(ServiceError, match="line break"):
        conf_string("/a\nwork_mem = '64MB'")
    hostile = tmp_path / "x' work_mem = '77MB"
    pg = EmbeddedPostgres(hostile / "pg").start()
    try:
        assert pg.execute("SHOW work_mem")[0][0] != "77MB"
        assert pg.execute("SHOW wal_level")[0][0] == "logical"
    finally:
        pg.destroy()  # a root run keeps the cluster under /var/tmp: leave nothing behind


def test_the_reader_role_reads_everything_and_can_change_nothing(pg_server: EmbeddedPostgres) -> None:
    """What `verify` connects as: even a query the parser guard missed is refused by the server itself."""
    import psycopg2

    pg_server.execute("CREATE TABLE IF NOT EXISTS reader_probe (id int PRIMARY KEY)")
    pg_server.execute("INSERT INTO reader_probe VALUES (1) ON CONFLICT DO NOTHING")
    pg_server.execute("SELECT pg_create_logical_replication_slot('reader_probe_slot', 'pgoutput') "
                      "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'reader_probe_slot')")
    try:
        kwargs = pg_server.ensure_reader()
        assert kwargs["user"] == "bankflow_reader" and kwargs["password"] != pg_server.password
        assert pg_server.ensure_reader()["password"] == kwargs["password"]  # created once, then reused
        refused = {
            "DELETE FROM reader_probe": "read-only transaction",
            "SELECT pg_drop_replication_slot('reader_probe_slot')": "permission denied",
            "SELECT pg_read_file('/etc/passwd')": "permission denied",
            "CREATE TABLE reader_made (id int)": "read-only transaction",
        }
        for sql, reason in refused.items():
            conn = psycopg2.connect(**kwargs)
            try:
                with conn.cursor() as cur, pytest.raises(psycopg2.Error, match=reason):
                    cur.execute(sql)
            finally:
                conn.close()
        conn = psycopg2.connect(**kwargs)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM reader_probe")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()
        assert pg_server.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'reader_probe_slot'"
                                 ) == [(1,)]
    finally:
        pg_server.execute("SELECT pg_drop_replication_slot('reader_probe_slot')")
        pg_server.execute("DROP TABLE reader_probe")
