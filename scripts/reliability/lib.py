"""Shared framework of the candidate-relay reliability suite.

Drives the REAL binary from outside: processes, signals, loopback HTTP, the simulator's
/_sim/state record, the outbox opened read-only with the sqlite3 module, and the JSON log
lines the relay prints on stdout. Standard library only.

Safety rules the helpers enforce:
- every process started here is SIGKILLed at exit (atexit, SIGTERM/SIGHUP of the suite too);
- every mount made through `mount()` is unmounted at exit;
- temp dirs live under one `tempfile.mkdtemp(prefix="cr-rel-")` root, removed at exit unless
  `set_keep(True)` (`--keep`);
- loopback only; every wait is bounded (`wait_until` with a deadline).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone

# --------------------------------------------------------------------------------------------
# Paths

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def _default_binary() -> str:
    """`CANDIDATE_RELAY_BIN`, else the debug build that `run` (and `swift test`) just built:
    never a release binary that may be older than the sources."""
    env = os.environ.get("CANDIDATE_RELAY_BIN")
    if env:
        return env
    return os.path.join(REPO_ROOT, ".build", "debug", "candidate-relay")


BINARY = _default_binary()

# The simulator's defaults (PartnerSimCommand.swift).
SIM_API_KEY = "demo-api-key"
SIM_SECRET = "demo-secret"
SIM_CLIENT_ID = "demo-client"
SIM_CLIENT_SECRET = "demo-client-secret"

# --------------------------------------------------------------------------------------------
# Global registries and cleanup

_lock = threading.RLock()
_processes: list[subprocess.Popen] = []
_mounts: list[str] = []
_closers: list = []
_temp_root: str | None = None
_keep = False


def set_keep(keep: bool) -> None:
    """Keep the temp dirs at exit (`--keep`)."""
    global _keep
    _keep = keep


def temp_root() -> str:
    global _temp_root
    with _lock:
        if _temp_root is None:
            _temp_root = tempfile.mkdtemp(prefix="cr-rel-")
        return _temp_root


def make_workdir(name: str) -> str:
    """A fresh directory under the suite's temp root (e.g. one per scenario or relay)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return tempfile.mkdtemp(prefix=safe + "-", dir=temp_root())


def register_process(proc: subprocess.Popen) -> None:
    with _lock:
        _processes.append(proc)


def register_closer(fn) -> None:
    """Something to call at exit (a proxy or stub server to close)."""
    with _lock:
        _closers.append(fn)


def kill_all_processes() -> None:
    """SIGKILLs every process this suite started that is still running."""
    with _lock:
        procs = list(_processes)
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except Exception:
            pass


def cleanup() -> None:
    kill_all_processes()
    with _lock:
        closers = list(_closers)
        _closers.clear()
    for fn in closers:
        try:
            fn()
        except Exception:
            pass
    with _lock:
        mounts = list(reversed(_mounts))
    for path in mounts:
        umount(path)
    if _temp_root and not _keep:
        shutil.rmtree(_temp_root, ignore_errors=True)
    elif _temp_root:
        print(f"kept temp dir {_temp_root}", flush=True)


atexit.register(cleanup)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP of the suite into SystemExit, so atexit cleanup runs."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass


# --------------------------------------------------------------------------------------------
# Mounts (root only)


def is_root() -> bool:
    return os.geteuid() == 0


