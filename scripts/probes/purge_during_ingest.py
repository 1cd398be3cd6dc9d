"""Does a big admin command stall webhooks? A sender posts at a steady rate to a daemon whose
outbox holds --rows delivered events with 2 KB payloads, and records each answer's status and
latency while `purge --older-than 1d` (--mode cli) or `backup` (--mode backup) runs from the
CLI; --mode idle runs nothing. --alone times the purge on the stopped daemon's outbox instead.
CANDIDATE_RELAY_BIN: the binary (use a release build); PURGE_BIN: another one for the command.
Example: CANDIDATE_RELAY_BIN=$PWD/.build/release/candidate-relay python3 scripts/probes/purge_during_ingest.py --rows 300000"""
import sys, os, time, json, sqlite3, threading, hashlib, random, subprocess, argparse
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reliability"))
import lib

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=300000)
ap.add_argument("--mode", choices=["cli", "startup", "reload", "idle", "backup"], default="cli")
ap.add_argument("--rate", type=float, default=100)
ap.add_argument("--alone", action="store_true")
a = ap.parse_args()

lib.install_signal_handlers()
work = lib.make_workdir("purge")
sim = lib.Simulator().start()
relay = lib.Relay(work, {}, sim=sim)
relay.start(); relay.stop()
n = a.rows
conn = sqlite3.connect(relay.db_path, isolation_level=None)
conn.execute("PRAGMA synchronous=OFF"); conn.execute("BEGIN")
now_ms = int(time.time() * 1000)
rnd = random.Random(1)
body = json.dumps({"position_uid": "11.11", "first_name": "A", "last_name": "B", "email": "a@example.com", "note": "x" * 1900})
ids = []
def events():
    for i in range(n):
        received = now_ms - 2 * 86400_000 + i
        eid = f"evt_{received:012x}{rnd.getrandbits(64):016x}"
        ids.append(eid)
        yield (eid, f"g-{i}", hashlib.sha256(str(i).encode()).hexdigest(), "11.11", f"g-{i}", f"c-{i}", received, received, received + 150, '{"uid":"c"}')
conn.executemany("INSERT INTO events (id, idempotency_key, body_sha256, state, attempts, lease, position_uid, partner_candidate_id, candidate_uid, received_at, budget_started_at, updated_at, next_attempt_at, lease_expires_at, last_status, partner_response) VALUES (?, ?, ?, 'delivered', 1, 1, ?, ?, ?, ?, ?, ?, NULL, NULL, 201, ?)", events())
conn.executemany("INSERT INTO payloads (event_id, body) VALUES (?, ?)", ((i, body.encode()) for i in ids))
conn.execute("INSERT INTO attempts (event_id, attempt, at, outcome, status, error, latency_ms) SELECT id, 1, updated_at, 'delivered', 201, NULL, 150 FROM events")
conn.execute("COMMIT"); conn.close(); os.sync()
print(f"outbox {os.path.getsize(relay.db_path)/1e6:.0f} MB with {n} delivered events with payloads", flush=True)
if a.alone:
    for i in range(2):
        import shutil
        t = time.monotonic()
        p = subprocess.run([os.environ.get("PURGE_BIN", lib.BINARY), "purge", "--older-than", "1d", "--config", relay.config_path], capture_output=True, text=True, cwd=work, env={k: v for k, v in os.environ.items() if k != "CANDIDATE_RELAY_BIN"})
        print(f"alone purge {i}: {time.monotonic()-t:.1f}s {p.stdout.strip()}", flush=True)
    sim.stop(); lib.cleanup(); sys.exit(0)
if a.mode == "startup":
    relay.config["storage"]["payload_retention_days"] = 1
    relay.write_config()
relay.start()
results = []
stop = threading.Event()
def sender():
    global T0
    i = 0
    t0 = time.monotonic(); T0 = time.time()
    while not stop.is_set():
        target = t0 + i / a.rate
        d = target - time.monotonic()
        if d > 0: time.sleep(d)
        c = lib.candidate(10_000_000 + i)
        s = time.monotonic()
        try:
            r = lib.signed_post(relay, c, timeout=30)
            st = r[0] if isinstance(r, tuple) else getattr(r, "status", r)
        except Exception as e:
            st = type(e).__name__
        results.append((s - t0, st, time.monotonic() - s))
        i += 1
threads = [threading.Thread(target=sender) for _ in range(1)]
for t in threads: t.start()
time.sleep(3)
t_act = time.monotonic()
if a.mode == "cli":
    p = subprocess.run([lib.BINARY, "purge", "--older-than", "1d", "--config", relay.config_path], capture_output=True, text=True, cwd=work, env={k: v for k, v in os.environ.items() if k != "CANDIDATE_RELAY_BIN"})
    print(f"purge rc={p.returncode} in {time.monotonic()-t_act:.1f}s: {p.stdout.strip()[:300]} {p.stderr.strip()[:300]}", flush=True)
elif a.mode == "backup":
    lockstats = {"busy": 0, "ok": 0, "longest": 0.0, "maxbegin": 0.0}
    def lockprobe():
        c = sqlite3.connect(relay.db_path, timeout=0, isolation_level=None)
        busy_since = None
        while not stop.is_set():
            t = time.monotonic()
            try:
                c.execute("BEGIN IMMEDIATE"); c.execute("ROLLBACK"); lockstats["ok"] += 1
                lockstats["maxbegin"] = max(lockstats["maxbegin"], time.monotonic() - t)
                if busy_since: lockstats["longest"] = max(lockstats["longest"], t - busy_since); busy_since = None
            except sqlite3.OperationalError:
                lockstats["busy"] += 1; busy_since = busy_since or t
            time.sleep(0.01)
    lt = threading.Thread(target=lockprobe); lt.start()
    p = subprocess.run([lib.BINARY, "backup", os.path.join(work, "copy.sqlite3"), "--config", relay.config_path], capture_output=True, text=True, cwd=work, env={k: v for k, v in os.environ.items() if k != "CANDIDATE_RELAY_BIN"})
    print(f"backup rc={p.returncode} in {time.monotonic()-t_act:.1f}s: {p.stdout.strip()[:300]} {p.stderr.strip()[:300]}", flush=True)
elif a.mode == "reload":
    relay.config["storage"]["payload_retention_days"] = 1
    relay.write_config(); relay.signal(1)
time.sleep(15)
stop.set()
if a.mode == "backup": lt.join(); print("lock probe", lockstats)
for t in threads: t.join()
relay.stop(); sim.stop()
lat = sorted(x[2] for x in results)
bad = [x for x in results if x[1] not in (202,)]
print(f"posts {len(results)}, non-202 {len(bad)}: {sorted(set(str(x[1]) for x in bad))}; p50 {lat[len(lat)//2]*1000:.1f} ms max {lat[-1]*1000:.0f} ms")
slow = [x for x in results if x[2] > 0.2]
print("t0 (unix)", T0); print("slow or bad (t, status, latency):", [(round(x[0],1), x[1], round(x[2],2)) for x in (slow + bad)[:15]])
for ev in relay.events():
    if ev.get("event") in ("storage.failed", "retention.pruned", "storage.recovered", "relay.started", "relay.starting", "outbox.opened", "leases.recovered") or (a.mode == "idle" and ev.get("event") not in ("ingest.accepted", "delivery.succeeded")):
        print(ev.get("event"), {k: v for k, v in ev.items() if k not in ("ts", "event")})
lib.cleanup()
