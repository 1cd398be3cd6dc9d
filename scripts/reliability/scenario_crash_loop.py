"""Crash loop: SIGKILL at random moments loses nothing and duplicates nothing.

Senders post continuously (fresh candidates, candidates sharing a natural key
(position_uid, partner_candidate_id) under new webhook-ids, and replays of webhook-ids already
used) while the partner is slow and flaky (latency, 503s, connections closed without an
answer). The relay is SIGKILLed at random moments (30 times short, 100 long) and restarted on
the same outbox; senders retry like Standard Webhooks senders (same webhook-id, same body).

Proves, once faults are off and the backlog drained (bounded): every 202/200 answer names an
event that is in the outbox and ends delivered or linked; nothing stays pending/in_flight; a
webhook-id always maps to one event; the partner holds exactly one candidate per natural key
and every event of that key carries its uid; the relay came back after every kill.
"""

from __future__ import annotations

import random
import threading
import time

import lib

NAME = "crash_loop"


def run(results: lib.Results, long: bool) -> dict:
    kills = 100 if long else 30
    rng = random.Random()
    sim = lib.Simulator().start()
    flaky = {"latencyMs": 120, "errorRate": 0.15, "injectStatus": 503, "closeRate": 0.05}
    sim.set_faults(flaky)
    relay = lib.Relay(lib.make_workdir(NAME), sim=sim, config={
        "delivery": {"max_attempts": 100, "workers": 4,
                     "backoff": {"initial_seconds": 0.05, "multiplier": 2, "max_seconds": 0.5},
                     "circuit_breaker": {"failures": 8, "cooldown_seconds": 0.3}},
        "partner": {"timeout_seconds": 2},
    })
    relay.start()
    ledger = lib.Ledger()
    stop = threading.Event()
    sent_bodies: list = []  # (msg_id, body) acked, for webhook-id replays
    bodies_lock = threading.Lock()
    counter = [0]
    overall_deadline = time.monotonic() + (3600 if long else 600)

    def sender(tid: int) -> None:
        r = random.Random(tid)
        n = 0
        while not stop.is_set() and n < 100000:
            n += 1
            with bodies_lock:
                counter[0] += 1
                i = counter[0]
            kind = r.random()
            if kind < 0.15 and sent_bodies:
                with bodies_lock:
                    msg_id, body = r.choice(sent_bodies)
            elif kind < 0.40:
                # a natural key shared by several events (different webhook-ids and bodies)
                body = lib.candidate(i, position_uid="pos-nk", partner_candidate_id=f"nk-{r.randrange(12)}")
                msg_id = lib.new_msg_id()
            else:
                body = lib.candidate(i, position_uid=f"pos-{tid}", partner_candidate_id=f"cl-{tid}-{n}")
                msg_id = lib.new_msg_id()
            # Once told to stop, finish this one (bounded), as a real sender would.
            ok = lib.send_until_acked(relay, body, msg_id, ledger, min(overall_deadline, time.monotonic() + 120))
            if ok:
                with bodies_lock:
                    sent_bodies.append((msg_id, body))
            time.sleep(r.uniform(0.01, 0.06))

    threads = [threading.Thread(target=sender, args=(t,), daemon=True) for t in range(4)]
    for t in threads:
        t.start()

    survived, died_early, restart_fail = 0, 0, []
    lib.log(f"{NAME}: {kills} SIGKILLs at random moments, senders running, partner flaky")
    for k in range(kills):
        # The chaos schedule: a random moment, not a wait for a condition.
        time.sleep(rng.uniform(0.2, 1.8))
        if not relay.running():
            died_early += 1
        relay.kill()
        try:
            relay.start(timeout=30)
            survived += 1
        except lib.RelayStartError as exc:
            restart_fail.append(str(exc)[:300])
            try:
                relay.start(timeout=30)
            except lib.RelayStartError:
                break
        if (k + 1) % 10 == 0:
            lib.log(f"{NAME}: {k + 1} kills, {len(ledger.acked)} acked so far")

    results.check(f"{NAME}: relay never exited on its own between kills", died_early == 0, f"{died_early} times")
    results.check(f"{NAME}: relay restarted after each of {kills} SIGKILLs", survived == kills and not restart_fail,
                  f"{survived} restarts; failures: {restart_fail[:2]}")

    stop.set()
    for t in threads:
        t.join(150)
    alive = sum(t.is_alive() for t in threads)
    results.check(f"{NAME}: senders finished their last event", alive == 0, f"{alive} still running")
    sim.set_faults({})
    lib.log(f"{NAME}: faults off, draining {len(ledger.acked)} acked events")
    counts = lib.verify_end_state(results, NAME, relay, sim, ledger, drain_timeout=180 if long else 90)
    bad = list(ledger.bad)
    results.check(f"{NAME}: ingest answered only 202/200/503 to valid signed posts", not bad,
                  f"{len(bad)} others, e.g. {bad[:3]}")
    dead_logged = relay.events("delivery.dead")
    results.check(f"{NAME}: no delivery.dead logged", not dead_logged,
                  f"{len(dead_logged)}: {[(e.get('event_id'), e.get('error')) for e in dead_logged[:3]]}")
    recovered = sum(int(e.get("count", 0)) for e in relay.events("lease.recovered"))
    rc = relay.stop()
    results.check(f"{NAME}: final SIGTERM exits 0", rc == 0, f"rc={rc}")
    partner_requests = len(sim.state().get("requests", []))
    sim.stop()
    counts.update({"kills_survived": survived, "leases_recovered": recovered,
                   "sender_transport_errors": sum(ledger.errors.values()),
                   "partner_requests": partner_requests})
    return counts