def mount(args: list[str], target: str) -> tuple[bool, str]:
    """Runs `mount ARGS TARGET`; registers TARGET for unmounting at exit. (ok, error text)."""
    try:
        out = subprocess.run(["mount", *args, target], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if out.returncode != 0:
        return False, (out.stderr or out.stdout).strip()
    with _lock:
        _mounts.append(target)
    return True, ""


def remount(target: str, options: str) -> tuple[bool, str]:
    out = subprocess.run(["mount", "-o", f"remount,{options}", target], capture_output=True, text=True, timeout=20)
    return out.returncode == 0, (out.stderr or out.stdout).strip()


def umount(target: str) -> bool:
    with _lock:
        if target in _mounts:
            _mounts.remove(target)
    for args in (["umount", target], ["umount", "-l", target]):
        try:
            if subprocess.run(args, capture_output=True, timeout=20).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
    return False


# --------------------------------------------------------------------------------------------
# Polling


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Polls `predicate()` until it returns something truthy (returned) or `timeout` seconds
    pass (returns the last falsy value). Exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    value = None
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def wait_for_binary(timeout: float = 300) -> None:
    """The lead may be rebuilding: wait (bounded) for the binary to be there."""
    if os.path.exists(BINARY):
        return
    print(f"waiting for {BINARY} (being rebuilt?)", flush=True)
    if not wait_until(lambda: os.path.exists(BINARY) and os.access(BINARY, os.X_OK), timeout, 1.0):
        raise RuntimeError(f"binary not found: {BINARY} (build it, or set CANDIDATE_RELAY_BIN)")
    time.sleep(0.5)  # let the linker finish writing it


# --------------------------------------------------------------------------------------------
# Results


class Results:
    """Records checks; prints `PASS name` / `FAIL name: detail` as they come."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures: list[tuple[str, str]] = []
        self.skips: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        with self._lock:
            if ok:
                self.passed += 1
                print(f"PASS {name}", flush=True)
            else:
                self.failed += 1
                self.failures.append((name, detail))
                print(f"FAIL {name}: {detail}", flush=True)
        return bool(ok)

    def skip(self, name: str, reason: str) -> None:
        """Not run (e.g. needs root): neither passed nor failed, reported as SKIP."""
        with self._lock:
            self.skipped += 1
            self.skips.append((name, reason))
            print(f"SKIP {name}: {reason}", flush=True)

    def summary(self) -> int:
        if self.failures:
            print("failed checks:", flush=True)
            for name, detail in self.failures:
                print(f"  - {name}: {detail}", flush=True)
        if self.skips:
            print(f"{self.skipped} skipped: " + ", ".join(n for n, _ in self.skips), flush=True)
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# HTTP


def post(port: int, path: str, body: bytes, headers: dict, timeout: float = 10):
    """POST over loopback. Returns (status, headers lowercased, parsed JSON or None).
    Connection errors propagate (OSError, http.client exceptions)."""
    return request("POST", port, path, body, headers, timeout)


def get(port: int, path: str, timeout: float = 10, headers: dict | None = None):
    return request("GET", port, path, None, headers or {}, timeout)


def put(port: int, path: str, body: bytes, headers: dict | None = None, timeout: float = 10):
    return request("PUT", port, path, body, headers or {"Content-Type": "application/json"}, timeout)


def request(method: str, port: int, path: str, body: bytes | None, headers: dict, timeout: float = 10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        parsed = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        return resp.status, hdrs, parsed
    finally:
        conn.close()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict:
    """Standard Webhooks headers for `body`, signed with a `whsec_<base64>` secret."""
    key = base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{digest}"}


def signed_post(relay: "Relay", body, msg_id: str | None = None, timeout: float = 10,
                path: str = "/v1/candidates", timestamp: int | None = None, port: int | None = None):
    """POST a candidate (dict or bytes) to the relay, JSON, signed with the relay's secret."""
    data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    msg_id = msg_id or new_msg_id()
    headers = {"Content-Type": "application/json"}
    headers.update(sign(relay.secret, msg_id, int(timestamp if timestamp is not None else time.time()), bytes(data)))
    return post(port if port is not None else relay.port, path, bytes(data), headers, timeout)


def new_msg_id() -> str:
    return "msg_" + uuid.uuid4().hex


def candidate(i: int, position_uid: str = "pos-1", partner_candidate_id: str | None = None) -> dict:
    """A synthetic candidate: obviously fake names and reserved-domain emails only."""
    body = {
        "position_uid": position_uid,
        "first_name": f"Test{i}",
        "last_name": "Reliability",
        "email": f"test{i}@example.test",
    }
    if partner_candidate_id is not None:
        body["partner_candidate_id"] = partner_candidate_id
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_time(text: str) -> float:
    """RFC 3339 / ISO 8601 (with or without fraction, Z or offset) -> unix seconds."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if m and m.group(2) and len(m.group(2)) > 7:  # fromisoformat wants at most 6 digits
        text = m.group(1) + m.group(2)[:7] + m.group(3)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def has_fraction(text: str) -> bool:
    return bool(re.search(r"T\d\d:\d\d:\d\d\.\d", text))


# --------------------------------------------------------------------------------------------
# Output capture


class _OutputCapture:
    """Reader threads for a process's stdout/stderr; lines kept across restarts."""

    def __init__(self, log_path: str | None = None):
        self.lock = threading.Lock()
        self.log_path = log_path                # every line also appended here (kept with --keep)
        self.raw_lines: list[str] = []          # stdout lines, every run
        self.parsed: list[tuple[int, float, dict]] = []  # (line index, arrival time, event)
        self.stderr_lines: list[str] = []
        self.threads: list[threading.Thread] = []

    def attach(self, proc: subprocess.Popen) -> None:
        t1 = threading.Thread(target=self._read, args=(proc.stdout, False), daemon=True)
        t2 = threading.Thread(target=self._read, args=(proc.stderr, True), daemon=True)
        t1.start()
        t2.start()
        self.threads = [t1, t2]

    def _read(self, stream, is_err: bool) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                now = time.time()
                with self.lock:
                    if self.log_path:
                        try:
                            with open(self.log_path, "a") as f:
                                f.write(("stderr: " if is_err else "") + line + "\n")
                        except OSError:
                            pass
                    if is_err:
                        self.stderr_lines.append(line)
                        continue
                    index = len(self.raw_lines)
                    self.raw_lines.append(line)
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        obj = None
                    if isinstance(obj, dict):
                        self.parsed.append((index, now, obj))
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def join(self, timeout: float = 5) -> None:
        for t in self.threads:
            t.join(timeout)


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Popen, retried (bounded) while the binary is missing or being written by a rebuild."""
    import errno
    deadline = time.monotonic() + 300
    while True:
        try:
            return subprocess.Popen(cmd, **kwargs)
        except OSError as exc:
            if exc.errno not in (errno.ETXTBSY, errno.ENOENT) or time.monotonic() > deadline:
                raise
            print(f"  binary busy or missing ({exc.strerror}); retrying", flush=True)
            time.sleep(1.0)


def _child_env(extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CANDIDATE_RELAY_") and k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY",
                                                                 "WATCHDOG_USEC", "WATCHDOG_PID")}
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# The partner simulator


class Simulator:
    """`candidate-relay partner-sim --port 0 ARGS` as a child process.

    Test default: `--rate-limit 0` (unlimited) unless ARGS name `--rate-limit`.
    Note: PUT /_sim/faults REPLACES the faults (keys left out take their defaults, not the
    current values): `set_faults({})` turns every fault off."""

    LISTEN_RE = re.compile(r"partner-sim listening on http://127\.0\.0\.1:(\d+)")

    def __init__(self, args: list[str] | None = None):
        self.args = list(args or [])
        if "--rate-limit" not in self.args:
            self.args += ["--rate-limit", "0"]
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.output = _OutputCapture()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0, timeout: float = 30) -> "Simulator":
        wait_for_binary()
        cmd = [BINARY, "partner-sim", "--port", str(port), *self.args]
        self.proc = _spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_child_env(None), start_new_session=True)
        register_process(self.proc)
        self.output.attach(self.proc)

        def listening():
            with self.output.lock:
                lines = list(self.output.raw_lines)
            for line in lines:
                m = self.LISTEN_RE.search(line)
                if m:
                    return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError("exited")
            return None

        deadline = time.monotonic() + timeout
        found = None
        while time.monotonic() < deadline:
            found = listening() if self.proc.poll() is None else None
            if found or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not found:
            with self.output.lock:
                out = "\n".join(self.output.raw_lines[-20:] + self.output.stderr_lines[-20:])
            self.stop()
            raise RuntimeError(f"partner-sim did not start: {out}")
        self.port = found
        return self

    def state(self, timeout: float = 10) -> dict:
        status, _, body = get(self.port, "/_sim/state", timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/_sim/state answered {status}")
        return body

    def faults(self) -> dict:
        status, _, body = get(self.port, "/_sim/faults")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/_sim/faults answered {status}")
        return body

    def set_faults(self, faults: dict) -> dict:
        """Replaces the faults; returns what the simulator echoed (unknown keys are dropped by
        it silently: use `supports()` to check that a new knob exists)."""
        status, _, body = put(self.port, "/_sim/faults", json.dumps(faults).encode())
        if status != 200:
            raise RuntimeError(f"PUT /_sim/faults answered {status}: {body}")
        return body or {}

    def supports(self, key: str, probe_value) -> bool:
        """Whether the simulator knows fault `key` (sets it to probe_value, reads it back,
        then restores the previous faults)."""
        before = self.faults()
        echoed = self.set_faults({**before, key: probe_value})
        self.set_faults(before)
        return key in echoed

    def candidates_by_key(self, state: dict | None = None) -> dict:
        """(positionUID, partnerCandidateID) -> [uid, ...] of created candidates."""
        state = state if state is not None else self.state()
        out: dict = {}
        for c in state.get("candidates", []):
            out.setdefault((c.get("positionUID"), c.get("partnerCandidateID")), []).append(str(c.get("uid")))
        return out

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.output.join()
        return self.proc.returncode


# --------------------------------------------------------------------------------------------
# The relay

DELETE = object()  # in a config override: remove this key from the defaults


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def to_yaml(value, indent: int = 0) -> str:
    """Block YAML for nested dicts of scalars/lists; strings double-quoted (JSON escapes)."""
    pad = "  " * indent
    lines = []
    for key, val in value.items():
        if isinstance(val, dict):
            if val:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(val, indent + 1))
            else:
                lines.append(f"{pad}{key}: {{}}")
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(val)}")
    return "\n".join(lines)


def _yaml_scalar(val) -> str:
    if val is None:
        return "null"
    if val is True:
        return "true"
    if val is False:
        return "false"
    if isinstance(val, (int, float)):
        return repr(val)
    if isinstance(val, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in val) + "]"
    return json.dumps(str(val))


class RelayStartError(RuntimeError):
    pass


class Relay:
    """`candidate-relay serve --config WORKDIR/config.yaml` as a child process.

    Defaults (overridable by deep-merging `config`; use `DELETE` to drop a key): loopback
    port 0, outbox WORKDIR/state/outbox.sqlite3, Standard Webhooks secret in
    WORKDIR/inbound-secrets, partner = `sim` (or config partner.base_url), JWT with the
    simulator's demo key/secret, OAuth client secret file `oauth-client-secret`
    (demo-client-secret), no rate limit, 4 workers, backoff 0.05 s x2 up to 1 s, JSON logs,
    heartbeat 1 s. `.events()` holds every JSON line of every run."""

    def __init__(self, workdir: str, config: dict | None = None, env: dict | None = None, sim: Simulator | None = None):
        self.workdir = workdir
        self.env = dict(env or {})
        os.makedirs(workdir, exist_ok=True)
        self.secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        self._write_secret("inbound-secrets", self.secret + "\n")
        self._write_secret("comeet-api-key", SIM_API_KEY + "\n")
        self._write_secret("comeet-secret", SIM_SECRET + "\n")
        self._write_secret("oauth-client-secret", SIM_CLIENT_SECRET + "\n")
        defaults = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "ingest": {"signing_secrets_file": "inbound-secrets"},
            "storage": {"path": os.path.join(workdir, "state", "outbox.sqlite3")},
            "partner": {
                "base_url": sim.url if sim else "http://127.0.0.1:9",
                "timeout_seconds": 5,
                "auth": {"mode": "comeet_jwt", "api_key_file": "comeet-api-key", "secret_file": "comeet-secret"},
                "rate_limit": {"requests": 0, "per_seconds": 60},
            },
            "delivery": {
                "workers": 4,
                "backoff": {"initial_seconds": 0.05, "multiplier": 2, "max_seconds": 1},
                "max_attempts": 20,
                "shutdown_grace_seconds": 2,
                "circuit_breaker": {"failures": 5, "cooldown_seconds": 0.5},
            },
            "logging": {"level": "info", "format": "json", "heartbeat_seconds": 1},
        }
        self.config = deep_merge(defaults, config or {})
        self.config_path = os.path.join(workdir, "config.yaml")
        self.write_config()
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.output = _OutputCapture(os.path.join(workdir, "relay.log"))
        self.run_starts: list[int] = []  # index in raw_lines where each run began
        self.starts = 0
        self.last_stop_seconds: float | None = None

    # -- files
    def _write_secret(self, name: str, content: str) -> None:
        path = os.path.join(self.workdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)

    def write_config(self) -> None:
        with open(self.config_path, "w") as f:
            f.write("# written by scripts/reliability/lib.py\n" + to_yaml(self.config) + "\n")

    @property
    def db_path(self) -> str:
        return self.config["storage"]["path"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def raw_lines(self) -> list[str]:
        with self.output.lock:
            return list(self.output.raw_lines)

    @property
    def stderr_lines(self) -> list[str]:
        with self.output.lock:
            return list(self.output.stderr_lines)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle
    def start(self, wait: bool = True, timeout: float = 30) -> "Relay":
        wait_for_binary()
        if self.running():
            raise RuntimeError("relay already running")
        if self.proc is not None:
            self.output.join()
        with self.output.lock:
            mark = len(self.output.raw_lines)
            self.run_starts.append(mark)
        env = _child_env(self.env)
        self.proc = _spawn([BINARY, "serve", "--config", self.config_path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=self.workdir,
                                     start_new_session=True)
        register_process(self.proc)
        self.starts += 1
        self.port = None
        self.output.attach(self.proc)
        if wait:
            self.wait_started(mark, timeout)
        return self

    def wait_started(self, mark: int | None = None, timeout: float = 30) -> int:
        mark = self.run_starts[-1] if mark is None else mark

        def started():
            for ev in self.events("relay.started", since=mark):
                return ev
            if self.proc.poll() is not None:
                return "exited"
            return None

        result = wait_until(started, timeout, 0.02)
        if not isinstance(result, dict):
            out = "\n".join(self.raw_lines[mark:][-15:] + self.stderr_lines[-15:])
            if self.proc.poll() is None:
                self.kill()
            raise RelayStartError(f"relay did not start (rc={self.proc.returncode}): {out}")
        self.port = int(str(result.get("listen", "")).rsplit(":", 1)[-1])
        return self.port

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> int | None:
        """SIGKILL and wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.output.join()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM; waits up to `timeout` (default grace + 10 s). Returns the exit code, or
        None if it had to be SIGKILLed. `last_stop_seconds` = time from SIGTERM to exit."""
        if self.proc is None:
            return None
        if timeout is None:
            timeout = float(self.config["delivery"].get("shutdown_grace_seconds", 10)) + 10
        if self.proc.poll() is not None:
            self.last_stop_seconds = 0.0  # it had exited already; its code says how
            self.output.join()
            return self.proc.returncode
        t0 = time.monotonic()
        self.proc.terminate()
        rc = self.wait_exit(timeout)
        self.last_stop_seconds = time.monotonic() - t0
        if rc is None:
            self.kill()
            return None
        self.output.join()
        return rc

    def restart(self, wait: bool = True) -> "Relay":
        if self.running():
            self.stop()
        return self.start(wait=wait)

    # -- logs
    def events(self, name: str | None = None, since: int = 0) -> list[dict]:
        """Parsed JSON log lines (every run), optionally one `event` name, from raw line `since`."""
        with self.output.lock:
            items = list(self.output.parsed)
        return [ev for idx, _, ev in items if idx >= since and (name is None or ev.get("event") == name)]

    def timed_events(self, name: str | None = None, since: int = 0) -> list[tuple[float, dict]]:
        """(arrival unix time at the reader, event) pairs."""
        with self.output.lock:
            items = list(self.output.parsed)
        return [(t, ev) for idx, t, ev in items if idx >= since and (name is None or ev.get("event") == name)]

    def mark(self) -> int:
        """Current position in the log, for `events(since=...)`."""
        with self.output.lock:
            return len(self.output.raw_lines)

    def non_json_lines(self) -> list[str]:
        out = []
        for line in self.raw_lines:
            try:
                if isinstance(json.loads(line), dict):
                    continue
            except ValueError:
                pass
            out.append(line)
        return out

    # -- outbox
    def db(self) -> sqlite3.Connection:
        """The outbox opened read-only (`file:...?mode=ro`). Close it when done."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, args=()) -> list[dict]:
        conn = self.db()
        try:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]
        finally:
            conn.close()

    def all_events(self) -> dict:
        """id -> row (without payload) of every event in the outbox."""
        rows = self.query("SELECT id, idempotency_key, state, attempts, position_uid, partner_candidate_id, "
                          "candidate_uid, last_status, last_error, next_attempt_at FROM events")
        return {r["id"]: r for r in rows}

    def state_counts(self) -> dict:
        counts = {s: 0 for s in ("pending", "in_flight", "delivered", "linked", "dead")}
        for r in self.query("SELECT state, COUNT(*) AS n FROM events GROUP BY state"):
            counts[r["state"]] = r["n"]
        return counts

    # -- http
    def get(self, path: str, timeout: float = 10):
        return get(self.port, path, timeout)


