#!/usr/bin/env python3
"""The candidate-relay benchmark (run it through scripts/bench, which installs what it needs and
builds the release binary first).

One run measures every figure next to a ceiling measured in the same run on the same machine,
and prints a Markdown table: what, figure, ceiling, ratio, goal, pass/miss.

Everything runs on loopback; every process it starts is killed when it exits (atexit, and
PR_SET_PDEATHSIG should this script itself be killed); its temporary directories are removed.
Synthetic data only (fake names, @example.test addresses).
"""
from __future__ import annotations

import argparse
import atexit
import base64
import collections
import ctypes
import hashlib
import hmac
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GATE_CLOSED = (1, 86400)  # rate limit "1 request per day": holds delivery while ingest is measured
BIG_BACKLOG = 100_000_000

# --------------------------------------------------------------------------------------------
# process hygiene


PROCS: list[subprocess.Popen] = []
STOPS: list[tuple[str, float | None]] = []  # every SIGTERM'd daemon/simulator: seconds to exit, None = killed
TEMP_DIRS: list[Path] = []  # removed at exit
WORK_DIRS: list[Path] = []  # this run's files (settle() fsyncs them)
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the child dies if this script dies


def spawn(cmd: list[str], *, log: Path, env: dict | None = None) -> subprocess.Popen:
    out = open(log, "ab")
    proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, preexec_fn=_die_with_parent, cwd=REPO)
    out.close()
    PROCS.append(proc)
    return proc


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout=15.0) -> float | None:
    """Signals and waits; returns the seconds until exit (None if it had to be killed)."""
    if proc.poll() is not None:
        return 0.0
    start = time.monotonic()
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
        return time.monotonic() - start
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None


def cleanup() -> None:
    for proc in PROCS:
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(5)
            except Exception:
                proc.kill()
    for d in TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)
        if d.parent.name == ".build-bench":
            try:
                d.parent.rmdir()  # only when empty
            except OSError:
                pass


atexit.register(cleanup)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda s, f: sys.exit(128 + s))


def settle() -> None:
    """Flushes this run's own dirty pages (a previous step's files: the signed requests, the growth
    fill) so that their writeback does not land in the fsyncs of the next measurement. Not
    sync(2): that would also wait for everything else the machine is writing."""
    for d in WORK_DIRS:
        for path in d.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except OSError:
                pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CANDIDATE_RELAY_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY"))}
    return env


def mib(kb: float) -> float:
    return kb / 1024


# --------------------------------------------------------------------------------------------
# /proc


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])  # kB
    except OSError:
        pass
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class RSSSampler:
    """Samples VmRSS of a pid every `interval` seconds; also resets VmHWM at start and reads it at
    stop, so the peak is exact when /proc/PID/clear_refs is writable."""

    def __init__(self, pid: int, interval=0.02):
        self.pid, self.interval = pid, interval
        self.max_kb = 0
        self._stop = threading.Event()
        self.hwm_exact = reset_hwm(pid)
        self.start_kb = proc_status(pid).get("VmRSS", 0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.max_kb = max(self.max_kb, proc_status(self.pid).get("VmRSS", 0))
            self._stop.wait(self.interval)

    def stop(self) -> float:
        """Peak RSS in kB since start."""
        self._stop.set()
        self._thread.join()
        peak = self.max_kb
        if self.hwm_exact:
            peak = max(peak, proc_status(self.pid).get("VmHWM", 0))
        return peak


# --------------------------------------------------------------------------------------------
# synthetic candidates

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Niklaus"]
LAST = ["Example", "Sample", "Testperson", "Placeholder", "Dummy", "Fakename", "Mockington", "Synthetic"]
NOTE_WORDS = ("experienced engineer interested in distributed systems and databases who enjoys "
              "mentoring writing documentation and shipping reliable software ").split()


def candidate_template(target_bytes=2048, marker="@@K@@") -> str:
    """A ~2 KB candidate JSON with three `%s` slots, all meant for the same distinct key (Lua's
    string.format and Python's % read it alike). Fields the validator checks: all valid."""
    rnd = random.Random(7)
    doc = {
        "position_uid": "11.11",
        "partner_candidate_id": marker,
        "first_name": rnd.choice(FIRST),
        "last_name": rnd.choice(LAST),
        "email": f"cand.{marker}@example.test",
        "phone": "+1 555 0100",
        "linkedin_url": "https://www.linkedin.com/in/example-person",
        "prospect_status": "Sourced",
        "address": {"country": "DE", "city": "Examplestadt", "street": "Teststrasse 1", "zip": "12345"},
        "source_contact": {"full_name": "Recruiter Example", "email": "recruiter@example.test"},
        "links": [{"url": "https://portfolio.example.test/" + marker}],
        "note": "",
    }
    sample_key = "0123456789abcdef-1-123456"
    words = []
    while True:
        doc["note"] = " ".join(words)
        size = len(json.dumps(doc, separators=(",", ":")).replace(marker, sample_key))
        if size >= target_bytes:
            break
        words.append(NOTE_WORDS[len(words) % len(NOTE_WORDS)])
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).replace("%", "%%").replace(marker, "%s")
    assert text.count("%s") == 3 and "%" not in text.replace("%s", "").replace("%%", "")
    return text


def sign(secret_key: bytes, msg_id: str, ts: int, body: str) -> str:
    mac = hmac.new(secret_key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def mint_jwt(api_key="demo-api-key", secret="demo-secret", ttl=500) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"iss": api_key, "exp": int(time.time()) + ttl}).encode())
    mac = hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{b64(mac)}"


# --------------------------------------------------------------------------------------------
# wrk

