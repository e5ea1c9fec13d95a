"""Throwaway servers for many workers: PostgreSQL and an MLflow tracking server.

``mlscale servers up`` starts, on 127.0.0.1 only, a PostgreSQL cluster made with Debian's
``initdb`` under a folder of the checkout (``servers/``), and an ``mlflow server`` that
keeps runs and models in that PostgreSQL and artifacts in a local folder, which it proxies
(workers need no shared filesystem). ``down`` stops both by PID and keeps the data; ``up``
again reuses them. PostgreSQL refuses to run as root, so as root it runs as ``postgres``.

>>> servers = up(Path("servers"))                     # doctest: +SKIP
>>> servers.optuna_storage, servers.tracking_uri      # doctest: +SKIP
('postgresql://mlscale:...@127.0.0.1:41234/optuna', 'http://127.0.0.1:41235')
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from mlscale.errors import MlscaleError

__all__ = ["Servers", "default_folder", "down", "status", "up"]

USER = "mlscale"
DATABASES = ("optuna", "mlflow")
STATE = "servers.json"
START_TIMEOUT_S = 90.0


@dataclass
class Servers:
    """Where the two servers listen and whether they run."""

    folder: str
    postgres_port: int
    postgres_pid: int | None
    mlflow_port: int
    mlflow_pid: int | None
    password: str

    @property
    def optuna_storage(self) -> str:
        return self._database_url("optuna")

    @property
    def mlflow_backend(self) -> str:
        return self._database_url("mlflow")

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def _database_url(self, name: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.postgres_port}/{name}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"optuna_storage": self.optuna_storage,
                               "tracking_uri": self.tracking_uri,
                               "postgres_running": _alive(self.postgres_pid),
                               "mlflow_running": _mlflow_alive(self.mlflow_pid)}


def default_folder() -> Path:
    """``servers/`` in the checkout (git-ignored), else in the working directory."""
    checkout = Path(__file__).resolve().parents[1]
    return (checkout if (checkout / "mlflow.yaml").is_file() else Path.cwd()) / "servers"


def _postgres_bin() -> Path:
    """The folder of Debian's PostgreSQL programs (the newest installed), else PATH's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise MlscaleError("PostgreSQL is not installed: apt-get install postgresql "
                           "(or `make system-deps`)")
    return Path(initdb).parent


def _as_postgres_user() -> list[str]:
    """A command prefix that runs PostgreSQL's programs as a user they accept."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise MlscaleError("running as root needs runuser to start PostgreSQL as 'postgres'")
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (PostgreSQL as 'postgres')
        return True
    return True


def _mlflow_alive(pid: int | None) -> bool:
    """Whether ``pid`` still is the recorded mlflow server (not a process that reused it)."""
    if not _alive(pid):
        return False
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc: trust the PID
        return True


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise MlscaleError(f"{what} failed: {last[-1] if last else result.returncode}")


def _load(folder: Path) -> Servers | None:
    path = folder / STATE
    if not path.is_file():
        return None
    return Servers(**json.loads(path.read_text()))


def _save(servers: Servers) -> None:
    path = Path(servers.folder) / STATE
    path.write_text(json.dumps(asdict(servers), indent=2))
    path.chmod(0o600)  # it holds the database password


def _init_cluster(folder: Path, password: str) -> None:
    """``initdb`` a cluster in folder/postgres/data owned by the user that runs it."""
    home = folder / "postgres"
    home.mkdir(parents=True, exist_ok=True)
    prefix = _as_postgres_user()
    if prefix:
        shutil.chown(home, "postgres", "postgres")
        check = subprocess.run([*prefix, "test", "-w", str(home)])
        if check.returncode != 0:
            raise MlscaleError(f"user postgres cannot reach {home}: choose a folder whose "
                               "parents others may enter (--dir)")
    secret = home / "pwfile"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    if prefix:
        shutil.chown(secret, "postgres", "postgres")
    try:
        _run([*prefix, str(_postgres_bin() / "initdb"), "-D", str(home / "data"), "-U", USER,
              f"--pwfile={secret}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"],
             "initdb")
    finally:
        secret.unlink()


def _postmaster_pid(folder: Path) -> int | None:
    pid_file = folder / "postgres" / "data" / "postmaster.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _start_postgres(servers: Servers) -> None:
    folder = Path(servers.folder)
    home = folder / "postgres"
    # Every worker and the MLflow server each hold a pool of connections: the default 100
    # runs out with a few workers (seen as "too many clients already").
    options = (f"-p {servers.postgres_port} -c listen_addresses=127.0.0.1 "
               "-c unix_socket_directories='' -c max_connections=500")
    _run([*_as_postgres_user(), str(_postgres_bin() / "pg_ctl"), "-D", str(home / "data"),
          "-l", str(home / "postgres.log"), "-o", options, "-w", "-t", "60", "start"],
         f"PostgreSQL (log: {home / 'postgres.log'})")
    servers.postgres_pid = _postmaster_pid(folder)


def _create_databases(servers: Servers) -> None:
    """The two databases, and Optuna's tables (so workers starting at once find them)."""
    import psycopg

    url = servers._database_url("postgres")
    with psycopg.connect(url, autocommit=True) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')
    import optuna

    optuna.storages.RDBStorage(servers.optuna_storage)


