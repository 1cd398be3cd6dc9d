"""Auth trouble: tokens revoked or refused, token endpoint down or stalling.

JWT mode (comeet_jwt):
- the partner revokes tokens early (fault tokenMaxAgeSeconds) -> the relay logs
  auth.token_rejected, mints a fresh token and delivers everything;
- the partner refuses every token (rejectAllTokens) -> auth.token_rejected lines and retries
  at the backoff's pace (partner requests counted over a few seconds stay under a bound derived
  from the backoff: no hot loop), then recovery delivers everything.
OAuth2 mode (oauth2_client_credentials against the simulator's /oauth/token):
- token endpoint down (tokenEndpointDown) -> auth.token_failed, token requests bounded;
- token endpoint stalling beyond partner.timeout_seconds (tokenLatencyMs) -> auth.token_failed
  with error timeout;
- recovery -> all delivered, one candidate per natural key;
- SIGTERM while a token fetch stalls (timeout 30 s, tokenLatencyMs 60 s) -> exit 0 within
  shutdown_grace_seconds + 2 s.
"""

from __future__ import annotations

import time

import lib

NAME = "auth"


def max_attempts_within(seconds: float, initial: float, mult: float, cap: float) -> int:
    """Most attempts an event can make in `seconds` if every retry waits at least half its
    backoff (equal jitter), the first attempt at once."""
    t, n = 0.0, 1
    while n < 10000:
        delay = min(initial * mult ** (n - 1), cap) / 2
        if t + delay > seconds:
            return n
        t += delay
        n += 1
    return n


def post_batch(relay, ledger, prefix: str, count: int, start: int = 0, spacing: float = 0.0) -> None:
    for i in range(start, start + count):
        body = lib.candidate(i, "pos-auth", f"{prefix}-{i}")
        lib.send_until_acked(relay, body, lib.new_msg_id(), ledger, time.monotonic() + 10)
        if spacing:
            time.sleep(spacing)  # pacing the sender, not waiting for a condition


def jwt_part(results: lib.Results, long: bool) -> dict:
    sim = lib.Simulator().start()
    backoff = {"initial_seconds": 0.4, "multiplier": 2, "max_seconds": 3}
    relay = lib.Relay(lib.make_workdir(NAME + "-jwt"), sim=sim, config={"delivery": {"backoff": backoff}})
    relay.start()
    ledger = lib.Ledger()

    # 1. Tokens revoked after 1 s: a fresh token must be minted and used.
    sim.set_faults({"tokenMaxAgeSeconds": 1})
    mark = relay.mark()
    post_batch(relay, ledger, "jwt-age", 12, spacing=0.3)
    ok = lib.wait_drained(relay, ledger.acked.keys(), 30)
    rejected = relay.events("auth.token_rejected", since=mark)
    minted = relay.events("auth.token_minted")
    results.check(f"{NAME}: early-revoked tokens: partner refused at least one (fault fired)", bool(rejected),
                  "no auth.token_rejected logged: the fault did not fire, the check proves nothing")
    results.check(f"{NAME}: early-revoked tokens: fresh tokens minted (>= 2 auth.token_minted)", len(minted) >= 2,
                  f"{len(minted)} minted")
    st = relay.state_counts()
    results.check(f"{NAME}: early-revoked tokens: all delivered", ok and st["delivered"] + st["linked"] == len(ledger.acked),
                  f"{lib.fmt_counts(st)} for {len(ledger.acked)} acked")

    # 2. Every token refused: clear log lines, retries at the backoff's pace.
    observe = 12.0 if long else 4.0
    sim.set_faults({"rejectAllTokens": True})
    before = len(sim.state()["requests"])
    mark = relay.mark()
    n_events = 5
    t0 = time.time()
    post_batch(relay, ledger, "jwt-reject", n_events, start=100)
    time.sleep(observe)  # the observation window of the fault, not a wait for a condition
    t1 = time.time()
    reqs = [r for r in sim.state()["requests"][before:] if lib.parse_time(r["at"]) <= t1 + 1]
    per_event = max_attempts_within(t1 - t0 + 1, backoff["initial_seconds"], backoff["multiplier"], backoff["max_seconds"])
    bound = n_events * 2 * per_event + 4  # each attempt: the request and its one immediate resend
    results.check(f"{NAME}: all tokens refused: partner requests bounded by the backoff (<= {bound} in {t1 - t0:.1f}s)",
                  0 < len(reqs) <= bound, f"{len(reqs)} requests")
    rej = relay.events("auth.token_rejected", since=mark)
    results.check(f"{NAME}: all tokens refused: auth.token_rejected logged with status 401",
                  bool(rej) and all(e.get("status") == 401 for e in rej), f"{len(rej)} lines: {rej[:1]}")
    retries = [e for e in relay.events("delivery.retry_scheduled", since=mark) if e.get("error") == "unauthorized"]
    results.check(f"{NAME}: all tokens refused: retries scheduled with error unauthorized", bool(retries),
                  f"retry_scheduled errors: {sorted({e.get('error') for e in relay.events('delivery.retry_scheduled', since=mark)})}")
    leaked = [line for line in relay.raw_lines if lib.SIM_SECRET in line or "Bearer " in line or "eyJ" in line]
    results.check(f"{NAME}: no token or partner secret in the log", not leaked, f"{len(leaked)} lines, e.g. {leaked[:1]}")

    # 3. Recovery.
    sim.set_faults({})
    counts = lib.verify_end_state(results, f"{NAME} jwt", relay, sim, ledger, drain_timeout=60)
    rc = relay.stop()
    results.check(f"{NAME}: jwt relay SIGTERM exits 0", rc == 0, f"rc={rc}")
    sim.stop()
    return {"jwt_acked": counts["acked"], "jwt_delivered": counts["delivered"], "jwt_linked": counts["linked"],
            "jwt_tokens_minted": len(minted), "jwt_token_rejected": len(relay.events("auth.token_rejected")),
            "jwt_requests_while_rejecting": len(reqs), "jwt_duplicates": counts["partner_duplicates"]}