# --------------------------------------------------------------------------------------------
# A TCP forwarder that can refuse connections (a partner "switched off" without losing the
# simulator's memory of what it created).


class TcpGate:
    """Loopback TCP proxy to `target_port`. `close()` stops listening and resets live
    connections (clients then get connection refused); `open()` listens again on the same
    port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._conns: set = set()
        self._lock = threading.Lock()
        self._accept_thread: threading.Thread | None = None
        self.connections = 0
        self.stall_body_ms = 0
        self.stalls = 0
        # (arrival unix time, request line) of every request a client started through the gate
        self.request_times: list = []
        self._closed_now = False
        register_closer(self.shutdown)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> "TcpGate":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port or 0))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        self._closed_now = False
        self._accept_thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self._accept_thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.add(client)
                self._conns.add(upstream)
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """a = client, b = upstream. With `stall_body_ms`, an upstream answer is cut after its
        header block and the rest held that long (a partner stalling its body)."""
        socks = [a, b]
        try:
            idle_deadline = time.monotonic() + 3600
            while time.monotonic() < idle_deadline:
                readable, _, _ = select.select(socks, [], [], 1.0)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is a and data[:5] in (b"POST ", b"GET /", b"PUT /"):
                        with self._lock:
                            self.request_times.append((time.time(), data.split(b"\r\n", 1)[0].decode("latin-1")))
                    if s is b and self.stall_body_ms and data.startswith(b"HTTP/") and b"\r\n\r\n" in data:
                        head, rest = data.split(b"\r\n\r\n", 1)
                        a.sendall(head + b"\r\n\r\n")
                        self.stalls += 1
                        end = time.monotonic() + self.stall_body_ms / 1000
                        while time.monotonic() < end and not self._closed_now:
                            time.sleep(0.05)
                        data = rest
                        if not data:
                            continue
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            for s in socks:
                with self._lock:
                    self._conns.discard(s)
                try:
                    s.close()
                except OSError:
                    pass

    def arrivals(self, path_prefix: str = "POST /candidates") -> list[float]:
        with self._lock:
            return [t for t, line in self.request_times if line.startswith(path_prefix)]

    def close(self) -> None:
        self._closed_now = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            _reset(s)

    def shutdown(self) -> None:
        self.close()


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class StallServer:
    """Accepts connections, reads the request, never answers (until closed). Counts hits."""

    def __init__(self):
        self.hits = 0
        self._socks: list = []
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self._listener = s
        self.port = s.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        register_closer(self.close)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._listener.accept()
            except OSError:
                return
            self.hits += 1
            self._socks.append(c)

    def close(self) -> None:
        try:
            self._listener.close()
        except OSError:
            pass
        for c in self._socks:
            try:
                c.close()
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# Senders


class Ledger:
    """What senders were told: every 202/200 answer, per webhook-id and event id."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked: dict = {}         # event id -> (position_uid, partner_candidate_id)
        self.msg_to_ids: dict = {}    # webhook-id -> set of event ids answered
        self.statuses: dict = {}      # status -> count
        self.errors: dict = {}        # transport error type -> count
        self.accepted_202 = 0
        self.duplicate_200 = 0
        self.bad: list = []           # unexpected answers (status, body)
        self.latencies: list = []

    def record(self, msg_id: str, status: int, body, natural_key, latency: float) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.latencies.append(latency)
            if status in (200, 202) and isinstance(body, dict) and body.get("id"):
                pcid = body.get("partner_candidate_id") or natural_key[1]
                self.acked[body["id"]] = (natural_key[0], pcid)
                self.msg_to_ids.setdefault(msg_id, set()).add(body["id"])
                if status == 202:
                    self.accepted_202 += 1
                else:
                    self.duplicate_200 += 1
            elif status not in (503,):
                self.bad.append((status, body))

    def error(self, exc: BaseException) -> None:
        with self.lock:
            name = type(exc).__name__
            self.errors[name] = self.errors.get(name, 0) + 1


