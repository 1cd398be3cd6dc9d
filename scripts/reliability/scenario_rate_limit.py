"""Rate limit and 429s: a sliding window that holds at the partner; Retry-After honoured.

1. A backlog against a scaled-down limit (relay partner.rate_limit {requests: 10,
   per_seconds: 2}; simulator --rate-limit 10 --rate-window 2; 100 ms latency), in JWT mode and
   again in OAuth mode with a slow token endpoint and tokens revoked early (so token fetches
   and 401 resends happen between taking a slot and sending). Checked on the arrival times:
   millisecond ones taken by a TCP gate in front of the simulator, and the simulator's own
   `requests[].at` (1 s resolution: two whole seconds are a window of exactly per_seconds):
   no window of per_seconds ever holds more than 10 requests; the simulator never had to
   answer 429 too_many_requests; the backlog drains at about the allowed rate.
2. Injected 429s: without Retry-After, with `Retry-After: 1`, and with `Retry-After: 0`
   (error rate 100 % for a few seconds, then 30 % while the backlog drains). Checked: every
   event delivered, none dead, attempts stay below max_attempts, requests during the 429 storm
   bounded by the backoff (Retry-After: 0 must not mean "retry now"), and with Retry-After: 1
   no request leaves during a logged partner.paused window.
"""

from __future__ import annotations

import math
import time

import lib

NAME = "rate_limit"
LIMIT, WINDOW = 10, 2.0


def max_attempts_within(seconds: float, initial: float, mult: float, cap: float, floor: float = 0.0) -> int:
    t, n = 0.0, 1
    while n < 10000:
        delay = max(min(initial * mult ** (n - 1), cap) / 2, floor)
        if t + delay > seconds:
            return n
        t += delay
        n += 1
    return n


def window_part(results: lib.Results, long: bool, mode: str) -> dict:
    prefix = f"{NAME} {mode}"
    sim = lib.Simulator(["--rate-limit", str(LIMIT), "--rate-window", str(int(WINDOW))]).start()
    gate = lib.TcpGate(sim.port).open()
    config = {"partner": {"base_url": gate.url, "rate_limit": {"requests": LIMIT, "per_seconds": WINDOW}}}
    faults = {"latencyMs": 100}
    if mode == "oauth":
        config["partner"]["auth"] = {
            "mode": "oauth2_client_credentials", "token_url": gate.url + "/oauth/token",
            "client_id": lib.SIM_CLIENT_ID, "client_secret_file": "oauth-client-secret",
            "api_key_file": lib.DELETE, "secret_file": lib.DELETE}
        faults.update({"tokenLatencyMs": 400, "tokenMaxAgeSeconds": 1.5})
    sim.set_faults(faults)
    relay = lib.Relay(lib.make_workdir(f"{NAME}-{mode}"), config=config)
    relay.start()
    ledger = lib.Ledger()
    n = (300 if long else 60) if mode == "jwt" else (120 if long else 40)
    t0 = time.monotonic()
    for i in range(n):
        lib.send_until_acked(relay, lib.candidate(i, f"pos-rl-{mode}", f"rl-{mode}-{i}"), lib.new_msg_id(), ledger,
                             time.monotonic() + 10)
    expected = (n - LIMIT) * WINDOW / LIMIT
    counts = lib.verify_end_state(results, prefix, relay, sim, ledger, drain_timeout=expected + 60)
    drain = time.monotonic() - t0
    results.check(f"{prefix}: backlog of {n} drained near the allowed rate (<= {expected * 1.5 + 10:.0f}s)",
                  drain <= expected * 1.5 + 10, f"took {drain:.1f}s; the limit allows it in {expected:.0f}s")
    arrivals = gate.arrivals("POST /candidates")
    worst, at = lib.sliding_window_max(arrivals, WINDOW)
    tightest = min((arrivals[i + LIMIT] - arrivals[i] for i in range(len(arrivals) - LIMIT)), default=None)
    results.check(f"{prefix}: at most {LIMIT} requests in any {WINDOW:.0f}s window (ms arrival times, {len(arrivals)} requests)",
                  len(arrivals) >= n and worst <= LIMIT,
                  f"max {worst} in the window starting {at}; tightest span of {LIMIT + 1} consecutive requests: "
                  f"{tightest if tightest is None else round(tightest, 3)}s")
    state = sim.state()
    secs: dict = {}
    for r in state["requests"]:
        s = math.floor(lib.parse_time(r["at"]))
        secs[s] = secs.get(s, 0) + 1
    coarse = max((secs.get(s, 0) + secs.get(s + 1, 0) for s in secs), default=0)
    results.check(f"{prefix}: at most {LIMIT} requests in any two whole seconds at the simulator", coarse <= LIMIT,
                  f"max {coarse}: {dict(sorted(secs.items()))}")
    limited = [r for r in state["requests"] if r.get("status") == 429]
    results.check(f"{prefix}: the simulator never had to answer 429 too_many_requests", not limited,
                  f"{len(limited)} times")
    if mode == "oauth":
        rej = relay.events("auth.token_rejected")
        results.check(f"{prefix}: token revocations happened during the backlog (fault fired)", bool(rej),
                      "no auth.token_rejected: tokenMaxAgeSeconds did not fire, the window check is weaker")
    rc = relay.stop()
    results.check(f"{prefix}: SIGTERM exits 0", rc == 0, f"rc={rc}")
    sim.stop()
    gate.shutdown()
    return {f"{mode}_events": n, f"{mode}_drain_s": round(drain, 1), f"{mode}_max_in_window": worst,
            f"{mode}_tightest_11": None if tightest is None else round(tightest, 3),
            f"{mode}_duplicates": counts["partner_duplicates"]}


