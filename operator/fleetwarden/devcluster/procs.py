"""Processes, ports and waiting: the small machinery every launcher shares.

Each process runs in its own session (process group), writes its log to a file, and
has its pid recorded in ``<state>/pids/<name>.pid`` together with its executable, so
`down` can stop it later from another Python process, and never kills an unrelated
process that reused the pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fleetwarden.devcluster import failures

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM us when the parent exits (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 == PR_SET_PDEATHSIG


def start(name: str, argv: Sequence[str], *, state_dir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, tie_to_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, log to ``<state>/logs/<name>.log``, record its pid.

    ``tie_to_parent``: the process gets SIGTERM when this Python process dies, so a test
    run killed hard leaves nothing behind (the CLI's long-lived cluster does not use it).
    """
    logs = state_dir / "logs"
    pids = state_dir / "pids"
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    executable = argv[0]
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        raise failures.BinaryMissingError(f"{name}: binary {executable} is missing or not executable")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd,
            preexec_fn=_die_with_parent if tie_to_parent else None,  # noqa: PLW1509
        )
    record = {"pid": proc.pid, "exe": os.path.realpath(executable), "argv": list(argv),
              "started": time.time()}
    (pids / f"{name}.pid").write_text(json.dumps(record))
    return proc


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def recorded(state_dir: Path) -> dict[str, dict[str, object]]:
    """The pid records in ``<state>/pids``, by component name."""
    out: dict[str, dict[str, object]] = {}
    pids = state_dir / "pids"
    if not pids.is_dir():
        return out
    for path in sorted(pids.glob("*.pid")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def _exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def is_running(record: Mapping[str, object]) -> bool:
    """True when the recorded pid is alive and still runs the recorded executable."""
    pid = int(str(record["pid"]))
    exe = _exe_of(pid)
    if exe is None:
        return False
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return exe == record.get("exe")


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...); None: gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses


def stop(record: Mapping[str, object], *, grace: float = 10.0) -> None:
    """SIGTERM the recorded process group, SIGKILL it after ``grace`` seconds."""
    if not is_running(record):
        return
    pid = int(str(record["pid"]))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_running(record):
            break
        time.sleep(0.1)
    # The group leader may be gone while children it spawned live on: kill the group anyway,
    # and wait until no member is left running (a killed process takes a moment to exit).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not is_running(record) and not group_members(pid):
            return
        time.sleep(0.1)


def end(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *, grace: float = 15.0) -> None:
    """Stop a child started here (not recorded): SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is not None and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_all(state_dir: Path, order: Sequence[str] = (), *, grace: float = 10.0) -> list[str]:
    """Stop every recorded process (``order`` first, then the rest); return their names."""
    records = recorded(state_dir)
    names = [n for n in order if n in records] + sorted(n for n in records if n not in order)
    for name in names:
        stop(records[name], grace=grace)
        with contextlib.suppress(OSError):
            (state_dir / "pids" / f"{name}.pid").unlink()
    return names


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, log: Path | None = None,
               interval: float = 0.25) -> None:
    """Poll ``check`` until it is true; fail early if ``proc`` exits; quote ``log`` on failure."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = f"; log {log}:\n{failures.log_tail(log)}" if log else ""
            raise failures.ComponentError(f"{what}: process exited with code {proc.returncode}{tail}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure of a probe means "not yet"
            pass
        if time.monotonic() >= deadline:
            tail = f"; log {log}:\n{failures.log_tail(log)}" if log else ""
            raise failures.ComponentError(f"{what}: not ready after {timeout:.0f}s{tail}")
        time.sleep(interval)


def http_ok(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def insecure_context() -> ssl.SSLContext:
    """TLS without verification, for probing /healthz of self-signed loopback components."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
