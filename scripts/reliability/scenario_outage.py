"""Partner outage: ingest stays up, the circuit breaker throttles, the backlog drains.

The partner goes through four outage phases while a sender keeps posting: switched off
(connection refused, via a TCP gate in front of the simulator so its memory survives), 503 to
everything, latency far above partner.timeout_seconds (1 s), then (once the breaker has closed
again) a body that stalls after the headers (simulator fault `stallBodyMs`), hitting every
worker at once. Phases last seconds in short mode, minutes in long.

Proves: every POST during the outage is answered 202 quickly; partner requests during each
phase stay at the breaker's probe rate (config circuit_breaker {failures: 3, cooldown: 1 s}),
counted from the simulator's record (from the relay's log for the refused phase); the breaker
logs partner.circuit_opened in every phase; a stalled body is cut at the timeout (no worker
hangs); afterwards the backlog drains fully, every acked event delivered/linked, no partner
duplicate.
"""

from __future__ import annotations

import math
import threading
import time

import lib

NAME = "outage"
TIMEOUT_S = 1.0
COOLDOWN_S = 1.0
FAILURES = 3


def _ts(ev: dict) -> float:
    return lib.parse_time(ev["ts"])


def run(results: lib.Results, long: bool) -> dict:
    phase_s = 120.0 if long else 6.0
    sim = lib.Simulator().start()
    gate = lib.TcpGate(sim.port).open()
    relay = lib.Relay(lib.make_workdir(NAME), config={
        "partner": {"base_url": gate.url, "timeout_seconds": TIMEOUT_S},
        "delivery": {"circuit_breaker": {"failures": FAILURES, "cooldown_seconds": COOLDOWN_S},
                     "backoff": {"initial_seconds": 0.05, "multiplier": 2, "max_seconds": 2}},
    })
    relay.start()
    ledger = lib.Ledger()

    # Baseline: the path works before the outage.
    for i in range(5):
        lib.send_until_acked(relay, lib.candidate(i, "pos-out", f"out-base-{i}"), lib.new_msg_id(), ledger,
                             time.monotonic() + 10)
    base_ok = lib.wait_until(lambda: relay.state_counts()["delivered"] >= 5, 15)
    results.check(f"{NAME}: baseline delivered before the outage", bool(base_ok), str(relay.state_counts()))

    outage_ledger = lib.Ledger()
    stop = threading.Event()

    def sender():
        i = 1000
        while not stop.is_set() and i < 100000:
            i += 1
            body = lib.candidate(i, "pos-out", f"out-{i}")
            msg = lib.new_msg_id()
            t0 = time.monotonic()
            try:
                status, _, resp = lib.signed_post(relay, body, msg_id=msg, timeout=10)
                outage_ledger.record(msg, status, resp, ("pos-out", f"out-{i}"), time.monotonic() - t0)
                ledger.record(msg, status, resp, ("pos-out", f"out-{i}"), time.monotonic() - t0)
            except Exception as exc:  # noqa: BLE001 - any failure to answer counts against ingest
                outage_ledger.error(exc)
            stop.wait(0.2)

    stall_supported = sim.supports("stallBodyMs", 1)
    results.check(f"{NAME}: simulator supports fault stallBodyMs", stall_supported,
                  "PUT /_sim/faults does not echo stallBodyMs (not in this binary's simulator yet); "
                  "the stall phase uses the suite's TCP gate to cut answers after their headers instead")
    stall_ms = int(max(20.0, 2 * phase_s) * 1000)

    phases: list[tuple[str, float, float]] = []
    t_sender = threading.Thread(target=sender, daemon=True)
    t_sender.start()

    def phase(name: str, setup, teardown) -> None:
        setup()
        t0 = time.time()
        lib.log(f"{NAME}: phase {name} for {phase_s:.0f}s")
        time.sleep(phase_s)  # the phase's length: a scenario parameter, not a wait for a condition
        t1 = time.time()
        teardown()
        phases.append((name, t0, t1))

    phase("refused", gate.close, gate.open)
    phase("503", lambda: sim.set_faults({"errorRate": 1.0, "injectStatus": 503}), lambda: sim.set_faults({}))
    phase("latency", lambda: sim.set_faults({"latencyMs": 3000}), lambda: sim.set_faults({}))
    # Let the breaker close first, so the stall hits several requests at once (all workers).
    mark = relay.mark()
    closed = lib.wait_until(lambda: relay.events("partner.circuit_closed", since=mark), 15)
    results.check(f"{NAME}: breaker closes once the partner is healthy again", bool(closed),
                  "no partner.circuit_closed within 15 s of the faults being cleared")
    if stall_supported:
        phase("stall_body", lambda: sim.set_faults({"stallBodyMs": stall_ms}), lambda: sim.set_faults({}))
    else:
        def gate_stall_on():
            gate.stall_body_ms = stall_ms

        def gate_stall_off():
            gate.stall_body_ms = 0
        phase("stall_body", gate_stall_on, gate_stall_off)
    stop.set()
    t_sender.join(15)

    # Ingest during the outage
    with outage_ledger.lock:
        statuses = dict(outage_ledger.statuses)
        errors = dict(outage_ledger.errors)
        slowest = max(outage_ledger.latencies or [0])
    n_posts = sum(statuses.values()) + sum(errors.values())
    results.check(f"{NAME}: ingest answered 202 to every POST during the outage ({n_posts})",
                  n_posts > 0 and statuses.get(202, 0) == n_posts,
                  f"statuses {statuses}, transport errors {errors}")
    results.check(f"{NAME}: ingest stayed fast during the outage (slowest answer < 2 s)", slowest < 2.0,
                  f"slowest {slowest:.2f}s")

    # Faults are off; drain.
    counts = lib.verify_end_state(results, NAME, relay, sim, ledger, drain_timeout=300 if long else 60)

    # Probe rate per phase. Settle: the first failures before the breaker opens, and answers
    # already in flight (a timeout is 1 s).
    state = sim.state()
    sim_times = [(lib.parse_time(r["at"]), r) for r in state.get("requests", [])]
    precise = all(lib.has_fraction(r["at"]) for r in state.get("requests", [])) and bool(sim_times)
    settle = FAILURES * 0 + TIMEOUT_S + 1.0
    opened = relay.timed_events("partner.circuit_opened")
    phase_counts = {}
    for name, t0, t1 in phases:
        w0, w1 = t0 + settle, t1
        if name == "refused":
            attempts = [ev for ev in relay.events("delivery.retry_scheduled") + relay.events("delivery.dead")
                        if w0 <= _ts(ev) <= w1]
            n = len(attempts)
            span = w1 - w0
            source = "relay log (retry_scheduled/dead)"
        else:
            if precise:
                n = sum(1 for t, _ in sim_times if w0 <= t <= w1)
                span = w1 - w0
            else:
                # Second resolution: only the whole seconds inside the window count.
                lo, hi = math.ceil(w0), math.floor(w1) - 1
                n = sum(1 for t, _ in sim_times if lo <= t < hi + 1)
                span = max(0, hi - lo + 1)
            source = "simulator record" + ("" if precise else " (1 s resolution)")
        bound = math.ceil(span / COOLDOWN_S) + 2
        phase_counts[name] = n
        per_second: dict = {}
        for t, r in sim_times:
            if w0 - 1 <= t <= w1 + 1:
                per_second.setdefault(int(t) % 1000, []).append(r.get("status"))
        results.check(f"{NAME}: phase {name}: partner requests at the probe rate (<= {bound} in {span:.1f}s)",
                      n <= bound and span > 0, f"{n} requests ({source}); per second (mod 1000): {per_second}")
        in_phase = [ev for t, ev in opened if t0 - 0.5 <= _ts(ev) <= t1 + 0.5]
        results.check(f"{NAME}: phase {name}: partner.circuit_opened logged", bool(in_phase),
                      f"{len(opened)} circuit_opened lines in the whole run, none in this phase")

    # A stalled body must be cut at partner.timeout_seconds.
    stall = next(p for p in phases if p[0] == "stall_body")
    stall_outcomes = [ev for ev in relay.events("delivery.retry_scheduled") + relay.events("delivery.succeeded")
                      + relay.events("delivery.linked") if stall[1] <= _ts(ev) - ev.get("latency_ms", 0) / 1000 <= stall[2]]
    timeouts = [ev for ev in stall_outcomes if ev.get("event") == "delivery.retry_scheduled" and ev.get("error") == "timeout"]
    slow = [ev for ev in stall_outcomes if ev.get("latency_ms", 0) > (TIMEOUT_S + 1.0) * 1000]
    results.check(f"{NAME}: stalled bodies end in a timeout retry", bool(timeouts),
                  f"no delivery.retry_scheduled error=timeout for requests sent during the stall phase "
                  f"(outcomes: {[(e.get('event'), e.get('error'), e.get('latency_ms')) for e in stall_outcomes[:5]]})")
    results.check(f"{NAME}: no partner request outlived timeout_seconds+1s during the stall", not slow,
                  f"{len(slow)} took longer: {[(e.get('event'), e.get('latency_ms')) for e in slow[:4]]} "
                  f"(stall {stall_ms} ms; a worker waited for the body)")
    dead = relay.events("delivery.dead")
    results.check(f"{NAME}: nothing went dead", not dead, f"{[(e.get('event_id'), e.get('error')) for e in dead[:3]]}")
    rc = relay.stop()
    results.check(f"{NAME}: SIGTERM after the drain exits 0", rc == 0, f"rc={rc}")
    sim.stop()
    gate.shutdown()
    counts.update({f"requests_{k}": v for k, v in phase_counts.items()})
    counts["circuit_opened"] = len(opened)
    counts["stall_source"] = "simulator" if stall_supported else "tcp-gate"
    counts["stall_timeouts"] = len(timeouts)
    counts["partner_requests"] = len(sim_times)
    return counts
