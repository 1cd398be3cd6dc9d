"""Disk trouble: a full disk never yields a 202 for an unstored event; unusable state fails cleanly.

Needs root (tmpfs mounts); otherwise every part is reported SKIP (not passed, not failed).

1. Full disk: the outbox lives on a 2 MB tmpfs that also holds a filler file. Signed posts of
   ~8 KB candidates go in until ingest answers 503. Checked: the refusal is 503 `unavailable`
   with Retry-After; /healthz still answers 200 and the process lives; every 202 id is in the
   outbox afterwards and no refused webhook-id is; after the filler is deleted, ingest accepts
   again by itself (same process, no restart) and every acked event gets delivered.
2. Read-only state directory (tmpfs remounted ro), fresh and with an existing outbox, and a
   state directory that vanished and cannot be recreated (its parent is read-only): the relay
   exits non-zero (not by a signal) within seconds, says why in a line naming the path, and
   prints no crash trace.
3. A state directory that vanished under a writable parent: recreated 0700 (outbox 0600) and
   the relay starts, as docs/operations.md says.
4. `backup` to a disk that fills up: it fails, says so, and leaves nothing there (a cut-off copy
   full of candidates, and its journal, once stayed and blocked the retry); the retry to a disk
   with room makes a whole copy.
5. A restart on a full disk (found from outside: it exited 1, a restart loop under the unit):
   candidates accepted while the partner is held,
   a clean stop (or a kill -9 with some in flight), the disk filled, a start: the process waits
   (no exit within 8 s), says why (`storage.full_at_start`) and holds the one-daemon lock (a
   second `serve` is refused); the filler deleted, it starts by itself (same process) and
   delivers every acked candidate once.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import time

import lib

NAME = "disk"
CRASH_MARKERS = re.compile(r"Fatal error|Stack dump|Backtrace|Current stack trace|Illegal instruction|"
                           r"Segmentation fault|Traceback|SIGILL|SIGSEGV|SIGTRAP|^\s*\d+\s+0x[0-9a-f]+", re.M)


def big_candidate(i: int) -> dict:
    body = lib.candidate(i, "pos-disk", f"disk-{i}")
    body["note"] = ("reliability filler " * 420)[:8000]
    return body


def tmpfs_workdir(results: lib.Results, label: str, size: str) -> tuple[str, str] | None:
    """A work folder holding a fresh tmpfs of `size` at `<root>/tmpfs`; None (the part
    reported SKIP) when it cannot be mounted."""
    root = lib.make_workdir(NAME + "-" + label.replace(" ", "-"))
    mnt = os.path.join(root, "tmpfs")
    os.makedirs(mnt)
    ok, err = lib.mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs"], mnt)
    if not ok:
        results.skip(f"{NAME}: {label}", f"cannot mount a tmpfs: {err}")
        return None
    return root, mnt


def full_disk(results: lib.Results, long: bool) -> dict:
    work = tmpfs_workdir(results, "full disk", "2m")
    if work is None:
        return {}
    root, mnt = work
    notify = None
    try:
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(os.urandom(768 * 1024))
        sim = lib.Simulator().start()
        # A delivery outcome that could not be written while the disk was full leaves its event
        # in_flight until the lease rescuer takes it back: lease = 2 x timeout + per_seconds + 60 s
        # (docs/operations.md, lease.recovered), checked every 5 s. Keep it short here.
        timeout_s, per_s = 2, 1
        lease_s = 2 * timeout_s + per_s + 60
        # systemd's notify socket, with a watchdog of 2 s (a WATCHDOG=1 every second): a full
        # disk must not stop it (found from outside: a write refused for want of space sent
        # none, and systemd aborted the daemon 30 s into a full disk).
        notify = NotifyListener(os.path.join(root, "notify.sock"))
        relay = lib.Relay(os.path.join(root, "relay"), sim=sim,
                          config={"storage": {"path": os.path.join(mnt, "state", "outbox.sqlite3")},
                                  # /readyz wants room for one request of the largest size.
                                  "ingest": {"max_body_bytes": 65536},
                                  "partner": {"timeout_seconds": timeout_s,
                                              "rate_limit": {"requests": 0, "per_seconds": per_s}}},
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
        relay.start()
        pid = relay.pid
        ledger = lib.Ledger()
        refused_msgs, first_503, others = [], None, []
        i = 0
        for i in range(600):
            body = big_candidate(i)
            msg = lib.new_msg_id()
            t0 = time.monotonic()
            try:
                status, headers, resp = lib.signed_post(relay, body, msg_id=msg, timeout=15)
            except Exception as exc:  # noqa: BLE001
                others.append(("transport", type(exc).__name__))
                break
            ledger.record(msg, status, resp, ("pos-disk", f"disk-{i}"), time.monotonic() - t0)
            if status == 503:
                refused_msgs.append(msg)
                if first_503 is None:
                    first_503 = (resp, headers)
                if len(refused_msgs) >= 5:
                    break
            elif status not in (200, 202):
                others.append((status, resp))
        acked_full = len(ledger.acked)
        lib.log(f"{NAME}: {acked_full} accepted before the disk filled; {len(refused_msgs)} refused")
        results.check(f"{NAME}: a full disk is answered 503", first_503 is not None,
                      f"no 503 after {i + 1} posts of ~8 KB on a 2 MB tmpfs; others: {others[:3]}")
        if first_503:
            resp, headers = first_503
            results.check(f"{NAME}: the 503 is `unavailable` with Retry-After",
                          isinstance(resp, dict) and resp.get("error") == "unavailable" and "retry-after" in headers,
                          f"body {resp}, retry-after {headers.get('retry-after')}")
        results.check(f"{NAME}: no other answer than 202/503 while filling", not others, f"{others[:3]}")
        try:
            hz = relay.get("/healthz", timeout=5)[0]
        except Exception as exc:  # noqa: BLE001
            hz = repr(exc)
        results.check(f"{NAME}: /healthz answers 200 with the disk full", hz == 200 and relay.running(), f"{hz}")
        try:
            readyz = relay.get("/readyz", timeout=5)
        except Exception as exc:  # noqa: BLE001
            readyz = (repr(exc), None, None)
        results.check(f"{NAME}: /readyz says 503 while the disk is full", readyz[0] == 503, f"{readyz[0]}")
        storage_failed = relay.events("storage.failed")
        results.check(f"{NAME}: storage.failed logged while full", bool(storage_failed), "no storage.failed line")
        # Down to the last byte: every write fails now, the watchdog's small one too.
        last_bytes = os.path.join(mnt, "last-bytes")
        fill_up(last_bytes)
        # The precondition of the two checks below: a webhook's write fails now. (A write as
        # small as the watchdog's may still fit in the WAL's allocated space; the unit test
        # `StorageFailureDeliveryTests.theWatchdogIsPettedWhileEveryWriteIsRefused` refuses
        # every write. On the attacker's tmpfs it failed, and no WATCHDOG=1 came.)
        try:
            full_status = lib.signed_post(relay, big_candidate(20_000), msg_id=lib.new_msg_id(), timeout=15)[0]
        except Exception as exc:  # noqa: BLE001
            full_status = repr(exc)
        results.check(f"{NAME}: a webhook at the last byte gets 503", full_status == 503, f"{full_status}")
        pets_before = notify.count("WATCHDOG=1")
        time.sleep(4)
        pets = notify.count("WATCHDOG=1") - pets_before
        results.check(f"{NAME}: WATCHDOG=1 goes on with the disk full to its last byte", pets >= 2,
                      f"{pets} WATCHDOG=1 in 4 s (WATCHDOG_USEC=2 s: systemd would abort the daemon)")
        try:
            readyz_full = relay.get("/readyz", timeout=5)
        except Exception as exc:  # noqa: BLE001
            readyz_full = (repr(exc), None, None)
        results.check(f"{NAME}: /readyz says storage_full with the disk full to its last byte",
                      readyz_full[0] == 503 and isinstance(readyz_full[2], dict) and readyz_full[2].get("status") == "storage_full",
                      f"{readyz_full[0]} {readyz_full[2]}")
        os.unlink(last_bytes)

        # Free space; ingest must recover by itself.
        os.unlink(filler)
        probe_body = big_candidate(10_000)
        probe_msg = lib.new_msg_id()

        def accepted():
            status, _, resp = lib.signed_post(relay, probe_body, msg_id=probe_msg, timeout=10)
            ledger.record(probe_msg, status, resp, ("pos-disk", "disk-10000"), 0)
            return status in (200, 202)

        t0 = time.monotonic()
        recovered = lib.wait_until(accepted, 30, 0.25)
        recovery_s = round(time.monotonic() - t0, 1) if recovered else None
        results.check(f"{NAME}: ingest recovers by itself once space is freed", bool(recovered),
                      f"still refusing after 30 s; statuses {ledger.statuses}")
        readyz_after = relay.get("/readyz", timeout=5)[0]
        results.check(f"{NAME}: /readyz is 200 again once space is freed", readyz_after == 200, f"{readyz_after}")
        results.check(f"{NAME}: same process throughout (no crash, no restart)", relay.running() and relay.pid == pid
                      and relay.starts == 1, f"running={relay.running()} rc={relay.proc.returncode}")
        # Evidence on the outbox
        rows = relay.all_events()
        keys = {r["idempotency_key"] for r in rows.values()}
        stored_refused = [m for m in refused_msgs if m in keys]
        results.check(f"{NAME}: nothing stored for a refused (503) post", not stored_refused,
                      f"{len(stored_refused)} of {len(refused_msgs)} refused webhook-ids are in the outbox")
        in_flight_after = relay.state_counts()["in_flight"]
        mark = relay.mark()
        counts = lib.verify_end_state(results, NAME, relay, sim, ledger, drain_timeout=lease_s + 5 + 25)
        vfs = os.statvfs(mnt)
        counts["free_kb_at_end"] = vfs.f_bavail * vfs.f_frsize // 1024
        counts["worker_errors_after_recovery"] = len(relay.events("delivery.worker_error", since=mark))
        counts["storage_failed_after_recovery"] = len(relay.events("storage.failed", since=mark))
        counts["in_flight_after_recovery"] = in_flight_after
        counts["lease_recovered"] = sum(int(e.get("count", 0)) for e in relay.events("lease.recovered"))
        rc = relay.stop()
        results.check(f"{NAME}: SIGTERM after recovery exits 0", rc == 0, f"rc={rc}")
        sim.stop()
        counts.update({"accepted_before_full": acked_full, "refused_503": len(refused_msgs),
                       "readyz_when_full": readyz[0], "recovery_s": recovery_s, "watchdog_pets_full": pets})
        return counts
    finally:
        if notify:
            notify.close()
        lib.kill_all_processes()
        lib.umount(mnt)


class NotifyListener:
    """A stand-in for systemd's notify socket: collects the datagrams the daemon sends."""

    def __init__(self, path: str):
        import socket
        import threading
        self.path = path
        self.messages: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                self.messages.append(self.sock.recv(4096).decode(errors="replace"))
            except OSError:
                continue

    def count(self, message: str) -> int:
        return sum(1 for m in list(self.messages) if m == message)

    def close(self):
        self.closed = True
        self.thread.join(2)
        self.sock.close()