def retry_after_part(results: lib.Results, long: bool) -> dict:
    sim = lib.Simulator().start()
    gate = lib.TcpGate(sim.port).open()
    backoff = {"initial_seconds": 0.2, "multiplier": 2, "max_seconds": 5}
    max_attempts = 14
    relay = lib.Relay(lib.make_workdir(f"{NAME}-429"), config={
        "partner": {"base_url": gate.url},
        "delivery": {"backoff": backoff, "max_attempts": max_attempts,
                     # The breaker must not throttle here: it would hide a relay that retries
                     # at once (CONTRACT section 8 also says a 429 is not an outage).
                     "circuit_breaker": {"failures": 1000, "cooldown_seconds": 0.5}}})
    relay.start()
    out = {}
    storm = 8.0 if long else 2.5
    for variant, retry_after in (("no_retry_after", None), ("retry_after_1", "1"), ("retry_after_0", "0")):
        prefix = f"{NAME} 429 {variant}"
        ledger = lib.Ledger()
        faults = {"errorRate": 1.0, "injectStatus": 429}
        if retry_after is not None:
            faults["retryAfter"] = retry_after
        sim.set_faults(faults)
        mark = relay.mark()
        before = len(gate.arrivals())
        n_events = 5
        t0 = time.time()
        for i in range(n_events):
            lib.send_until_acked(relay, lib.candidate(i, f"pos-{variant}", f"{variant}-{i}"), lib.new_msg_id(),
                                 ledger, time.monotonic() + 10)
        time.sleep(storm)  # length of the 429 storm: a scenario parameter
        t1 = time.time()
        storm_requests = [t for t in gate.arrivals()[before:] if t <= t1]
        floor = float(retry_after) if retry_after else 0.0
        per_event = max_attempts_within(t1 - t0 + 0.5, backoff["initial_seconds"], backoff["multiplier"],
                                        backoff["max_seconds"], floor)
        bound = n_events * per_event + 4
        results.check(f"{prefix}: requests during the {storm:.1f}s storm bounded by the backoff (<= {bound})",
                      0 < len(storm_requests) <= bound, f"{len(storm_requests)} requests")
        limited = relay.events("partner.rate_limited", since=mark)
        results.check(f"{prefix}: partner.rate_limited logged", bool(limited), "none")
        if retry_after == "1":
            paused = relay.events("partner.paused", since=mark)
            results.check(f"{prefix}: partner.paused logged", bool(paused), "no partner.paused line")
            arrivals = gate.arrivals()
            inside = []
            for ev in paused:
                p0, p1 = lib.parse_time(ev["ts"]), lib.parse_time(ev["until"])
                inside += [round(t - p0, 3) for t in arrivals if p0 + 0.05 < t < p1 - 0.05]
            results.check(f"{prefix}: no request left during a Retry-After pause", bool(paused) and not inside,
                          f"{len(inside)} requests inside pauses (seconds after the pause began: {inside[:5]})")
        # Drain with a lighter storm still going.
        light = dict(faults, errorRate=0.3)
        sim.set_faults(light)
        ok = lib.wait_drained(relay, ledger.acked.keys(), 60)
        sim.set_faults({})
        rows = relay.all_events()
        mine = [rows[i] for i in ledger.acked if i in rows]
        states = {}
        for r in mine:
            states[r["state"]] = states.get(r["state"], 0) + 1
        results.check(f"{prefix}: all {n_events} delivered", ok and states.get("delivered", 0) + states.get("linked", 0) == n_events,
                      f"{states}; {[(r['id'], r['state'], r['attempts'], r['last_error']) for r in mine if r['state'] not in ('delivered', 'linked')][:3]}")
        top = max((r["attempts"] for r in mine), default=0)
        results.check(f"{prefix}: attempts stay below max_attempts ({max_attempts})", 0 < top < max_attempts,
                      f"highest attempts: {top}")
        out[f"{variant}_storm_requests"] = len(storm_requests)
        out[f"{variant}_max_attempts"] = top
    dead = relay.events("delivery.dead")
    results.check(f"{NAME} 429: nothing went dead", not dead, f"{[(e.get('event_id'), e.get('error')) for e in dead[:3]]}")
    rc = relay.stop()
    results.check(f"{NAME} 429: SIGTERM exits 0", rc == 0, f"rc={rc}")
    sim.stop()
    gate.shutdown()
    return out


def run(results: lib.Results, long: bool) -> dict:
    counts = window_part(results, long, "jwt")
    counts.update(window_part(results, long, "oauth"))
    counts.update(retry_after_part(results, long))
    return counts
