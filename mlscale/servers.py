"""Throwaway servers for many workers: PostgreSQL and an MLflow tracking server.

``mlscale servers up`` starts, on 127.0.0.1 only, a PostgreSQL cluster made with Debian's
``initdb`` under a folder of the checkout (``servers/``), and an ``mlflow server`` that
keeps runs and models in that PostgreSQL and artifacts in a local folder, which it proxies
(workers need no shared filesystem). ``down`` stops both by PID and keeps the data; ``up``
again reuses them. PostgreSQL refuses to run as root, so as root it runs as ``postgres``.

A recorded PID counts only while ``/proc`` shows it still is this folder's server (the
postmaster of this data directory; an mlflow process of this folder and port), so a PID
that another program reused after a crash or a reboot, or a folder copied with its state,
is never signalled. Passwords travel in the environment, never in process arguments.

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mlscale._processes import (
    PROC,
    alive,
    all_pids,
    command_line,
    environment,
    group_members,
    has_proc,
    option_value,
    working_dir,
)
from mlscale.errors import MlscaleError

__all__ = ["Servers", "default_folder", "down", "status", "up"]

USER = "mlscale"
DATABASES = ("optuna", "mlflow")
STATE = "servers.json"
START_TIMEOUT_S = 90.0
# In the environment of every process of an mlflow server that `up` starts: "FOLDER PORT".
MARKER = "MLSCALE_SERVERS"


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
        postgres = _postmaster(Path(self.folder)) is not None
        processes = _mlflow_processes(self)
        mlflow = bool(processes)
        state = "running" if postgres and mlflow else "partly running" if postgres or mlflow \
            else "stopped"
        return asdict(self) | {"state": state, "optuna_storage": self.optuna_storage,
                               "tracking_uri": self.tracking_uri,
                               "postgres_running": postgres, "mlflow_running": mlflow,
                               # all of the MLflow server's processes (its leader's may be gone)
                               "mlflow_pids": processes,
                               "stale_lock_pid": stale_lock(Path(self.folder))}


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


def _data_dir(folder: Path) -> Path:
    return folder / "postgres" / "data"


def _lock_file(folder: Path) -> Path:
    return _data_dir(folder) / "postmaster.pid"


def _lock_lines(folder: Path) -> list[str]:
    try:
        return _lock_file(folder).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _lock_pid(folder: Path) -> int | None:
    """The PID that PostgreSQL's lock file names (a postmaster, or a stale one)."""
    lines = _lock_lines(folder)
    try:
        return int(lines[0].split()[0])
    except (ValueError, IndexError):
        return None


def _is_postmaster(pid: int, data: Path) -> bool:
    """Whether ``pid`` is a postgres process serving ``data`` (``pg_ctl`` starts
    ``postgres -D DATA``, and the postmaster runs in DATA)."""
    if not alive(pid):
        return False
    if not has_proc():  # nothing to check it against: trust the PID
        return True
    args = command_line(pid)
    if not args or Path(args[0]).name not in ("postgres", "postmaster"):
        return False
    wanted = data.resolve()
    given = option_value(args, "-D")
    if given is not None and Path(given).is_absolute() and Path(given).resolve() == wanted:
        return True
    cwd = working_dir(pid)
    return cwd is not None and cwd.resolve() == wanted


def _postmaster(folder: Path) -> int | None:
    """The PID of the PostgreSQL that runs on this folder's data, else None."""
    pid = _lock_pid(folder)
    return pid if pid and _is_postmaster(pid, _data_dir(folder)) else None


def stale_lock(folder: Path) -> int | None:
    """The PID a stale PostgreSQL lock file names: alive, but not this folder's postmaster
    (reused after a crash or a reboot, or the lock file came with a copied folder)."""
    pid = _lock_pid(folder)
    if pid and alive(pid) and not _is_postmaster(pid, _data_dir(folder)):
        return pid
    return None


def _clear_stale_lock(folder: Path, say: Callable[[str], None]) -> None:
    """Remove a stale lock file where no process still works on the data, as PostgreSQL
    itself does for a lock file whose PID is gone; else a one-line error saying what to do."""
    pid = stale_lock(folder)
    if pid is None:
        return
    lock, data = _lock_file(folder), _data_dir(folder).resolve()
    lines = _lock_lines(folder)
    copied = len(lines) > 1 and Path(lines[1]).resolve() != data
    users = [other for other in all_pids() if other != os.getpid()
             and Path((command_line(other) or [""])[0]).name == "postgres"
             and (working_dir(other) or Path("/nonexistent")).resolve() == data]
    if users or (not copied and _shared_memory_in_use(lines)):
        raise MlscaleError(f"{lock} names pid {pid}, which is not this folder's PostgreSQL, "
                           f"but postgres processes still use {data} "
                           f"({', '.join(map(str, users)) or 'its shared memory'}): stop them, "
                           "then remove the lock file")
    lock.unlink()
    say(f"removed a stale PostgreSQL lock file: {lock} named pid {pid}, which is not "
        "this folder's PostgreSQL")