def oauth_config(sim, timeout: float, grace: float = 2) -> dict:
    return {
        "partner": {"timeout_seconds": timeout, "auth": {
            "mode": "oauth2_client_credentials", "token_url": sim.url + "/oauth/token",
            "client_id": lib.SIM_CLIENT_ID, "client_secret_file": "oauth-client-secret",
            "api_key_file": lib.DELETE, "secret_file": lib.DELETE}},
        "delivery": {"backoff": {"initial_seconds": 0.4, "multiplier": 2, "max_seconds": 3},
                     "shutdown_grace_seconds": grace},
    }


def oauth_part(results: lib.Results, long: bool) -> dict:
    sim = lib.Simulator().start()
    latency_supported = sim.supports("tokenLatencyMs", 1)
    results.check(f"{NAME}: simulator supports fault tokenLatencyMs", latency_supported,
                  "PUT /_sim/faults does not echo tokenLatencyMs (not in this binary's simulator yet)")
    relay = lib.Relay(lib.make_workdir(NAME + "-oauth"), sim=sim, config=oauth_config(sim, timeout=1))
    ledger = lib.Ledger()
    observe = 12.0 if long else 4.0

    # 1. Token endpoint down from the start.
    sim.set_faults({"tokenEndpointDown": True})
    relay.start()
    t0 = time.time()
    post_batch(relay, ledger, "oa-down", 5)
    failed = lib.wait_until(lambda: relay.events("auth.token_failed"), 15)
    results.check(f"{NAME}: oauth endpoint down: auth.token_failed logged", bool(failed),
                  f"token requests at the simulator: {sim.state()['tokenRequests']}")
    time.sleep(observe)  # observation window
    st = sim.state()
    per_event = max_attempts_within(time.time() - t0 + 1, 0.4, 2, 3)
    bound = 5 * per_event + 4
    results.check(f"{NAME}: oauth endpoint down: token requests bounded by the backoff (<= {bound})",
                  0 < st["tokenRequests"] <= bound, f"{st['tokenRequests']} token requests in {time.time() - t0:.1f}s")
    results.check(f"{NAME}: oauth endpoint down: nothing sent to the partner without a token",
                  len(st["requests"]) == 0, f"{len(st['requests'])} create requests")

    # 2. Token endpoint stalling beyond partner.timeout_seconds.
    if latency_supported:
        mark = relay.mark()
        sim.set_faults({"tokenLatencyMs": 3000})
        post_batch(relay, ledger, "oa-stall", 3, start=10)
        timed_out = lib.wait_until(
            lambda: [e for e in relay.events("auth.token_failed", since=mark) if e.get("error") == "timeout"], 15)
        results.check(f"{NAME}: oauth endpoint stalling: auth.token_failed error=timeout",
                      bool(timed_out), f"token_failed errors: {[e.get('error') for e in relay.events('auth.token_failed', since=mark)]}")
    # 3. Recovery.
    sim.set_faults({})
    post_batch(relay, ledger, "oa-ok", 3, start=20)
    counts = lib.verify_end_state(results, f"{NAME} oauth", relay, sim, ledger, drain_timeout=60)
    st = sim.state()
    results.check(f"{NAME}: oauth: tokens issued after recovery", st["tokensIssued"] >= 1, f"{st['tokensIssued']}")
    rc = relay.stop()
    results.check(f"{NAME}: oauth relay SIGTERM exits 0", rc == 0, f"rc={rc}")

    # 4. SIGTERM while a token fetch stalls (long timeout so the stall is the relay's to cut).
    grace = 1.0
    stall_s = None
    rc2 = None
    if latency_supported:
        sim.set_faults({"tokenLatencyMs": 60000})
        relay2 = lib.Relay(lib.make_workdir(NAME + "-oauth-term"), sim=sim, config=oauth_config(sim, timeout=30, grace=grace))
        relay2.start()
        before = sim.state()["tokenRequests"]
        l2 = lib.Ledger()
        post_batch(relay2, l2, "oa-term", 1, start=30)
        fetching = lib.wait_until(lambda: sim.state()["tokenRequests"] > before, 10)
        results.check(f"{NAME}: oauth: a token fetch is stalling before SIGTERM", bool(fetching),
                      "the relay never asked for a token")
        rc2 = relay2.stop(grace + 10)  # SIGTERM, and SIGKILL (None) past the timeout
        stall_s = relay2.last_stop_seconds
        results.check(f"{NAME}: oauth: SIGTERM during a stalled token fetch exits 0 within grace+2s ({grace + 2:.0f}s)",
                      rc2 == 0 and stall_s <= grace + 2,
                      f"rc={rc2} after {stall_s:.1f}s" + (" (still running: SIGKILLed)" if rc2 is None else ""))
        sim.set_faults({})
    sim.stop()
    return {"oauth_acked": counts["acked"], "oauth_delivered": counts["delivered"],
            "oauth_token_requests": st["tokenRequests"], "oauth_tokens_issued": st["tokensIssued"],
            "oauth_duplicates": counts["partner_duplicates"],
            "oauth_sigterm_exit_s": None if stall_s is None else round(stall_s, 1)}


def run(results: lib.Results, long: bool) -> dict:
    counts = jwt_part(results, long)
    counts.update(oauth_part(results, long))
    return counts