def expect_clean_failure(results: lib.Results, label: str, relay: lib.Relay, path_hint: str) -> int | None:
    try:
        relay.start(wait=False)
    except Exception as exc:  # noqa: BLE001
        results.check(f"{NAME}: {label}: relay could be launched", False, repr(exc))
        return None
    rc = relay.wait_exit(20)
    started = bool(relay.events("relay.started"))
    if rc is None:
        relay.kill()
    relay.output.join()
    text = "\n".join(relay.raw_lines + relay.stderr_lines)
    results.check(f"{NAME}: {label}: exits non-zero (not by a signal) within 20 s", rc is not None and rc > 0,
                  f"rc={rc}; started={started}; output: {text[-300:]!r}")
    clear = [line for line in text.splitlines() if path_hint in line and
             re.search(r"cannot|can.t|unable|read-only|not writable|permission|denied|failed|error", line, re.I)]
    results.check(f"{NAME}: {label}: a line says why and names the path", bool(clear), f"output: {text[-400:]!r}")
    crash = CRASH_MARKERS.search(text)
    results.check(f"{NAME}: {label}: no crash trace", crash is None, f"found {crash.group(0)!r}" if crash else "")
    return rc


def unusable_state(results: lib.Results, long: bool) -> dict:
    root = lib.make_workdir(NAME + "-ro")
    out = {}
    # a) fresh outbox in a read-only directory
    mnt = os.path.join(root, "ro")
    os.makedirs(mnt)
    ok, err = lib.mount(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], mnt)
    if not ok:
        results.skip(f"{NAME}: read-only state", f"cannot mount a tmpfs: {err}")
        return out
    try:
        os.makedirs(os.path.join(mnt, "state"), mode=0o700)
        ok, err = lib.remount(mnt, "ro")
        results.check(f"{NAME}: setup: tmpfs remounted read-only", ok, err)
        relay = lib.Relay(os.path.join(root, "relay-a"),
                          config={"storage": {"path": os.path.join(mnt, "state", "outbox.sqlite3")}})
        out["ro_fresh_rc"] = expect_clean_failure(results, "read-only state dir (fresh)", relay, os.path.join(mnt, "state"))
        relay = lib.Relay(os.path.join(root, "relay-b"),
                          config={"storage": {"path": os.path.join(mnt, "gone", "state", "outbox.sqlite3")}})
        out["vanished_ro_parent_rc"] = expect_clean_failure(
            results, "vanished state dir, read-only parent", relay, mnt)
    finally:
        lib.umount(mnt)

    # b) an existing outbox whose filesystem became read-only
    mnt2 = os.path.join(root, "ro2")
    os.makedirs(mnt2)
    ok, err = lib.mount(["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs"], mnt2)
    if ok:
        try:
            sim = lib.Simulator().start()
            relay = lib.Relay(os.path.join(root, "relay-c"), sim=sim,
                              config={"storage": {"path": os.path.join(mnt2, "state", "outbox.sqlite3")}})
            relay.start()
            ledger = lib.Ledger()
            lib.send_until_acked(relay, lib.candidate(1, "pos-disk", "ro-existing-1"), lib.new_msg_id(), ledger,
                                 time.monotonic() + 10)
            lib.wait_drained(relay, ledger.acked.keys(), 20)
            rc = relay.stop()
            results.check(f"{NAME}: setup: relay on the soon read-only outbox stopped cleanly", rc == 0, f"rc={rc}")
            ok, err = lib.remount(mnt2, "ro")
            results.check(f"{NAME}: setup: tmpfs with the outbox remounted read-only", ok, err)
            out["ro_existing_rc"] = expect_clean_failure(results, "read-only state dir (existing outbox)", relay,
                                                         os.path.join(mnt2, "state"))
            sim.stop()
        finally:
            lib.kill_all_processes()
            lib.umount(mnt2)

    # c) vanished state dir under a writable parent: recreated, as documented
    sim = lib.Simulator().start()
    state_dir = os.path.join(root, "vanish", "state")
    relay = lib.Relay(os.path.join(root, "relay-d"), sim=sim, config={"storage": {"path": os.path.join(state_dir, "outbox.sqlite3")}})
    relay.start()
    relay.stop()
    import shutil
    shutil.rmtree(os.path.join(root, "vanish"))
    try:
        relay.start()
        started = True
    except lib.RelayStartError as exc:
        started = False
        out["vanished_error"] = str(exc)[:200]
    mode_dir = stat.S_IMODE(os.stat(state_dir).st_mode) if os.path.exists(state_dir) else None
    mode_db = stat.S_IMODE(os.stat(relay.db_path).st_mode) if os.path.exists(relay.db_path) else None
    results.check(f"{NAME}: vanished state dir (writable parent): recreated 0700 / outbox 0600 and started",
                  started and mode_dir == 0o700 and mode_db == 0o600,
                  f"started={started}, dir mode={oct(mode_dir) if mode_dir is not None else None}, "
                  f"outbox mode={oct(mode_db) if mode_db is not None else None}")
    relay.stop()
    sim.stop()
    return out