def _shared_memory_in_use(lines: list[str]) -> bool:
    """Whether processes still attach the shared memory the lock file names (its 7th line
    holds the key and the id), which PostgreSQL also checks before it replaces the file."""
    try:
        shmid = lines[6].split()[1]
        table = (PROC / "sysvipc" / "shm").read_text().splitlines()[1:]
    except (IndexError, OSError):
        return False
    for row in table:
        fields = row.split()
        if len(fields) > 6 and fields[1] == shmid:
            return fields[6] != "0"
    return False


def _marker(servers: Servers) -> str:
    return f"{servers.folder} {servers.mlflow_port}"


def _is_our_mlflow(pid: int, servers: Servers) -> bool:
    """Whether ``pid`` is part of the mlflow server this folder recorded: it carries this
    folder's marker (every process `up` started: mlflow server, uvicorn and its workers), or
    it is the recorded leader and its arguments name the recorded port and this folder's
    artifacts (an mlflow server an older mlscale started)."""
    args = command_line(pid)
    if not args:
        return False
    if environment(pid).get(MARKER) == _marker(servers):
        return True
    artifacts = str(Path(servers.folder) / "mlflow" / "artifacts")
    return (pid == servers.mlflow_pid and "mlflow" in (Path(arg).name for arg in args[:3])
            and "server" in args
            and option_value(args, "--port") == str(servers.mlflow_port)
            and option_value(args, "--artifacts-destination") == artifacts)


def _mlflow_processes(servers: Servers) -> list[int]:
    """The live processes of the recorded mlflow server's process group that are this
    folder's: its leader, or what a killed leader left behind (uvicorn still serving)."""
    pgid = servers.mlflow_pid
    if not pgid:
        return []
    if not has_proc():  # nothing to check them against: trust the PID
        return [pgid] if alive(pgid) else []
    return [pid for pid in group_members(pgid) if _is_our_mlflow(pid, servers)]


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise MlscaleError(f"{what} failed: {last[-1] if last else result.returncode}")