def send_until_acked(relay: Relay, body: dict, msg_id: str, ledger: Ledger, deadline: float,
                     stop_retrying=None, timeout: float = 10) -> bool:
    """Posts (same webhook-id, same body) until a 200/202, a non-retryable answer, or the
    deadline, as a Standard Webhooks sender would. Connection errors and 503 are retried."""
    data = json.dumps(body).encode()
    key = (body.get("position_uid"), body.get("partner_candidate_id"))
    attempts = 0
    while time.monotonic() < deadline and attempts < 10000:
        attempts += 1
        port = relay.port
        if port is None:
            time.sleep(0.05)
            continue
        t0 = time.monotonic()
        try:
            status, _, resp = signed_post(relay, data, msg_id=msg_id, timeout=timeout, port=port)
        except (OSError, http.client.HTTPException) as exc:
            ledger.error(exc)
            time.sleep(0.05)
            continue
        ledger.record(msg_id, status, resp, key, time.monotonic() - t0)
        if status in (200, 202):
            return True
        if status != 503:
            return False
        if stop_retrying is not None and stop_retrying():
            return False
        time.sleep(0.05)
    return False


def sliding_window_max(times: list[float], window: float) -> tuple[int, float | None]:
    """Largest number of instants in any half-open window [t, t + window); and where."""
    times = sorted(times)
    best, at, j = 0, None, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        # window ending at t (inclusive), starting after t - window
        if i - j + 1 > best:
            best, at = i - j + 1, times[j]
    return best, at


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items())