def backup_to_full_disk(results: lib.Results, long: bool) -> dict:
    work = tmpfs_workdir(results, "backup to a full disk", "256k")
    if work is None:
        return {}
    root, mnt = work
    try:
        sim = lib.Simulator().start()
        relay = lib.Relay(os.path.join(root, "relay"), sim=sim, config={"ingest": {"max_body_bytes": 65536}})
        relay.start()
        for i in range(80):  # ~8 KB each: an outbox well over the tmpfs's 256 KB
            status, _, _ = lib.signed_post(relay, big_candidate(20_000 + i), msg_id=lib.new_msg_id(), timeout=15)
            if status not in (200, 202):
                break
        def backup(destination):
            out = subprocess.run([lib.BINARY, "backup", destination, "--config", relay.config_path],
                                 capture_output=True, text=True, timeout=60, env=lib._child_env(None))
            return out.returncode, out.stdout + out.stderr
        rc, output = backup(os.path.join(mnt, "copy.sqlite3"))
        left = sorted(os.listdir(mnt))
        results.check(f"{NAME}: backup to a full disk fails and says so", rc != 0 and "failed" in output,
                      f"rc={rc}, output={output.strip()[:200]!r}")
        results.check(f"{NAME}: a failed backup leaves nothing behind", not left, f"left: {left}")
        results.check(f"{NAME}: a failed backup prints no crash trace", not CRASH_MARKERS.search(output), output[:300])
        roomy = os.path.join(root, "copy.sqlite3")
        rc2, output2 = backup(roomy)
        rows = None
        if rc2 == 0:
            with sqlite3.connect(roomy) as db:
                rows = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        stored = sum(relay.state_counts().values())
        results.check(f"{NAME}: the retry to a disk with room is a whole copy", rc2 == 0 and rows == stored,
                      f"rc={rc2}, rows={rows}, outbox={stored}, output={output2.strip()[:200]!r}")
        relay.stop()
        sim.stop()
        return {"backup_full_disk_rc": rc, "backup_rows": rows}
    finally:
        lib.kill_all_processes()
        lib.umount(mnt)