LUA = r"""
-- scripts/bench.py's wrk script. BENCH_MODE: get | gen (distinct candidates from a template) |
-- file (pre-generated signed requests, cycled). Counts answers by status; done() prints JSON.
local mode = os.getenv("BENCH_MODE") or "get"
local path = os.getenv("BENCH_PATH") or "/"
local okstatus = tonumber(os.getenv("BENCH_OK") or "200")
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local auth = os.getenv("BENCH_AUTH")
local keyhdr = os.getenv("BENCH_KEYHDR") == "1"
local run = os.getenv("BENCH_RUN") or "run"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  ok, dup, c4, c5, other, n, wraps = 0, 0, 0, 0, 0, 0, 0
  if mode == "gen" then
    local f = assert(io.open(os.getenv("BENCH_TEMPLATE"), "r"))
    template = f:read("*a")
    f:close()
  elseif mode == "file" then
    reqs, idx = {}, 1
    local i = 0
    for line in io.lines(os.getenv("BENCH_REQUESTS")) do
      if i % nthreads == tid - 1 then
        local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
        reqs[#reqs + 1] = wrk.format("POST", path, {["Content-Type"] = "application/json",
          ["webhook-id"] = id, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig}, body)
      end
      i = i + 1
    end
  end
end

function request()
  n = n + 1
  if mode == "get" then
    return wrk.format("GET", path)
  elseif mode == "file" then
    local r = reqs[idx]
    idx = idx + 1
    if idx > #reqs then idx = 1; wraps = wraps + 1 end
    return r
  end
  local key = run .. "-" .. tid .. "-" .. n
  local headers = {["Content-Type"] = "application/json"}
  if keyhdr then headers["webhook-id"] = key end
  if auth then headers["Authorization"] = auth end
  return wrk.format("POST", path, headers, string.format(template, key, key, key))
end

function response(status, headers, body)
  if status == okstatus then ok = ok + 1
  elseif status == 200 then dup = dup + 1
  elseif status >= 500 then c5 = c5 + 1
  elseif status >= 400 then c4 = c4 + 1
  else other = other + 1 end
  if limit > 0 and (ok >= limit or status == 503) then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local t = {ok = 0, dup = 0, c4 = 0, c5 = 0, other = 0, wraps = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (th:get(k) or 0) end
  end
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"ok":%d,"dup":%d,"c4":%d,"c5":%d,"other":%d,"wraps":%d,"requests":%d,' ..
    '"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d}\n',
    t.ok, t.dup, t.c4, t.c5, t.other, t.wraps, summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class WrkResult(dict):
    @property
    def seconds(self) -> float:
        return self["duration_us"] / 1e6

    @property
    def ok_rate(self) -> float:
        return self["ok"] / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return sum(self[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))

    def answers(self) -> str:
        parts = [f"{self['ok']} ok"]
        for key, label in (("dup", "200 duplicate"), ("c4", "4xx"), ("c5", "5xx"), ("other", "other")):
            if self[key]:
                parts.append(f"{self[key]} {label}")
        if self.errors:
            parts.append(f"{self.errors} socket errors/timeouts")
        if self["wraps"]:
            parts.append(f"request file wrapped {self['wraps']}x")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# the daemon and the simulator


class Notify:
    """A NOTIFY_SOCKET for one daemon: READY=1 (with STATUS=listening on host:port), RELOADING=1..."""

    def __init__(self, directory: Path):
        self.path = str(directory / f"n{uuid.uuid4().hex[:8]}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def poll(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return out

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Simulator:
    def __init__(self, bench: "Bench", name: str, api_keys: list[str] | None = None):
        self.log = bench.work / f"{name}.log"
        keys = [arg for key in (api_keys or []) for arg in ("--api-key", key)]
        self.proc = spawn([bench.binary, "partner-sim", "--port", "0", "--rate-limit", "0", *keys], log=self.log, env=clean_env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://([\d.]+):(\d+)", self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(2))
                self.url = f"http://127.0.0.1:{self.port}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"partner-sim did not start; see {self.log}")

    def stop(self):
        took = stop_process(self.proc)
        STOPS.append(("partner-sim " + self.log.stem, took))
        if took is None or took > 1:
            log(f"  {self.log.stem}: SIGTERM → exit took {'> 15 s (killed)' if took is None else f'{took:.2f} s'}")


class Relay:
    """One daemon process: its config directory, outbox and notify socket."""

    def __init__(self, bench: "Bench", name: str, *, sim_url: str, signed=False, rate=GATE_CLOSED, workers=16,
                 max_backlog=BIG_BACKLOG, level="warning", storage: Path | None = None, port=0, accounts=0):
        self.bench, self.name = bench, name
        self.dir = bench.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or (self.dir / "outbox.sqlite3")
        self.secret_key = os.urandom(32)
        (self.dir / "inbound-secrets").write_text("whsec_" + base64.b64encode(self.secret_key).decode() + "\n")
        (self.dir / "comeet-api-key").write_text("demo-api-key\n")
        (self.dir / "comeet-secret").write_text("demo-secret\n")
        # accounts > 0: an `accounts:` section of that many customers, a0..aN-1, api-keys key-a0...
        self.accounts = [f"a{i}" for i in range(accounts)]
        for account in self.accounts:
            (self.dir / f"{account}-api-key").write_text(f"key-{account}\n")
        self.settings = dict(sim_url=sim_url, signed=signed, rate=rate, workers=workers, max_backlog=max_backlog,
                             level=level, port=port)
        self.config = self.dir / "config.yaml"
        self.write_config()
        self.proc: subprocess.Popen | None = None
        self.notify: Notify | None = None
        self.port = None

    def write_config(self, **changes):
        self.settings.update(changes)
        s = self.settings
        self.config.write_text(f"""\
listen: {{ host: 127.0.0.1, port: {s['port']} }}
ingest:
  max_body_bytes: 33554432
  signing_secrets_file: {'inbound-secrets' if s['signed'] else 'null'}
  bearer_token_file: null
  allow_unauthenticated: {'false' if s['signed'] else 'true'}
  max_backlog: {s['max_backlog']}
storage:
  path: {self.storage}
partner:
  base_url: {s['sim_url']}
  timeout_seconds: 30
  auth: {{ mode: comeet_jwt, api_key_file: comeet-api-key, secret_file: comeet-secret }}
  rate_limit: {{ requests: {s['rate'][0]}, per_seconds: {s['rate'][1]} }}
delivery:
  workers: {s['workers']}
logging: {{ level: {s['level']}, format: json, heartbeat_seconds: 60 }}
""" + ("accounts:\n" + "".join(f"  {a}: {{ api_key_file: {a}-api-key }}\n" for a in self.accounts) if self.accounts else ""))

    def check_config(self) -> None:
        r = subprocess.run([self.bench.binary, "check-config", "--config", self.config], capture_output=True, text=True,
                           env=clean_env(), timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"check-config refused the benchmark config:\n{r.stdout}{r.stderr}")

    def start(self, timeout=60.0, poll_port: int | None = None) -> dict:
        """Starts and waits for READY=1. Returns timings (seconds from spawn): ready, healthz
        (first 200 on /healthz; only when poll_port is given, i.e. a fixed listen port)."""
        self.notify = Notify(self.bench.sockets)
        env = clean_env()
        env["NOTIFY_SOCKET"] = self.notify.path
        t0 = time.monotonic()
        self.proc = spawn([self.bench.binary, "serve", "--config", self.config], log=self.dir / "relay.log", env=env)
        timings: dict = {}
        deadline = t0 + timeout
        while time.monotonic() < deadline and ("ready" not in timings or (poll_port and "healthz" not in timings)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay {self.name} exited ({self.proc.returncode}); see {self.dir / 'relay.log'}")
            for msg in self.notify.poll():
                if "READY=1" in msg.split("\n") and "ready" not in timings:
                    timings["ready"] = time.monotonic() - t0
                    m = re.search(r"STATUS=listening on (.+):(\d+)", msg)
                    if m:
                        self.port = int(m.group(2))
            if poll_port and "healthz" not in timings and http_ok(poll_port, "/healthz"):
                timings["healthz"] = time.monotonic() - t0
            time.sleep(0.001 if poll_port else 0.005)
        if "ready" not in timings:
            raise RuntimeError(f"relay {self.name}: no READY=1 within {timeout}s; see {self.dir / 'relay.log'}")
        if self.port is None:  # fall back on the relay.started log line (level notice or lower only)
            for line in (self.dir / "relay.log").read_text(errors="replace").splitlines():
                if '"relay.started"' in line:
                    self.port = int(json.loads(line)["listen"].rsplit(":", 1)[1])
        if self.port is None:
            raise RuntimeError(f"relay {self.name}: port unknown")
        return timings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reload(self, timeout=30.0, **changes):
        """Rewrites the config and sends SIGHUP; returns once the daemon says READY=1 again."""
        self.write_config(**changes)
        self.notify.poll()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        seen_reloading = False
        while time.monotonic() < deadline:
            for msg in self.notify.poll():
                lines = msg.split("\n")
                seen_reloading = seen_reloading or "RELOADING=1" in lines
                if seen_reloading and "READY=1" in lines:
                    return
            time.sleep(0.005)
        raise RuntimeError(f"relay {self.name}: no READY=1 after SIGHUP")

    def stop(self) -> float | None:
        took = stop_process(self.proc, timeout=30)
        STOPS.append(("relay " + self.name, took))
        if took is None or took > 1:
            log(f"  relay {self.name}: SIGTERM → exit took {'> 30 s (killed)' if took is None else f'{took:.2f} s'}")
        if self.notify:
            self.notify.close()
        return took

    def rss_kb(self) -> int:
        return proc_status(self.proc.pid).get("VmRSS", 0)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.storage}?mode=ro", uri=True, timeout=10)

    def count(self, where: str) -> int:
        with self.db() as conn:
            return conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}").fetchone()[0]

    def wait_drained(self, seconds: float, poll=0.2) -> int:
        """Waits until nothing is pending or in flight, at most `seconds`; returns what is left."""
        deadline = time.monotonic() + seconds
        while True:
            left = self.count("state IN ('pending', 'in_flight')")
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(poll)


class DiskProbe:
    """The disk's own tail, beside the end-to-end figure: a child process writes 4 KiB and
    `fdatasync`s it every 20 ms in the outbox's directory (~50 small syncs a second against the
    daemon's hundreds) and records each sync's duration. On a shared VM a sync now and then takes
    tens of ms for every process on the disk (its host's flush): the events in flight then wait
    for it too, and the table says how many of the slow ones did."""

    CODE = r"""
import json, os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, bytes(65536), 0); os.fdatasync(fd)  # allocated first: the syncs below change no size
block, durations, stalls, end, n = os.urandom(4096), [], [], time.time() + seconds, 0
while time.time() < end:
    os.pwrite(fd, block, (n % 16) * 4096); t = time.time(); os.fdatasync(fd); d = time.time() - t
    durations.append(d)
    if d > 0.010: stalls.append((t, d))
    n += 1; time.sleep(0.02)