def short_exc() -> str:
    return traceback.format_exc(limit=3).strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------
# The end-state checks most scenarios share


def wait_drained(relay: Relay, ids, timeout: float) -> bool:
    """Polls the outbox until every id in `ids` is delivered/linked/dead and nothing at all
    is pending or in flight. True when reached within `timeout`."""
    ids = set(ids)

    def done():
        rows = relay.all_events()
        if any(r["state"] in ("pending", "in_flight") for r in rows.values()):
            return False
        return all(i in rows and rows[i]["state"] in ("delivered", "linked", "dead") for i in ids)

    return bool(wait_until(done, timeout, 0.2))


def verify_end_state(results: Results, prefix: str, relay: Relay, sim: Simulator, ledger: Ledger,
                     drain_timeout: float, sim_states: list | None = None) -> dict:
    """Waits (bounded) for the backlog to drain, then checks: every acked event is stored and
    delivered/linked; nothing pending/in_flight/dead; each webhook-id answered one event id;
    the partner holds exactly one candidate per natural key, and every event of that key
    carries that candidate's uid. Returns counts for the report."""
    with ledger.lock:
        acked = dict(ledger.acked)
        msg_to_ids = {k: set(v) for k, v in ledger.msg_to_ids.items()}
    t0 = time.monotonic()
    drained = wait_drained(relay, acked.keys(), drain_timeout)
    drain_s = time.monotonic() - t0
    rows = relay.all_events()
    counts = {s: 0 for s in ("pending", "in_flight", "delivered", "linked", "dead")}
    for r in rows.values():
        counts[r["state"]] += 1
    results.check(f"{prefix}: backlog drained within {drain_timeout:.0f}s", drained,
                  f"after {drain_s:.1f}s: {fmt_counts(counts)}")
    if not drained:
        noisy = ("relay.heartbeat", "ingest.accepted", "delivery.succeeded", "delivery.linked", "relay.framework")
        tail = [ev for ev in relay.events() if ev.get("event") not in noisy][-12:]
        print(f"  diagnostics ({relay.workdir}/relay.log has everything):", flush=True)
        for ev in tail:
            print("    " + json.dumps(ev)[:300], flush=True)
        for r in [r for r in rows.values() if r["state"] in ("pending", "in_flight")][:6]:
            print(f"    outbox: {r['id']} {r['state']} attempts={r['attempts']} last_error={r['last_error']} "
                  f"next_attempt_at={r['next_attempt_at']}", flush=True)
    lost = [i for i in acked if i not in rows]
    results.check(f"{prefix}: every acked event is in the outbox ({len(acked)})", not lost and len(acked) > 0,
                  f"{len(lost)} acked but missing, e.g. {lost[:3]}" if lost else "nothing was acked")
    not_ok = {i: (rows[i]["state"], rows[i]["attempts"], rows[i]["last_error"]) for i in acked
              if i in rows and rows[i]["state"] not in ("delivered", "linked")}
    results.check(f"{prefix}: every acked event delivered or linked", not not_ok,
                  f"{len(not_ok)} not: " + "; ".join(f"{k} {v}" for k, v in list(not_ok.items())[:4]))
    stuck = counts["pending"] + counts["in_flight"]
    results.check(f"{prefix}: nothing left pending/in_flight", stuck == 0, fmt_counts(counts))
    multi = {m: ids for m, ids in msg_to_ids.items() if len(ids) != 1}
    results.check(f"{prefix}: each webhook-id answered with one event id ({len(msg_to_ids)} ids)",
                  not multi and len(msg_to_ids) > 0, f"{len(multi)} webhook-ids got several: {list(multi.items())[:2]}")
    # The partner side
    states = sim_states if sim_states is not None else [sim.state()]
    created: dict = {}
    for st in states:
        for key, uids in sim.candidates_by_key(st).items():
            created.setdefault(key, []).extend(uids)
    keys = {}
    for i, key in acked.items():
        r = rows.get(i)
        keys.setdefault((r["position_uid"], r["partner_candidate_id"]) if r else key, []).append(i)
    dupes = {k: v for k, v in created.items() if len(v) > 1}
    missing = [k for k in keys if len(created.get(k, [])) == 0]
    results.check(f"{prefix}: partner holds exactly one candidate per natural key ({len(keys)} keys)",
                  not dupes and not missing,
                  f"{len(dupes)} duplicated (e.g. {list(dupes.items())[:2]}), {len(missing)} missing (e.g. {missing[:2]})")
    known = {(r["position_uid"], r["partner_candidate_id"]) for r in rows.values()}
    strangers = [k for k in created if k not in keys and k not in known]
    results.check(f"{prefix}: partner holds no candidate the outbox does not know", not strangers, f"{strangers[:3]}")
    mismatched = []
    for key, ids in keys.items():
        uids = created.get(key, [])
        for i in ids:
            r = rows.get(i)
            if r and r["state"] in ("delivered", "linked") and len(uids) == 1 and r["candidate_uid"] != uids[0]:
                mismatched.append((i, r["candidate_uid"], uids[0]))
    results.check(f"{prefix}: every delivered/linked event carries its partner candidate's uid", not mismatched,
                  f"{len(mismatched)} differ, e.g. {mismatched[:3]}")
    return {
        "acked": len(acked),
        "webhook_ids": len(msg_to_ids),
        "replays_200": ledger.duplicate_200,
        "delivered": sum(1 for i in acked if rows.get(i, {}).get("state") == "delivered"),
        "linked": sum(1 for i in acked if rows.get(i, {}).get("state") == "linked"),
        "dead": sum(1 for i in acked if rows.get(i, {}).get("state") == "dead"),
        "lost": len(lost),
        "partner_duplicates": sum(len(v) - 1 for v in dupes.values()),
        "drain_seconds": round(drain_s, 1),
    }
