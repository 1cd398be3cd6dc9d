"""Graceful shutdown: SIGTERM under load exits 0 in time and loses nothing.

Senders post continuously while deliveries run against a partner with ~300 ms latency; the
relay gets SIGTERM (5 cycles short, 10 long) and is restarted on the same outbox each time.
A last cycle makes the partner slower than the grace period (4 s vs shutdown_grace_seconds 2),
so in-flight requests must be cut and handed back (delivery.interrupted).

Proves: exit code 0 within shutdown_grace_seconds + 1 s every time, with relay.stopping,
delivery.drained and relay.stopped logged; ingest only ever answers 202/200/503 (or the
connection is refused while down); after the last restart and the drain, every acked event is
delivered or linked and the partner holds exactly one candidate per natural key; every stdout
line of every run is a JSON object.
"""

from __future__ import annotations

import random
import threading
import time

import lib

NAME = "shutdown"
GRACE = 2.0


def run(results: lib.Results, long: bool) -> dict:
    cycles = 10 if long else 5
    rng = random.Random()
    sim = lib.Simulator().start()
    sim.set_faults({"latencyMs": 300})
    relay = lib.Relay(lib.make_workdir(NAME), sim=sim, config={"delivery": {"shutdown_grace_seconds": GRACE}})
    relay.start()
    ledger = lib.Ledger()
    stop = threading.Event()
    deadline = time.monotonic() + (1800 if long else 600)

    def sender(tid: int) -> None:
        n = 0
        while not stop.is_set() and n < 100000:
            n += 1
            if n % 4 == 0:
                body = lib.candidate(n, "pos-sd-nk", f"sd-nk-{(tid * 7 + n) % 9}")  # shared natural keys
            else:
                body = lib.candidate(n, f"pos-sd-{tid}", f"sd-{tid}-{n}")
            lib.send_until_acked(relay, body, lib.new_msg_id(), ledger, min(deadline, time.monotonic() + 60))
            time.sleep(0.03)

    threads = [threading.Thread(target=sender, args=(t,), daemon=True) for t in range(3)]
    for t in threads:
        t.start()

    exit_times, rcs, interrupted = [], [], 0
    for c in range(cycles + 1):
        slow = c == cycles
        mark = relay.mark()
        if slow:
            sim.set_faults({"latencyMs": 4000})
        busy = lib.wait_until(lambda: len(relay.events("delivery.succeeded", since=mark)) +
                              len(relay.events("delivery.linked", since=mark)) >= 3, 20)
        if not slow:
            results.check(f"{NAME}: cycle {c + 1}: deliveries running before SIGTERM", bool(busy), "no delivery in 20 s")
        # SIGTERM at a random moment of the load (slow cycle: once requests are surely in flight)
        time.sleep(1.5 if slow else rng.uniform(0.0, 0.8))
        rc = relay.stop(GRACE + 15)  # SIGTERM, and SIGKILL (None) past the timeout
        took = relay.last_stop_seconds
        exit_times.append(round(took, 2))
        rcs.append(rc)
        label = "slow partner" if slow else f"cycle {c + 1}"
        results.check(f"{NAME}: {label}: SIGTERM exits 0 within grace+1s ({GRACE + 1:.0f}s)",
                      rc == 0 and took <= GRACE + 1, f"rc={rc} after {took:.2f}s")
        names = {e.get("event") for e in relay.events(since=mark)}
        missing = {"relay.stopping", "delivery.drained", "relay.stopped"} - names
        results.check(f"{NAME}: {label}: relay.stopping, delivery.drained, relay.stopped logged", not missing,
                      f"missing {sorted(missing)}")
        if slow:
            interrupted = len(relay.events("delivery.interrupted", since=mark))
            results.check(f"{NAME}: slow partner: in-flight requests handed back (delivery.interrupted)",
                          interrupted > 0, "no delivery.interrupted line although requests took 4 s and the grace is 2 s")
            sim.set_faults({"latencyMs": 300})
        try:
            relay.start()
        except lib.RelayStartError as exc:
            results.check(f"{NAME}: {label}: restart", False, str(exc)[:300])
            break

    stop.set()
    for t in threads:
        t.join(90)
    results.check(f"{NAME}: senders finished", not any(t.is_alive() for t in threads), "a sender is stuck")
    sim.set_faults({})
    counts = lib.verify_end_state(results, NAME, relay, sim, ledger, drain_timeout=120 if long else 60)
    bad = list(ledger.bad)
    results.check(f"{NAME}: ingest answered only 202/200/503", not bad, f"{len(bad)} others, e.g. {bad[:3]}")
    rc = relay.stop()
    results.check(f"{NAME}: final SIGTERM exits 0", rc == 0, f"rc={rc}")
    non_json = relay.non_json_lines()
    results.check(f"{NAME}: every stdout line of every run is a JSON object ({len(relay.raw_lines)} lines)",
                  not non_json and len(relay.raw_lines) > 0, f"{len(non_json)} not, e.g. {non_json[:2]}")
    sim.stop()
    counts.update({"sigterms": len(rcs), "exit_seconds": exit_times, "interrupted": interrupted,
                   "503_answers": ledger.statuses.get(503, 0), "refused_while_down": sum(ledger.errors.values())})
    return counts