os.close(fd); os.unlink(path)
print(json.dumps({"durations": durations, "stalls": stalls}))
"""

    def __init__(self, directory: Path, seconds: float):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(directory / "disk-probe"), str(seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        PROCS.append(self.proc)

    def result(self) -> dict:
        try:
            out, _ = self.proc.communicate(timeout=60)
            data = json.loads(out)
        except (subprocess.TimeoutExpired, ValueError):
            return dict(n=0, p99=float("nan"), max=float("nan"), stalls=[])
        ms = [d * 1000 for d in data["durations"]]
        return dict(n=len(ms), p99=pct(ms, 99), max=max(ms) if ms else float("nan"), stalls=data["stalls"])


def http_ok(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# --------------------------------------------------------------------------------------------
# the benchmark


class Row:
    def __init__(self, what, figure="", ceiling="", ratio="", goal="", result=""):
        self.what, self.figure, self.ceiling, self.ratio, self.goal, self.result = what, figure, ceiling, ratio, goal, result


def fmt_rate(x: float, unit="/s") -> str:
    return f"{x:,.0f}{unit}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**pass**" if ok else "**MISS**")


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.source_binary = Path(args.binary).resolve()
        self.wrk_seconds = 3 if self.quick else 10
        self.storage_seconds = 2 if self.quick else 5
        self.backlog = args.backlog or (3000 if self.quick else 20000)
        self.e2e_seconds = 3 if self.quick else 10
        self.growth_rows = args.growth_rows if args.growth_rows is not None else (0 if self.quick else 1_000_000)
        self.starts = 3 if self.quick else 5
        self.sockets = Path(tempfile.mkdtemp(prefix="crb-sock-"))
        TEMP_DIRS.append(self.sockets)
        self.work = self.storage_root()
        WORK_DIRS.append(self.work)
        if args.keep:
            log(f"--keep: leaving {self.work} in place")
        else:
            TEMP_DIRS.append(self.work)
        # A private copy: a rebuild during the run neither changes the daemon measured nor makes
        # spawning fail with "Text file busy".
        self.binary = self.work / "candidate-relay"
        shutil.copy2(self.source_binary, self.binary)
        self.git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
        self.dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                         capture_output=True, text=True).stdout.strip())
        self.built = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.source_binary.stat().st_mtime))
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.r: dict = {}  # raw results
        self.template_path = self.work / "candidate.tmpl"
        self.template = candidate_template()
        self.template_path.write_text(self.template)
        self.lua = self.work / "bench.lua"
        self.lua.write_text(LUA)
        self.sample_body = self.template % (("sample",) * 3)

    def storage_root(self) -> Path:
        fstype = subprocess.run(["df", "--output=fstype", "/tmp"], capture_output=True, text=True).stdout.split()[-1]
        if fstype in ("tmpfs", "ramfs") and not self.args.storage_dir:
            base = REPO / ".build-bench"  # ignored by .gitignore (.build-*/)
            base.mkdir(exist_ok=True)
        else:
            base = Path(self.args.storage_dir or "/tmp")
        return Path(tempfile.mkdtemp(prefix="candidate-relay-bench-", dir=base))

    # ---- helpers

    def wrk(self, url: str, *, mode: str, path: str, ok_status: int, conns=64, seconds=None, extra_env=None,
            limit=0, until=None) -> WrkResult:
        seconds = seconds or self.wrk_seconds
        env = dict(os.environ, BENCH_MODE=mode, BENCH_PATH=path, BENCH_OK=str(ok_status), BENCH_RUN=uuid.uuid4().hex[:12],
                   BENCH_TEMPLATE=str(self.template_path), BENCH_THREADS="2", BENCH_LIMIT=str(limit))
        env.update(extra_env or {})
        cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(self.lua), url + path]
        out_path = self.work / "wrk.out"
        proc = spawn(cmd, log=out_path, env=env)
        try:
            if until:  # wrk's threads may stop themselves, but wrk itself sleeps -d: SIGINT ends it early
                deadline = time.monotonic() + seconds
                while proc.poll() is None and time.monotonic() < deadline and not until():
                    time.sleep(0.1)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            proc.wait(seconds + 300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = out_path.read_text(errors="replace")
        out_path.unlink()
        for line in text.splitlines():
            if line.startswith("BENCH_JSON "):
                return WrkResult(json.loads(line[len("BENCH_JSON "):]))
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n{text}")

    def ingest_wrk(self, relay: Relay, *, signed_file: Path | None = None) -> WrkResult:
        if signed_file:
            return self.wrk(relay.url, mode="file", path="/v1/candidates", ok_status=202,
                            extra_env={"BENCH_REQUESTS": str(signed_file)})
        return self.wrk(relay.url, mode="gen", path="/v1/candidates", ok_status=202, extra_env={"BENCH_KEYHDR": "1"})

    # ---- 1. storage ceiling

    def storage_ceiling(self):
        log("storage ceiling: SQLite WAL synchronous=FULL, 2 KB rows, 1 and 64 per commit "
            "(SQLite's default page size); 1 per commit again at the outbox's 2 KB page size")
        for per_commit, page_size in ((1, None), (64, None), (1, 2048)):
            settle()
            name = f"{per_commit}" + (f"_p{page_size}" if page_size else "")
            path = self.work / f"ceiling-{name}.sqlite3"
            conn = sqlite3.connect(path, isolation_level=None)
            if page_size:
                conn.execute(f"PRAGMA page_size={page_size}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY NOT NULL, idempotency_key TEXT UNIQUE, "
                         "state TEXT NOT NULL, payload BLOB, received_at INTEGER NOT NULL)")
            rows, i = 0, 0
            start = time.monotonic()
            deadline = start + self.storage_seconds
            while time.monotonic() < deadline:
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(per_commit):
                    i += 1
                    key = f"ceil-{per_commit}-{i}"
                    conn.execute("INSERT INTO events VALUES (?, ?, 'pending', ?, ?)",
                                 (f"evt_{i:028x}", key, (self.template % (key, key, key)).encode(), int(time.time() * 1000)))
                conn.execute("COMMIT")
                rows += per_commit
            took = time.monotonic() - start
            conn.close()
            self.r[f"storage_{name}"] = rows / took
            log(f"  {per_commit}/commit{f', {page_size}-byte pages' if page_size else ''}: {rows / took:,.0f} rows/s")

    # ---- 2. HTTP ceiling, ingest, memory

    def ingest(self, sim: Simulator):
        relay = Relay(self, "ingest-unsigned", sim_url=sim.url)
        relay.check_config()
        relay.start()
        time.sleep(1.0)
        self.r["rss_idle_kb"] = relay.rss_kb()
        log(f"RSS idle: {mib(self.r['rss_idle_kb']):.1f} MiB")
        log("HTTP ceiling: wrk GET /healthz")
        self.r["healthz"] = self.wrk(relay.url, mode="get", path="/healthz", ok_status=200)
        log(f"  {self.r['healthz'].ok_rate:,.0f}/s ({self.r['healthz'].answers()})")
        log("ingest, unsigned: wrk POST /v1/candidates, distinct 2 KB candidates, 64 connections")
        settle()
        sampler = RSSSampler(relay.proc.pid)
        res = self.ingest_wrk(relay)
        self.r["rss_ingest_kb"] = sampler.stop()
        self.r["ingest_unsigned"] = res
        self.r["ingest_unsigned_rows"] = relay.count("1")
        log(f"  {res.ok_rate:,.0f}/s p50 {res['p50_us'] / 1000:.1f} ms p99 {res['p99_us'] / 1000:.1f} ms "
            f"({res.answers()}); rows stored: {self.r['ingest_unsigned_rows']}; peak RSS {mib(self.r['rss_ingest_kb']):.1f} MiB")
        parked = relay.count("state = 'in_flight'")
        took = relay.stop()
        self.r["held_stop"] = dict(seconds=took, parked=parked, code=relay.proc.returncode,
                                   pending=self.r["ingest_unsigned_rows"] - 1)
        log(f"  SIGTERM with the backlog held by the rate limit ({parked} events claimed by workers waiting for "
            f"a place): exit after {took if took is None else round(took, 2)} s")

        log("ingest, signed (Standard Webhooks): pre-generating signed requests")
        signed = Relay(self, "ingest-signed", sim_url=sim.url, signed=True)
        signed.check_config()
        n = int(min(250_000, max(5_000, res.ok_rate * self.wrk_seconds * 1.5)))
        path = self.work / "signed.requests"
        run = uuid.uuid4().hex[:12]
        ts = int(time.time())
        with open(path, "w") as f:
            for i in range(n):
                key = f"{run}-s-{i}"
                body = self.template % (key, key, key)
                f.write(f"msg_{key}\t{ts}\t{sign(signed.secret_key, 'msg_' + key, ts, body)}\t{body}\n")
        self.r["signed_generated"] = n
        signed.start()
        log(f"  {n} requests generated; wrk cycles through them")
        settle()
        sampler = RSSSampler(signed.proc.pid)
        res = self.ingest_wrk(signed, signed_file=path)
        self.r["rss_ingest_signed_kb"] = sampler.stop()
        self.r["ingest_signed"] = res
        log(f"  {res.ok_rate:,.0f}/s p50 {res['p50_us'] / 1000:.1f} ms p99 {res['p99_us'] / 1000:.1f} ms ({res.answers()})")
        signed.stop()
        path.unlink()

    # ---- 3. the Python peer

    def peer(self):
        python = self.args.peer_python
        if not python or not Path(python).exists():
            self.notes.append("Python peer not measured: no venv python (run through scripts/bench).")
            return
        log("naive peer: Starlette + uvicorn, SQLite WAL FULL, one commit per request")
        port = free_port()
        proc = spawn([python, REPO / "scripts" / "bench_peer.py", self.work / "peer.sqlite3", port], log=self.work / "peer.log")
        wait_port(port, proc)
        settle()
        res = self.wrk(f"http://127.0.0.1:{port}", mode="gen", path="/v1/candidates", ok_status=202,
                       extra_env={"BENCH_KEYHDR": "1"})
        self.r["peer"] = res
        log(f"  {res.ok_rate:,.0f}/s p50 {res['p50_us'] / 1000:.1f} ms p99 {res['p99_us'] / 1000:.1f} ms ({res.answers()})")
        stop_process(proc)

    # ---- 4. delivery

    def simulator_ceiling(self):
        log("simulator ceiling: wrk POST /candidates straight to partner-sim (JWT, 16 connections)")
        sim = Simulator(self, "sim-ceiling")
        res = self.wrk(sim.url, mode="gen", path="/candidates", ok_status=201, conns=16,
                       extra_env={"BENCH_AUTH": "Bearer " + mint_jwt()})
        self.r["sim_ceiling"] = res
        log(f"  {res.ok_rate:,.0f}/s ({res.answers()})")
        sim.stop()

    def fill(self, relay: Relay, n: int, account: str | None = None) -> int:
        """POSTs n distinct candidates while delivery is held: max_backlog = n caps the outbox at n
        pending (then 503, which stops each wrk thread); wrk is ended once n are stored. Returns
        pending + in flight. `account`: fill that account's path (max_backlog is per account)."""
        held = "state IN ('pending', 'in_flight')" + (f" AND account = '{account}'" if account else "")
        progress = {"count": -1, "since": time.monotonic()}

        def filled() -> bool:  # n stored, or no progress for 2 s (every thread stopped at a 503)
            count = relay.count(held)
            if count != progress["count"]:
                progress.update(count=count, since=time.monotonic())
            return count >= n or (count > 0 and time.monotonic() - progress["since"] > 2)

        path = f"/v1/accounts/{account}/candidates" if account else "/v1/candidates"
        self.wrk(relay.url, mode="gen", path=path, ok_status=202, seconds=600, limit=n,
                 extra_env={"BENCH_KEYHDR": "1"}, until=filled)
        return relay.count(held)

    def delivery(self, label: str, storage: Path | None = None, accounts=0) -> dict:
        """A backlog of self.backlog events drained by 16 workers against a fresh simulator with
        the rate limit off. Delivery is held during the fill by a 1-per-day rate limit, then
        opened by SIGHUP. `accounts` > 0: the backlog is spread evenly over that many accounts
        (each its own api-key at the simulator, its own window and token)."""
        names = [f"a{i}" for i in range(accounts)]
        sim = Simulator(self, f"sim-{label}", api_keys=[f"key-{a}" for a in names])
        share = self.backlog // accounts if accounts else self.backlog
        relay = Relay(self, f"delivery-{label}", sim_url=sim.url, max_backlog=share, storage=storage, accounts=accounts)
        relay.start()
        log(f"delivery ({label}): filling a backlog of {share * max(1, accounts)}" + (f" over {accounts} accounts" if accounts else ""))
        t = time.monotonic()
        backlog = sum(self.fill(relay, share, a) for a in names) if accounts else self.fill(relay, self.backlog)
        log(f"  backlog {backlog} in {time.monotonic() - t:.1f}s; opening the gate (SIGHUP, rate_limit.requests: 0)")
        settle()
        sampler = RSSSampler(relay.proc.pid)
        t_open_ms = time.time() * 1000
        t_open = time.monotonic()
        relay.reload(rate=(0, 60))
        left = relay.wait_drained(max(120, backlog / 20))
        wall = time.monotonic() - t_open
        rss = sampler.stop()
        with relay.db() as conn:
            done, first, last = conn.execute(
                "SELECT COUNT(*), MIN(updated_at), MAX(updated_at) FROM events "
                "WHERE state IN ('delivered', 'linked') AND updated_at >= ?", (int(t_open_ms),)).fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM events WHERE state = 'dead'").fetchone()[0]
        # Leak check (empty outbox only): the same backlog once more through the same process.
        # Memory a delivery leaves behind shows as RSS that keeps growing round after round.
        rss_rounds = []
        if label == "empty":
            rss_rounds.append(relay.rss_kb())
            for _ in range(3):
                relay.reload(rate=GATE_CLOSED)
                self.fill(relay, self.backlog)
                relay.reload(rate=(0, 60))
                relay.wait_drained(max(120, self.backlog / 20))
                rss_rounds.append(relay.rss_kb())
            log(f"  leak check: RSS after each of 4 rounds of {self.backlog:,}: "
                + ", ".join(f"{mib(k):.1f}" for k in rss_rounds) + " MiB")
        relay.stop()
        sim.stop()
        span = ((last or 0) - (first or 0)) / 1000
        out = dict(backlog=backlog, delivered=done, left=left, dead=dead, wall=wall, accounts=accounts,
                   rate=(done - 1) / span if done and done > 1 and span > 0 else 0.0,
                   wall_rate=done / wall if wall else 0.0, rss_kb=rss, rss_rounds=rss_rounds)
        log(f"  {out['rate']:,.0f}/s between first and last recorded delivery; {done} delivered in {wall:.1f}s after "
            f"SIGHUP ({out['wall_rate']:,.0f}/s incl. reload and up to 1 s gate sleep); dead {dead}, left {left}; "
            f"peak RSS {mib(rss):.1f} MiB")
        return out

    # ---- 5. end to end

    def end_to_end(self):
        rate = 200
        n = rate * self.e2e_seconds
        log(f"end to end: {rate} events/s for {self.e2e_seconds}s, 16 workers, rate limit off")
        sim = Simulator(self, "sim-e2e")
        relay = Relay(self, "e2e", sim_url=sim.url, rate=(0, 60))
        relay.start()
        settle()
        statuses: dict[int, int] = {}
        lateness: list[float] = []
        lock = threading.Lock()
        senders = 8
        run = uuid.uuid4().hex[:12]
        t0 = time.monotonic() + 0.2

        def sender(k: int):
            conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
            for i in range(k, n, senders):
                at = t0 + i / rate
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                late = time.monotonic() - at
                key = f"{run}-e2e-{i}"
                try:
                    conn.request("POST", "/v1/candidates", body=self.template % (key, key, key),
                                 headers={"Content-Type": "application/json", "webhook-id": key})
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                except OSError:
                    status = -1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    lateness.append(late)
            conn.close()

        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(senders)]
        probe = DiskProbe(relay.dir, self.e2e_seconds + 0.5)
        cpu0 = (cpu_seconds(relay.proc.pid), cpu_seconds(sim.proc.pid))
        for th in threads:
            th.start()
        for th in threads:
            th.join(self.e2e_seconds + 120)
        disk = probe.result()
        relay.wait_drained(60)
        cpu = (cpu_seconds(relay.proc.pid) - cpu0[0], cpu_seconds(sim.proc.pid) - cpu0[1])
        with relay.db() as conn:
            spans = conn.execute("SELECT received_at, updated_at FROM events WHERE state IN ('delivered', 'linked')").fetchall()
            other = conn.execute("SELECT COUNT(*) FROM events WHERE state NOT IN ('delivered', 'linked')").fetchone()[0]
        lat = [u - r for r, u in spans]
        # The events over the goal, and how many of them were in flight while the probe's own
        # fdatasync in the same directory took over 10 ms: the disk's stall, not the daemon's.
        slow = [(r, u) for r, u in spans if u - r > 25]
        stalls = [(t0_ * 1000, (t0_ + d) * 1000) for t0_, d in disk["stalls"]]
        slow_in_stall = sum(1 for r, u in slow if any(a < u and b > r for a, b in stalls))
        relay.stop()
        sim.stop()
        self.r["e2e"] = dict(n=n, statuses=statuses, delivered=len(lat), undelivered=other, p50=pct(lat, 50),
                             p99=pct(lat, 99), max=max(lat) if lat else float("nan"),
                             late_p99=pct(lateness, 99) * 1000, cpu_ms=cpu[0] * 1000 / n, sim_cpu_ms=cpu[1] * 1000 / n,
                             disk=disk, slow=len(slow), slow_in_stall=slow_in_stall)
        e = self.r["e2e"]
        log(f"  p50 {e['p50']:.1f} ms p99 {e['p99']:.1f} ms max {e['max']:.0f} ms; {len(lat)}/{n} delivered; "
            f"answers {statuses}; sender lateness p99 {e['late_p99']:.1f} ms; CPU per event: daemon "
            f"{e['cpu_ms']:.2f} ms, simulator {e['sim_cpu_ms']:.2f} ms; disk probe fdatasync p99 {disk['p99']:.1f} ms, "
            f"max {disk['max']:.1f} ms; {len(slow)} events over 25 ms, {slow_in_stall} of them during a probe stall")

    # ---- 6. a 20 MB payload

    def big_payload(self, sim: Simulator):
        log("memory: one ~20 MB candidate (4 files of 3.75 MB decoded, 5 MB base64 each)")
        relay = Relay(self, "big", sim_url=sim.url)
        relay.start()
        post = lambda body, key: self.post(relay.port, body, key)
        key = "warmup-" + uuid.uuid4().hex[:8]
        post(self.template % (key, key, key), key)  # takes the one send the closed gate lets through
        time.sleep(1.0)
        files = [{"name": f"portfolio-{i}.pdf", "file": base64.b64encode(os.urandom(3_750_000)).decode()} for i in range(4)]
        key = "big-" + uuid.uuid4().hex[:8]
        body = json.dumps({"position_uid": "11.11", "partner_candidate_id": key, "first_name": "Ada",
                           "last_name": "Example", "email": f"{key}@example.test", "files": files})
        size = len(body)
        del files
        base = relay.rss_kb()
        sampler = RSSSampler(relay.proc.pid, interval=0.002)
        status = post(body, key)
        peak_in = sampler.stop()
        time.sleep(0.5)
        after_in = relay.rss_kb()
        base_out = relay.rss_kb()
        sampler = RSSSampler(relay.proc.pid, interval=0.002)
        relay.reload(rate=(0, 60))
        relay.wait_drained(60, poll=0.05)
        peak_out = sampler.stop()
        state = relay.count("state = 'delivered'")
        # Bursts: what stays with the process once large candidates have come and gone (an
        # allocator that keeps large freed blocks in its heaps shows here, not in the peaks).
        burst_answers = []
        for burst in range(3):
            def one(k, burst=burst):
                bkey = f"burst{burst}-{k}-" + uuid.uuid4().hex[:6]
                burst_answers.append(post(body.replace(key, bkey), bkey))
            threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        relay.wait_drained(120, poll=0.1)
        time.sleep(2)
        after_bursts = relay.rss_kb()
        burst_stored = relay.count("partner_candidate_id LIKE 'burst%' AND state = 'delivered'")
        relay.stop()
        # A backlog of large candidates: 16 stored, then 16 workers deliver them to a partner
        # that takes 2 s to answer, so each body would be held at once were nothing to stop it.
        slow = Simulator(self, "sim-slow")
        request = urllib.request.Request(slow.url + "/_sim/faults", data=json.dumps({"latencyMs": 2000}).encode(),
                                         method="PUT", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        relay = Relay(self, "big-backlog", sim_url=slow.url)
        relay.start()
        backlog_answers = []
        for k in range(16):
            bkey = f"backlog{k}-" + uuid.uuid4().hex[:6]
            backlog_answers.append(self.post(relay.port, body.replace(key, bkey), bkey))
        time.sleep(0.5)
        backlog_base = relay.rss_kb()
        sampler = RSSSampler(relay.proc.pid, interval=0.01)
        t_open = time.monotonic()
        relay.reload(rate=(0, 60))
        backlog_left = relay.wait_drained(180, poll=0.1)
        backlog_wall = time.monotonic() - t_open
        backlog_peak = sampler.stop()
        backlog_delivered = relay.count("state = 'delivered'")
        relay.stop()
        slow.stop()
        self.r["big"] = dict(size=size, status=status, base=base, peak_in=peak_in, after_in=after_in, base_out=base_out,
                             peak_out=peak_out, delivered=state >= 2, after_bursts=after_bursts,
                             burst_sent=len(burst_answers), burst_accepted=burst_answers.count(202), burst_delivered=burst_stored,
                             backlog_accepted=backlog_answers.count(202), backlog_delivered=backlog_delivered,
                             backlog_left=backlog_left, backlog_base=backlog_base, backlog_peak=backlog_peak,
                             backlog_wall=backlog_wall,
                             burst_refused=", ".join(f"{n} × {c}" for c, n in sorted(collections.Counter(
                                 a for a in burst_answers if a != 202).items())) or "none")
        log(f"  body {size / 1e6:.1f} MB answered {status}; RSS {mib(base):.1f} -> peak {mib(peak_in):.1f} MiB while "
            f"received and stored; delivery peak {mib(peak_out):.1f} MiB (delivered: {state >= 2}); after 3 bursts of 8 "
            f"({burst_answers.count(202)} accepted, {burst_stored} delivered): RSS {mib(after_bursts):.1f} MiB; a backlog of "
            f"16 delivered to a partner taking 2 s in {backlog_wall:.1f} s: RSS {mib(backlog_base):.1f} -> peak "
            f"{mib(backlog_peak):.1f} MiB")

    def post(self, port: int, body: str, key: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/candidates", body=body.encode(),
                     headers={"Content-Type": "application/json", "webhook-id": key})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status

    # ---- 7. start-up and shutdown

    def lifecycle(self, sim: Simulator, label="empty", storage: Path | None = None, runs=None) -> dict:
        runs = runs or self.starts
        log(f"start-up and idle SIGTERM ({label} outbox): {runs} runs")
        ready, healthz, exits, codes = [], [], [], []
        for i in range(runs):
            port = free_port()
            relay = Relay(self, f"life-{label}-{i}", sim_url=sim.url, rate=(0, 60), port=port,
                          storage=storage or (self.work / f"life-{label}.sqlite3"))
            t = relay.start(poll_port=port)
            ready.append(t["ready"] * 1000)
            if "healthz" in t:
                healthz.append(t["healthz"] * 1000)
            time.sleep(1.0)
            took = relay.stop()
            exits.append(took * 1000 if took is not None else float("inf"))
            codes.append(relay.proc.returncode)
        out = dict(ready=ready, healthz=healthz, exits=exits, codes=codes)
        log(f"  READY=1 ms {[round(x) for x in ready]}; /healthz 200 ms {[round(x) for x in healthz]}; "
            f"exit ms {[round(x) for x in exits]}; exit codes {codes}")
        return out

    # ---- 8. growth

    def growth(self, sim: Simulator):
        n = self.growth_rows
        label = f"{n:,}".replace(",", "_")
        storage = self.work / "growth.sqlite3"
        relay = Relay(self, "growth-init", sim_url=sim.url, storage=storage)
        relay.start()  # creates and migrates the outbox
        relay.stop()
        log(f"growth: inserting {n:,} delivered events (payload erased) into the stopped daemon's outbox")
        t = time.monotonic()
        conn = sqlite3.connect(storage, isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        now_ms = int(time.time() * 1000)
        start_ms = now_ms - 30 * 86400_000
        step = (22 * 86400_000) // max(n, 1)  # received 30..8 days ago: payloads already erased (7 d)
        rnd = random.Random(1)
        response = json.dumps({"uid": "00.AAA", "position_uid": "11.11", "status": "New", "time_created":
                               "2026-01-01T00:00:00Z", "time_last_status_changed": "2026-01-01T00:00:00Z",
                               "current_steps": [], "completed_steps": []})

        def events():
            for i in range(n):
                received = start_ms + i * step
                updated = received + 150
                eid = f"evt_{received:012x}{rnd.getrandbits(64):016x}"
                yield (eid, f"growth-{i}", hashlib.sha256(str(i).encode()).hexdigest(), "11.11", f"growth-{i}",
                       f"cand-{i}", received, received, updated, response, updated + 7 * 86400_000)

        conn.executemany(
            "INSERT INTO events (id, idempotency_key, body_sha256, state, attempts, lease, position_uid, "
            "partner_candidate_id, candidate_uid, received_at, budget_started_at, updated_at, "
            "next_attempt_at, lease_expires_at, last_status, partner_response, payload_erased_at) "
            "VALUES (?, ?, ?, 'delivered', 1, 1, ?, ?, ?, ?, ?, ?, NULL, NULL, 201, ?, ?)", events())
        conn.execute("INSERT INTO attempts (event_id, attempt, at, outcome, status, error, latency_ms) "
                     "SELECT id, 1, updated_at, 'delivered', 201, NULL, 150 FROM events")
        conn.execute("COMMIT")
        conn.close()
        size = storage.stat().st_size
        settle()
        log(f"  {time.monotonic() - t:.1f}s, outbox {size / 1e6:.0f} MB")
        self.r["growth_file_mb"] = size / 1e6
        self.r["growth_lifecycle"] = self.lifecycle(sim, label=f"growth-{label}", storage=storage, runs=1)
        self.r["growth_delivery"] = self.delivery("growth", storage=storage)
        log(f"growth: ingest with {n:,}+ events stored")
        relay = Relay(self, "growth-ingest", sim_url=sim.url, storage=storage)
        relay.start()
        settle()
        sampler = RSSSampler(relay.proc.pid)
        res = self.ingest_wrk(relay)
        self.r["growth_rss_kb"] = sampler.stop()
        self.r["growth_ingest"] = res
        log(f"  {res.ok_rate:,.0f}/s p50 {res['p50_us'] / 1000:.1f} ms p99 {res['p99_us'] / 1000:.1f} ms ({res.answers()})")
        relay.stop()

    # ---- the run

    def run(self):
        load0 = os.getloadavg()
        started = time.monotonic()
        self.storage_ceiling()
        sim = Simulator(self, "sim-ingest")  # partner for the relays whose delivery is held
        self.ingest(sim)
        self.peer()
        self.simulator_ceiling()
        self.r["delivery"] = self.delivery("empty")
        self.r["delivery_accounts"] = self.delivery("accounts", accounts=20)
        self.end_to_end()
        self.big_payload(sim)
        self.r["lifecycle"] = self.lifecycle(sim)
        if self.growth_rows:
            self.growth(sim)
        sim.stop()
        self.r["load"] = (load0, os.getloadavg())
        self.r["elapsed"] = time.monotonic() - started
        self.table()

    # ---- the report

    def machine(self) -> list[str]:
        cpu = "unknown"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        df = subprocess.run(["df", "--output=source,fstype", str(self.work)], capture_output=True, text=True).stdout.split()
        source, fstype = (df[-2], df[-1]) if len(df) >= 2 else ("?", "?")
        disk = f"{fstype} on {source}"
        dev = Path(source).name
        base = re.sub(r"p?\d+$", "", dev) if not dev.startswith("vd") and not dev.startswith("sd") else re.sub(r"\d+$", "", dev)
        rot = Path(f"/sys/block/{base}/queue/rotational")
        if rot.exists():
            kind = "virtio" if base.startswith("vd") else ("NVMe" if base.startswith("nvme") else "block")
            disk += f" ({kind}; kernel rotational flag {rot.read_text().strip()}, which virtual disks often misreport)"
        load0, load1 = self.r["load"]
        return [
            f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}",
            f"- storage for every outbox and SQLite file: {self.work} — {disk}",
            f"- daemon: {self.source_binary.relative_to(REPO) if self.source_binary.is_relative_to(REPO) else self.source_binary} "
            f"(release, built {self.built}) at {self.git}{' + uncommitted changes' if self.dirty else ''}; "
            f"wrk -t2 -c64 -d{self.wrk_seconds}s; "
            f"{'--quick' if self.quick else 'full'} run, {self.r['elapsed']:.0f} s",
            f"- load average at start {load0[0]:.2f}, at end {load1[0]:.2f} (other work on this machine makes figures noisy)",
        ]

    def table(self):
        r = self.r
        rows: list[Row] = []
        hz = r["healthz"].ok_rate
        s1, s64 = r["storage_1"], r["storage_64"]
        ui = r["ingest_unsigned"]
        si = r["ingest_signed"]
        peer = r.get("peer")
        rows.append(Row("HTTP ceiling: wrk GET /healthz on the daemon", fmt_rate(hz),
                        f"p50 {r['healthz']['p50_us'] / 1000:.2f} ms, p99 {r['healthz']['p99_us'] / 1000:.2f} ms", "", "", "ceiling"))
        rows.append(Row("Storage ceiling: Python sqlite3, WAL FULL, 2 KB rows, 1 per commit", fmt_rate(s1, " rows/s"), "", "", "", "ceiling"))
        rows.append(Row("Storage ceiling: same, 64 rows per commit", fmt_rate(s64, " rows/s"), "", "", "", "ceiling"))
        s1p = r["storage_1_p2048"]
        rows.append(Row("Storage ceiling: same, 1 per commit, at the outbox's 2 KB page size (SQLite's default is 4 KB)",
                        fmt_rate(s1p, " rows/s"), fmt_rate(s1, " rows/s"), f"{s1p / s1:.2f}", "", "reference"))
        rows.append(Row("Ingest, unsigned: durable 202/s vs /healthz", fmt_rate(ui.ok_rate), fmt_rate(hz),
                        f"{ui.ok_rate / hz:.2f}", "≥ 0.50", verdict(ui.ok_rate / hz >= 0.5)))
        rows.append(Row("Ingest, unsigned vs 1 row/commit FULL", fmt_rate(ui.ok_rate), fmt_rate(s1, " rows/s"),
                        f"{ui.ok_rate / s1:.2f}×", "≥ 3×", verdict(ui.ok_rate / s1 >= 3)))
        rows.append(Row("Ingest, unsigned vs 64 rows/commit FULL", fmt_rate(ui.ok_rate), fmt_rate(s64, " rows/s"),
                        f"{ui.ok_rate / s64:.2f}", "", "—"))
        rows.append(Row("Ingest, unsigned vs 1 row/commit FULL at 2 KB pages", fmt_rate(ui.ok_rate), fmt_rate(s1p, " rows/s"),
                        f"{ui.ok_rate / s1p:.2f}×", "", "—"))
        if peer:
            rows.append(Row("Ingest, unsigned vs naive Python peer (Starlette + uvicorn, 1 commit/request)",
                            fmt_rate(ui.ok_rate), fmt_rate(peer.ok_rate), f"{ui.ok_rate / peer.ok_rate:.1f}×" if peer.ok_rate else "∞",
                            "≥ 3×", verdict(peer.ok_rate == 0 or ui.ok_rate / peer.ok_rate >= 3)))
        else:
            rows.append(Row("Ingest vs naive Python peer", "not measured", "", "", "≥ 3×", "not measured"))
        rows.append(Row("Ingest, unsigned: latency p50 / p99 (64 connections)",
                        f"{ui['p50_us'] / 1000:.1f} / {ui['p99_us'] / 1000:.1f} ms",
                        f"peer {peer['p50_us'] / 1000:.1f} / {peer['p99_us'] / 1000:.1f} ms" if peer else "", "", "", "—"))
        rows.append(Row("Ingest, signed (Standard Webhooks): durable 202/s vs /healthz", fmt_rate(si.ok_rate), fmt_rate(hz),
                        f"{si.ok_rate / hz:.2f}", "≥ 0.50", verdict(si.ok_rate / hz >= 0.5)))
        rows.append(Row("Ingest, signed vs 1 row/commit FULL", fmt_rate(si.ok_rate), fmt_rate(s1, " rows/s"),
                        f"{si.ok_rate / s1:.2f}×", "≥ 3×", verdict(si.ok_rate / s1 >= 3)))
        rows.append(Row("Ingest, signed: latency p50 / p99", f"{si['p50_us'] / 1000:.1f} / {si['p99_us'] / 1000:.1f} ms",
                        f"unsigned {ui.ok_rate:,.0f}/s", f"{si.ok_rate / ui.ok_rate:.2f} of unsigned", "", "—"))
        sc = r["sim_ceiling"].ok_rate
        d = r["delivery"]
        rows.append(Row(f"Delivery, 1 account: backlog of {d['backlog']:,} drained, 16 workers, rate limit off",
                        fmt_rate(d["rate"]), f"{fmt_rate(sc)} (wrk → simulator, 16 conn.)", f"{d['rate'] / sc:.2f}",
                        "≥ 0.50", verdict(d["rate"] / sc >= 0.5 and d["left"] == 0)))
        da = r["delivery_accounts"]
        rows.append(Row(f"Delivery, {da['accounts']} accounts: backlog of {da['backlog']:,} spread evenly, 16 workers, rate limit off",
                        fmt_rate(da["rate"]), f"{fmt_rate(d['rate'])} (1 account)", f"{da['rate'] / d['rate']:.2f}" if d["rate"] else "",
                        "≥ 0.80 of 1 account", verdict(d["rate"] > 0 and da["rate"] / d["rate"] >= 0.8 and da["left"] == 0)))
        e = r["e2e"]
        rows.append(Row(f"End to end at 200 events/s for {self.e2e_seconds} s: received_at → updated_at, p50 / p99",
                        f"{e['p50']:.1f} / {e['p99']:.1f} ms",
                        f"{e['delivered']}/{e['n']} delivered; daemon CPU {e['cpu_ms']:.2f} ms per event; the disk's own "
                        f"fdatasync (probe): p99 {e['disk']['p99']:.1f} ms, max {e['disk']['max']:.1f} ms", "",
                        "p99 ≤ 25 ms", verdict(e["p99"] <= 25 and e["delivered"] == e["n"])))
        rows.append(Row("RSS idle (fresh start, empty outbox)", f"{mib(r['rss_idle_kb']):.1f} MiB", "", "", "", "—"))
        rows.append(Row("RSS peak, unsigned ingest at 64 connections", f"{mib(r['rss_ingest_kb']):.1f} MiB", "", "",
                        "≤ 64 MB", verdict(r["rss_ingest_kb"] * 1024 <= 64e6)))
        rows.append(Row("RSS peak, signed ingest", f"{mib(r['rss_ingest_signed_kb']):.1f} MiB", "", "",
                        "≤ 64 MB", verdict(r["rss_ingest_signed_kb"] * 1024 <= 64e6)))
        rows.append(Row("RSS peak, delivery drain (16 workers)", f"{mib(d['rss_kb']):.1f} MiB", "", "",
                        "≤ 64 MB", verdict(d["rss_kb"] * 1024 <= 64e6)))
        rounds = d["rss_rounds"]
        if rounds:
            # A leak grows RSS by about the same amount every round; the allocator's free lists
            # move it a few MB either way (heaptrack over 6 rounds: no heap growth at all).
            per_round = (rounds[-1] - rounds[0]) * 1024 / (len(rounds) - 1)
            rows.append(Row(f"Leak check: RSS after draining {d['backlog']:,} events, then {len(rounds) - 1} times more in "
                            "the same process", " → ".join(f"{mib(k):.1f}" for k in rounds) + " MiB", "",
                            f"{per_round / 1e6:+.1f} MB per round ({per_round / d['backlog']:+.0f} B per delivery)",
                            "≤ +3 MB per round (ours)", verdict(per_round <= 3e6)))
        b = r["big"]
        add_in = (b["peak_in"] - b["base"]) * 1024
        add_out = (b["peak_out"] - b["base_out"]) * 1024
        rows.append(Row(f"20 MB payload ({b['size'] / 1e6:.1f} MB body) received and stored: RSS added",
                        f"+{add_in / 1e6:.1f} MB (answer {b['status']})", f"{mib(b['base']):.1f} MiB before",
                        f"{add_in / b['size']:.2f}× size", "≤ 3× size", verdict(b["status"] == 202 and add_in <= 3 * b["size"])))
        rows.append(Row("20 MB payload delivered to the simulator: RSS added", f"+{add_out / 1e6:.1f} MB",
                        f"{mib(b['base_out']):.1f} MiB before", f"{add_out / b['size']:.2f}× size", "≤ 3× size",
                        verdict(b["delivered"] and add_out <= 3 * b["size"])))
        added = (b["backlog_peak"] - b["backlog_base"]) * 1024
        rows.append(Row(f"A backlog of {b['backlog_accepted']} stored 20 MB candidates delivered by 16 workers to a partner "
                        f"taking 2 s an answer ({b['backlog_delivered']} delivered in {b['backlog_wall']:.1f} s): RSS added",
                        f"+{added / 1e6:.1f} MB", f"{mib(b['backlog_base']):.1f} MiB before", f"{added / b['size']:.2f}× one payload",
                        "≤ +134 MB (ours: twice the 64 MiB payload budget)",
                        verdict(added <= 2 * 64 * 1048576 and b["backlog_left"] == 0 and b["backlog_delivered"] == b["backlog_accepted"])))
        rows.append(Row(f"RSS after 3 bursts of 8 concurrent 20 MB candidates ({b['burst_accepted']} of {b['burst_sent']} "
                        f"accepted; refused: {b['burst_refused']}), all delivered, 2 s later", f"{mib(b['after_bursts']):.1f} MiB",
                        f"{mib(b['base']):.1f} MiB before any", "", "≤ 64 MB (ours)",
                        verdict(b["after_bursts"] * 1024 <= 64e6 and b["burst_delivered"] == b["burst_accepted"])))
        lc = r["lifecycle"]
        ready = statistics.median(lc["ready"])
        rows.append(Row(f"Start-up: spawn → READY=1, worst of {len(lc['ready'])} (the first creates the outbox)",
                        f"{max(lc['ready']):.0f} ms", f"median {ready:.0f} ms", "", "≤ 300 ms", verdict(max(lc["ready"]) <= 300)))
        if lc["healthz"]:
            rows.append(Row("Start-up: spawn → first /healthz 200 (median)", f"{statistics.median(lc['healthz']):.0f} ms",
                            f"max {max(lc['healthz']):.0f} ms", "", "", "—"))
        ex = statistics.median(lc["exits"])
        rows.append(Row(f"Idle SIGTERM → exit, worst of {len(lc['exits'])}", f"{max(lc['exits']):.0f} ms",
                        f"median {ex:.0f} ms; all: {', '.join(f'{x:.0f}' for x in lc['exits'])} ms; exit codes "
                        f"{sorted(set(lc['codes']))}", "", "≤ 1 s", verdict(max(lc["exits"]) <= 1000 and set(lc["codes"]) == {0})))
        hs = r["held_stop"]
        rows.append(Row(f"SIGTERM → exit, not idle: {hs['pending']:,} events held by the rate limit, {hs['parked']} of them "
                        "claimed by workers waiting for a rate-limit place (nothing sent)",
                        "killed after 30 s" if hs["seconds"] is None else f"{hs['seconds'] * 1000:.0f} ms",
                        f"exit code {hs['code']}; shutdown_grace_seconds 10", "", "(idle goal: 1 s)", "—"))
        if self.growth_rows:
            g = r["growth_ingest"]
            gd = r["growth_delivery"]
            n = f"{self.growth_rows:,}"
            rows.append(Row(f"Growth: ingest (unsigned) with {n} events stored ({r['growth_file_mb']:.0f} MB outbox)",
                            fmt_rate(g.ok_rate), f"{fmt_rate(ui.ok_rate)} empty", f"{g.ok_rate / ui.ok_rate:.2f}",
                            "≥ 0.80", verdict(g.ok_rate / ui.ok_rate >= 0.8)))
            rows.append(Row(f"Growth: delivery with {n} events stored", fmt_rate(gd["rate"]), f"{fmt_rate(d['rate'])} empty",
                            f"{gd['rate'] / d['rate']:.2f}" if d["rate"] else "—", "≥ 0.80",
                            verdict(d["rate"] > 0 and gd["rate"] / d["rate"] >= 0.8 and gd["left"] == 0)))
            gl = r["growth_lifecycle"]
            rows.append(Row(f"Growth: start-up → READY=1 with {n} events stored", f"{gl['ready'][0]:.0f} ms",
                            f"{ready:.0f} ms empty", "", "≤ 300 ms", verdict(gl["ready"][0] <= 300)))
            rows.append(Row(f"Growth: RSS peak, ingest with {n} events stored", f"{mib(r['growth_rss_kb']):.1f} MiB", "", "",
                            "≤ 64 MB", verdict(r["growth_rss_kb"] * 1024 <= 64e6)))
        else:
            rows.append(Row("Growth: ingest and delivery with 1,000,000 events stored", "skipped (--quick)", "", "",
                            "≥ 0.80", "not measured"))

        lines = ["# candidate-relay benchmark", ""] + self.machine() + ["",
                 "| # | what | figure | ceiling / reference (same run) | ratio | goal | result |",
                 "|---|---|---|---|---|---|---|"]
        for i, row in enumerate(rows, 1):
            lines.append(f"| {i} | {row.what} | {row.figure} | {row.ceiling} | {row.ratio} | {row.goal} | {row.result} |")
        ui_rows = r["ingest_unsigned_rows"]
        lines += ["", "Notes:"]
        notes = [
            "Daemon `logging.level: warning` during every run (a log line per event costs CPU); 16 delivery workers; "
            "every daemon and simulator on loopback; outboxes on the disk named above.",
            "Ingest figures count only `202 Accepted` answers (each sent after its event's fsync'd commit) over wrk's "
            f"measured duration; rows found in the unsigned run's outbox afterwards: {ui_rows:,} (202s counted: "
            f"{ui['ok']:,}; the difference is requests still in flight when wrk stopped). Unsigned: {ui.answers()}. "
            f"Signed: {si.answers()}.",
            "Unsigned load: wrk's Lua builds a distinct ~2 KB candidate per request (`webhook-id` = its key, so "
            "the idempotency lookup runs) from a template. Signed load: wrk has no HMAC, so Python pre-generated "
            f"{r['signed_generated']:,} signed requests (HMAC-SHA256 Standard Webhooks, timestamp at generation) and "
            "the same Lua script cycles through them from a file (a wrap would show as `200 duplicate` answers).",
            "During ingest runs delivery is held by `partner.rate_limit: 1 per 86400 s` (one event goes out), so "
            "ingest is measured alone, as with the production default of 100 requests/60 s. The wrk client shares "
            "the machine's CPUs with the daemon, and so does the peer's.",
            "Storage ceiling: Python's sqlite3 (the system libsqlite3), `journal_mode=WAL`, `synchronous=FULL`, a table "
            "with a text primary key and a unique key, the same ~2 KB candidate bodies, at SQLite's default page size "
            "(4 KB): the issue's ceiling. Its row at 2 KB pages, the daemon's for a new outbox, is there so that what "
            "the daemon gains from its page size is not taken for anything else.",
            f"Delivery: {d['backlog']:,} events posted while held, then SIGHUP sets `rate_limit.requests: 0`; the figure is "
            "delivered events ÷ the span between the first and last recorded `updated_at` (not counting up to 1 s for "
            f"sleeping workers to notice the reload); wall clock from SIGHUP to empty backlog: {d['wall']:.1f} s "
            f"({d['wall_rate']:,.0f}/s). Dead: {d['dead']}. Ceiling: wrk posting distinct valid candidates with a valid "
            "JWT straight to a fresh `partner-sim --rate-limit 0` at 16 connections (= the daemon's 16 workers); "
            f"{r['sim_ceiling'].answers()}.",
            f"End to end: a Python sender (8 threads, keep-alive) at a steady 200/s for {self.e2e_seconds} s (sender "
            f"lateness p99 {e['late_p99']:.1f} ms; answers {e['statuses']}); latency = `updated_at − received_at` of "
            "each delivered record, read from the outbox (ms resolution; updated_at is the outcome's time, taken when "
            "the partner's answer is in, before the outcome's commit). CPU per event: the daemon's and the simulator's "
            "user + system time (/proc) from the first send to the drained outbox, over the events sent "
            f"({e['sim_cpu_ms']:.2f} ms for the simulator). Disk probe: a child process `fdatasync`ing 4 KiB every "
            f"20 ms in the outbox's directory during the run ({e['disk']['n']} syncs); {e['slow']} events took over "
            f"25 ms, {e['slow_in_stall']} of them while one of the probe's syncs took over 10 ms (the disk's stall, "
            "which every fsync'd commit of the daemon waits out too).",
            "RSS: VmRSS/VmHWM from /proc (peak via `clear_refs` reset of VmHWM plus 20 ms sampling). 20 MB payload: "
            "4 `files[]` of 3.75 MB decoded each (the partner's limit is 6 MB per file), delivery held while it is "
            "received and stored, then opened; RSS added = peak − RSS just before. Bursts: then the same daemon, "
            "its delivery open, gets 3 rounds of 8 such candidates at once (distinct keys): 202 within the ingest "
            "body budget (64 MiB), 503 past it; VmRSS 2 s after every accepted one is delivered. Backlog: a fresh daemon "
            "stores 16 of them with delivery held, then delivers them to a simulator answering after 2 s.",
            "Leak check: after the 1-account drain, the same process is filled (delivery held) and drained three "
            "times more; VmRSS after each drain. A leak grows it round after round (a cancelled `Task.sleep` once "
            "added ~17 MB per 20,000 deliveries, every round); glibc's free lists move it a few MB either way "
            "(heaptrack over six such rounds: peak heap 10 MB, nothing left allocated that grows with the rounds).",
            "Start-up: spawn → `READY=1` on a NOTIFY_SOCKET datagram socket; /healthz polled every 1 ms on a "
            "pre-chosen port; SIGTERM after 1 s idle → process exit.",
            "Accounts (CONTRACT §8): the 20-account row fills each account's path with 1/20 of the backlog "
            "(`ingest.max_backlog` is per account) against a simulator that knows the 20 api-keys; each account "
            "mints its own token and keeps its own window. Its goal (≥ 0.80 of the 1-account rate) is ours, not the "
            "issue's: the issue asks only that both figures be shown.",
        ]
        if self.growth_rows:
            gd = r["growth_delivery"]
            notes.append(f"Growth: {self.growth_rows:,} `delivered` events (payload erased, one attempt row each, "
                         "received 30 to 8 days ago) inserted with sqlite3 into the stopped daemon's outbox "
                         f"({r['growth_file_mb']:.0f} MB), then delivery ({gd['backlog']:,} backlog, dead "
                         f"{gd['dead']}) and ingest rerun on it.")
        slow = [f"{name} {'killed after the timeout' if took is None else f'{took:.1f} s'}"
                for name, took in STOPS if took is None or took > 1]
        if slow:
            notes.append("SIGTERM → exit over 1 s elsewhere in the run (not idle; shutdown_grace_seconds is 10): "
                         + "; ".join(slow) + ".")
        lines += [f"- {n}" for n in notes + self.notes]
        text = "\n".join(lines) + "\n"
        print(text)
        if self.args.out:
            Path(self.args.out).write_text(text)
            log(f"table written to {self.args.out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, a 3,000 backlog, no 1M growth step (smoke run)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--binary", default=str(REPO / ".build" / "release" / "candidate-relay"))
    parser.add_argument("--peer-python", help="python of the venv with starlette and uvicorn (scripts/bench sets it)")
    parser.add_argument("--storage-dir", help="parent of the temporary directory (default /tmp unless it is tmpfs)")
    parser.add_argument("--backlog", type=int, help="delivery backlog (default 20000; --quick 3000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (outboxes, logs) for inspection")
    parser.add_argument("--growth-rows", type=int, help="events stored for the growth step (default 1000000; --quick 0 = skip)")
    args = parser.parse_args()
    if not Path(args.binary).exists():
        sys.exit(f"bench: no binary at {args.binary}; run scripts/bench (it builds the release binary)")
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is not installed; run scripts/bench (it installs it) or apt-get install -y wrk")
    Bench(args).run()


if __name__ == "__main__":
    main()