def fill_up(path: str) -> None:
    """Writes `path` until the filesystem refuses (ENOSPC), down to its last bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def restart_on_full_disk(results: lib.Results, long: bool) -> dict:
    out = {}
    for how in ("after a clean stop", "after kill -9 with deliveries in flight", "out of inodes, without -wal and -shm"):
        label = f"restart on a full disk {how}"
        inodes = how.startswith("out of inodes")
        work = tmpfs_workdir(results, label, "4m,nr_inodes=24" if inodes else "4m")
        if work is None:
            return out
        root, mnt = work
        try:
            sim = lib.Simulator().start()
            held = {"requests": 1, "per_seconds": 86400}
            if how.startswith("after kill"):
                # In flight when killed: the partner answers after 3 s (timeout 5 s).
                sim.set_faults({"latencyMs": 3000})
                held = {"requests": 0, "per_seconds": 60}
            relay = lib.Relay(os.path.join(root, "relay"), sim=sim,
                              config={"storage": {"path": os.path.join(mnt, "state", "outbox.sqlite3")},
                                      "ingest": {"max_body_bytes": 65536},
                                      "partner": {"rate_limit": held}})
            relay.start()
            ledger = lib.Ledger()
            for i in range(12):
                msg = lib.new_msg_id()
                status, _, resp = lib.signed_post(relay, lib.candidate(i, "pos-restart-full", f"rfull-{i}"), msg_id=msg)
                ledger.record(msg, status, resp, ("pos-restart-full", f"rfull-{i}"), 0)
            if how.startswith("after kill"):
                lib.wait_until(lambda: relay.state_counts()["in_flight"] > 0, 10)
                in_flight = relay.state_counts()["in_flight"]
                relay.kill()
                results.check(f"{NAME}: {label}: setup: deliveries in flight when killed", in_flight > 0, f"{in_flight}")
                out["restart_full_in_flight_at_kill"] = in_flight
            else:
                relay.stop()
            filler = os.path.join(mnt, "filler")
            fillers = []
            if inodes:
                # As after a restore: the outbox alone, then every inode taken (found from
                # outside: SQLite's "unable to open" for the WAL ended the start at once).
                for side in ("-wal", "-shm"):
                    if os.path.exists(relay.db_path + side):
                        os.unlink(relay.db_path + side)
                try:
                    while True:
                        path = os.path.join(mnt, f"inode-{len(fillers)}")
                        open(path, "wb").close()
                        fillers.append(path)
                except OSError:
                    pass
            else:
                fill_up(filler)
            sim.set_faults({})
            relay.config["partner"]["rate_limit"] = {"requests": 0, "per_seconds": 60}
            relay.write_config()
            mark = len(relay.raw_lines)
            relay.start(wait=False)
            exited = relay.wait_exit(8)
            results.check(f"{NAME}: {label}: the daemon waits instead of exiting", exited is None,
                          f"rc={exited}; output: {relay.raw_lines[mark:][-3:]}")
            said = relay.events("storage.full_at_start", since=mark)
            results.check(f"{NAME}: {label}: storage.full_at_start says why", bool(said) and "directory" in said[0],
                          f"{said[:1]}")
            second = subprocess.run([lib.BINARY, "serve", "--config", relay.config_path], capture_output=True, text=True,
                                    timeout=20, cwd=relay.workdir, env=lib._child_env({}))
            results.check(f"{NAME}: {label}: the waiting daemon holds the lock (a second serve exits 1)",
                          second.returncode == 1 and "already serving" in second.stderr, f"rc={second.returncode} {second.stderr[-200:]!r}")
            for path in fillers or [filler]:
                os.unlink(path)
            started_port = None
            try:
                started_port = relay.wait_started(mark, 20)
            except lib.RelayStartError as exc:
                results.check(f"{NAME}: {label}: starts by itself once space is freed", False, str(exc)[:300])
            if started_port:
                results.check(f"{NAME}: {label}: starts by itself once space is freed (same process)",
                              relay.running() and relay.starts == 2, f"starts={relay.starts}")
                with open(relay.db_path + ".lock") as f:
                    holder = f.read().strip()
                results.check(f"{NAME}: {label}: the lock file names the daemon (for `reload` without --pid)",
                              holder == str(relay.pid), f"lock file says {holder!r}, pid {relay.pid}")
                counts = lib.verify_end_state(results, f"{NAME}: {label}", relay, sim, ledger, drain_timeout=40)
                out["restart_full_" + ("inodes" if inodes else "kill" if how.startswith("after kill") else "stop")] = counts
                rc = relay.stop()
                results.check(f"{NAME}: {label}: SIGTERM exits 0", rc == 0, f"rc={rc}")
            sim.stop()
        finally:
            lib.kill_all_processes()
            lib.umount(mnt)
    return out


def run(results: lib.Results, long: bool) -> dict:
    if not lib.is_root():
        results.skip(f"{NAME}", "needs root for tmpfs mounts (run the suite as root to cover full and read-only disks)")
        return {"skipped": "not root"}
    counts = full_disk(results, long)
    counts.update(unusable_state(results, long))
    counts.update(backup_to_full_disk(results, long))
    counts.update(restart_on_full_disk(results, long))
    return counts