def _load(folder: Path) -> Servers | None:
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        servers = Servers(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise MlscaleError(f"{path} is not a servers file mlscale wrote: {error}") from error
    # The folder it is in, not the one it names: a copy (cp -r) must not reach the original's.
    servers.folder = str(folder)
    return servers


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
        _run([*prefix, str(_postgres_bin() / "initdb"), "-D", str(_data_dir(folder)), "-U", USER,
              f"--pwfile={secret}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"],
             "initdb")
    finally:
        secret.unlink()


def _start_postgres(servers: Servers) -> None:
    folder = Path(servers.folder)
    home = folder / "postgres"
    # Every worker and the MLflow server each hold a pool of connections: the default 100
    # runs out with a few workers (seen as "too many clients already").
    options = (f"-p {servers.postgres_port} -c listen_addresses=127.0.0.1 "
               "-c unix_socket_directories='' -c max_connections=500")
    _run([*_as_postgres_user(), str(_postgres_bin() / "pg_ctl"), "-D", str(_data_dir(folder)),
          "-l", str(home / "postgres.log"), "-o", options, "-w", "-t", "60", "start"],
         f"PostgreSQL (log: {home / 'postgres.log'})")
    servers.postgres_pid = _postmaster(folder)


def _stop_postgres(folder: Path) -> bool:
    """PostgreSQL's "fast" shutdown (SIGINT) of this folder's postmaster, if it runs."""
    pid = _postmaster(folder)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while _is_postmaster(pid, _data_dir(folder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _create_databases(servers: Servers) -> None:
    """The two databases, and Optuna's tables (so workers starting at once find them)."""
    import psycopg

    url = servers._database_url("postgres")
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in existing:
                    connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        log = Path(servers.folder) / "postgres" / "postgres.log"
        raise MlscaleError(f"PostgreSQL at 127.0.0.1:{servers.postgres_port} refused "
                           f"mlscale: {str(error).strip()} (log: {log})") from error
    import optuna

    optuna.storages.RDBStorage(servers.optuna_storage)


def _start_mlflow(servers: Servers, workers: int) -> None:
    folder = Path(servers.folder) / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server",
               "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(servers.mlflow_port),
               "--workers", str(workers),
               # open keep-alive connections would otherwise hold up a stop indefinitely
               "--uvicorn-opts", "--timeout-graceful-shutdown 3"]
    # The store URL holds the password: in the environment (mlflow server reads
    # --backend-store-uri from it), not in arguments every local user sees. No job runner:
    # its task consumers would take cores the workers need.
    env = os.environ | {"MLFLOW_BACKEND_STORE_URI": servers.mlflow_backend,
                        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                        MARKER: _marker(servers)}
    with open(folder / "mlflow.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    servers.mlflow_pid = process.pid
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise MlscaleError(f"mlflow server exited with status {process.returncode} "
                                   f"(log: {folder / 'mlflow.log'})")
            if _healthy(servers.tracking_uri):
                return
            time.sleep(0.3)
        raise MlscaleError(f"mlflow server did not answer within {START_TIMEOUT_S:g} s "
                           f"(log: {folder / 'mlflow.log'})")
    except BaseException:
        _stop_mlflow(servers)
        servers.mlflow_pid = None
        raise


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _stop_mlflow(servers: Servers, timeout: float = 10.0) -> bool:
    """Stop this folder's mlflow server (its process group: mlflow server, uvicorn, its
    workers), process by verified process: SIGTERM, then SIGKILL for whatever still runs
    after ``timeout`` seconds. False when none of it ran."""
    processes = _mlflow_processes(servers)
    if not processes:
        _reap(servers.mlflow_pid)
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while processes and time.monotonic() < deadline:
            _reap(servers.mlflow_pid)
            processes = [pid for pid in processes if _is_our_mlflow(pid, servers)]
            time.sleep(0.1)
        if not processes:
            break
    _reap(servers.mlflow_pid)
    return True


def _reap(pid: int | None) -> None:
    """Collect ``pid``'s exit status where it is this process's child (no zombie stays)."""
    if pid:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _resolve(folder: Path | None) -> Path:
    return (folder or default_folder()).expanduser().resolve()


def _folder_error(folder: Path, error: OSError) -> MlscaleError:
    """An unusable folder (a file on the way, no permission, a full disk) as one line."""
    where = f" ({error.filename})" if error.filename else ""
    return MlscaleError(f"cannot use {folder} for the servers: {error.strerror or error}{where}")


@contextlib.contextmanager
def _folder_errors(folder: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise _folder_error(folder, error) from error


def up(folder: Path | None = None, mlflow_workers: int = 2,
       say: Callable[[str], None] | None = None) -> Servers:
    """Start whatever of the two servers is not running; harmless when both are.

    ``say`` gets one line for each thing the caller should know (a stale lock file removed,
    a URL that changed); by default it goes to stderr. When the pair cannot be completed,
    whatever this call started is stopped again.
    """
    from filelock import FileLock

    folder = _resolve(folder)
    tell = say or (lambda line: print(line, file=sys.stderr))
    with _folder_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise MlscaleError(f"cannot use {folder} for the servers: it is not writable")
        with FileLock(folder / ".lock", timeout=120):
            servers = _load(folder)
            started_postgres = False
            try:
                if servers is None:
                    servers = Servers(str(folder), _free_port(), None, _free_port(), None,
                                      secrets.token_urlsafe(18))
                    _init_cluster(folder, servers.password)
                if _postmaster(folder) is None:
                    _clear_stale_lock(folder, tell)
                    _move_if_taken(servers, "postgres_port", "MLSCALE_STORAGE", tell)
                    started_postgres = True
                    _start_postgres(servers)
                servers.postgres_pid = _postmaster(folder)
                _save(servers)
                _create_databases(servers)
                processes = _mlflow_processes(servers)
                if not (servers.mlflow_pid in processes and _healthy(servers.tracking_uri)):
                    # a dead leader's uvicorn may still hold the port: stop it, keep the URL
                    _stop_mlflow(servers)
                    _move_if_taken(servers, "mlflow_port", "MLFLOW_TRACKING_URI", tell)
                    _start_mlflow(servers, mlflow_workers)
                _save(servers)
            except BaseException as error:
                if started_postgres and _stop_postgres(folder):
                    assert servers is not None
                    servers.postgres_pid = None
                    with contextlib.suppress(OSError):
                        _save(servers)
                    if isinstance(error, MlscaleError | OSError):
                        line = _folder_error(folder, error) if isinstance(error, OSError) \
                            else error
                        raise MlscaleError(f"{line}; stopped PostgreSQL again") from error
                raise
            return servers


def _move_if_taken(servers: Servers, attribute: str, variable: str,
                   say: Callable[[str], None]) -> None:
    """A new free port where another program took the recorded one, and a line saying so
    (the URL to export changes)."""
    port = getattr(servers, attribute)
    if _port_taken(port):
        setattr(servers, attribute, _free_port())
        name = "PostgreSQL" if attribute == "postgres_port" else "the MLflow server"
        say(f"port {port} is taken by another program: {name} moves to "
            f"{getattr(servers, attribute)}, so export {variable} again")


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def down(folder: Path | None = None) -> list[str] | None:
    """Stop both servers by PID (PostgreSQL with a fast shutdown); the data stays.

    Returns what it stopped (``["the MLflow server", "PostgreSQL"]``; empty when nothing
    ran), or None where no servers are set up. Only processes that are still this folder's
    servers are signalled.
    """
    folder = _resolve(folder)
    with _folder_errors(folder):
        servers = _load(folder)
        if servers is None:
            return None
        stopped = []
        if _stop_mlflow(servers):
            stopped.append("the MLflow server")
        if _stop_postgres(folder):
            stopped.append("PostgreSQL")
        servers.mlflow_pid = servers.postgres_pid = None
        _save(servers)
        return stopped


def status(folder: Path | None = None) -> Servers | None:
    """The servers recorded in the folder, with their PIDs where they still run (the
    MLflow server's is its process group's, also when only its uvicorn is left)."""
    folder = _resolve(folder)
    with _folder_errors(folder):
        servers = _load(folder)
    if servers is not None:
        servers.postgres_pid = _postmaster(folder)
        if not _mlflow_processes(servers):
            servers.mlflow_pid = None
    return servers