def _start_mlflow(servers: Servers, workers: int) -> None:
    folder = Path(servers.folder) / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               servers.mlflow_backend, "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(servers.mlflow_port),
               "--workers", str(workers),
               # open keep-alive connections would otherwise hold up a stop indefinitely
               "--uvicorn-opts", "--timeout-graceful-shutdown 3"]
    # No job runner: its task consumers would take cores the workers need.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "mlflow.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    servers.mlflow_pid = process.pid
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MlscaleError(f"mlflow server exited with status {process.returncode} "
                               f"(log: {folder / 'mlflow.log'})")
        if _healthy(servers.tracking_uri):
            return
        time.sleep(0.3)
    _stop_group(process.pid)
    raise MlscaleError(f"mlflow server did not answer within {START_TIMEOUT_S:g} s "
                       f"(log: {folder / 'mlflow.log'})")


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _stop_group(pid: int | None, timeout: float = 10.0) -> None:
    """Stop the process group ``pid`` leads (mlflow server and its uvicorn): SIGTERM, then
    SIGKILL for whatever still runs after ``timeout`` seconds."""
    if not _alive(pid):
        return
    assert pid is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.1)


def up(folder: Path | None = None, mlflow_workers: int = 2) -> Servers:
    """Start whatever of the two servers is not running; harmless when both are."""
    from filelock import FileLock

    folder = (folder or default_folder()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock", timeout=120):
        servers = _load(folder)
        if servers is None:
            servers = Servers(str(folder), _free_port(), None, _free_port(), None,
                              secrets.token_urlsafe(18))
            _init_cluster(folder, servers.password)
        if not _alive(_postmaster_pid(folder)):
            if _port_taken(servers.postgres_port):
                servers.postgres_port = _free_port()
            _start_postgres(servers)
        servers.postgres_pid = _postmaster_pid(folder)
        _save(servers)
        _create_databases(servers)
        if not (_mlflow_alive(servers.mlflow_pid) and _healthy(servers.tracking_uri)):
            if _mlflow_alive(servers.mlflow_pid):
                _stop_group(servers.mlflow_pid)
            if _port_taken(servers.mlflow_port):
                servers.mlflow_port = _free_port()
            _start_mlflow(servers, mlflow_workers)
        _save(servers)
        return servers


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def down(folder: Path | None = None) -> Servers | None:
    """Stop both servers by PID (PostgreSQL with a fast shutdown); the data stays."""
    folder = (folder or default_folder()).resolve()
    servers = _load(folder)
    if servers is None:
        return None
    if _mlflow_alive(servers.mlflow_pid):
        _stop_group(servers.mlflow_pid)
    pid = _postmaster_pid(folder)
    if _alive(pid):
        assert pid is not None
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    servers.mlflow_pid = servers.postgres_pid = None
    _save(servers)
    return servers


def status(folder: Path | None = None) -> Servers | None:
    """The servers recorded in the folder, with their PIDs where they still run."""
    folder = (folder or default_folder()).resolve()
    servers = _load(folder)
    if servers is not None:
        servers.postgres_pid = _postmaster_pid(folder) if _alive(
            _postmaster_pid(folder)) else None
        servers.mlflow_pid = servers.mlflow_pid if _mlflow_alive(servers.mlflow_pid) else None
    return servers
