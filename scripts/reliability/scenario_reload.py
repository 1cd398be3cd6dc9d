"""reload: a SIGHUP storm while senders post and workers deliver.

Config management, a `systemctl reload` in a loop or an operator's script can send SIGHUP
many times a second. Each reload here rewrites the config first (atomically, as an editor or
a deploy tool does) with a random variant: workers 1 to 16, a rate limit on and off, another
backoff, another log level. The partner is slow and flaky meanwhile.

The partner token comes from the simulator's OAuth2 token endpoint, which counts requests.

What must hold: the daemon never dies and applies every reload of a valid file (no
`config.reload_rejected`); senders only ever get 202/200/503; afterwards the backlog drains
with nothing lost and one candidate per natural key at the partner; and the token endpoint is
asked once, not once per reload (found from outside: 717 tokens minted over 1,079 reloads, and
with OAuth2 a reload while the token endpoint was down stopped delivery).
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import lib

NAME = "reload"

VARIANTS = [
    {"delivery": {"workers": 1}},
    {"delivery": {"workers": 16}},
    {"delivery": {"workers": 3}, "partner": {"rate_limit": {"requests": 20, "per_seconds": 1}}},
    {"delivery": {"workers": 8}, "partner": {"rate_limit": {"requests": 0, "per_seconds": 60}}},
    {"logging": {"level": "debug"}},
    {"logging": {"level": "warning"}},
    {"delivery": {"backoff": {"initial_seconds": 0.2, "multiplier": 3, "max_seconds": 2}}},
    {"delivery": {"circuit_breaker": {"failures": 3, "cooldown_seconds": 1}}},
]


def run(results: lib.Results, long: bool) -> dict:
    storm_seconds = 120 if long else 15
    rng = random.Random()
    sim = lib.Simulator().start()
    sim.set_faults({"latencyMs": 40, "errorRate": 0.1, "injectStatus": 503, "closeRate": 0.03})
    relay = lib.Relay(lib.make_workdir(NAME), sim=sim, config={
        "delivery": {"max_attempts": 100, "workers": 4,
                     "backoff": {"initial_seconds": 0.05, "multiplier": 2, "max_seconds": 0.5},
                     "circuit_breaker": {"failures": 8, "cooldown_seconds": 0.3}},
        "partner": {"timeout_seconds": 2, "auth": {
            "mode": "oauth2_client_credentials", "token_url": sim.url + "/oauth/token",
            "client_id": lib.SIM_CLIENT_ID, "client_secret_file": "oauth-client-secret",
            "api_key_file": lib.DELETE, "secret_file": lib.DELETE}},
    })
    relay.start()
    base = json.loads(json.dumps(relay.config))
    ledger = lib.Ledger()
    stop = threading.Event()
    counter = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + storm_seconds + 120

    def sender(tid: int) -> None:
        r = random.Random(tid)
        n = 0
        while not stop.is_set():
            n += 1
            with lock:
                counter[0] += 1
                i = counter[0]
            if r.random() < 0.3:
                body = lib.candidate(i, position_uid="pos-nk", partner_candidate_id=f"nk-{r.randrange(10)}")
            else:
                body = lib.candidate(i, position_uid=f"pos-{tid}", partner_candidate_id=f"rl-{tid}-{n}")
            lib.send_until_acked(relay, body, lib.new_msg_id(), ledger, min(deadline, time.monotonic() + 60))
            time.sleep(r.uniform(0.0, 0.02))

    threads = [threading.Thread(target=sender, args=(t,), daemon=True) for t in range(4)]
    for t in threads:
        t.start()

    def write_atomically(config: dict) -> None:
        relay.config = config
        tmp = relay.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write("# written by scripts/reliability/scenario_reload.py\n" + lib.to_yaml(config) + "\n")
        os.replace(tmp, relay.config_path)

    lib.log(f"{NAME}: SIGHUP storm for {storm_seconds}s, senders running, partner flaky")
    hups = 0
    t_end = time.monotonic() + storm_seconds
    while time.monotonic() < t_end and relay.running():
        write_atomically(lib.deep_merge(json.loads(json.dumps(base)), rng.choice(VARIANTS)))
        for _ in range(rng.randrange(1, 4)):
            relay.signal(signal.SIGHUP)
            hups += 1
        time.sleep(rng.uniform(0.0, 0.05))
    alive = relay.running()
    results.check(f"{NAME}: relay alive through {hups} SIGHUPs", alive)
    write_atomically(base)
    relay.signal(signal.SIGHUP)
    reloaded = len(relay.events("config.reloaded"))
    rejected = relay.events("config.reload_rejected")
    # Signals that arrive during a reload coalesce into the next one: fewer reloads than SIGHUPs.
    results.check(f"{NAME}: reloads applied ({reloaded}) and none of a valid file refused", reloaded > 0 and not rejected,
                  f"{len(rejected)} refused: {[e.get('problems') for e in rejected[:2]]}")
    stop.set()
    for t in threads:
        t.join(90)
    sim.set_faults({})
    lib.log(f"{NAME}: storm over, draining {len(ledger.acked)} acked events")
    counts = lib.verify_end_state(results, NAME, relay, sim, ledger, drain_timeout=90)
    bad = list(ledger.bad)
    results.check(f"{NAME}: ingest answered only 202/200/503 during the storm", not bad, f"{len(bad)} others, e.g. {bad[:3]}")
    token_requests = sim.state()["tokenRequests"]
    results.check(f"{NAME}: the token endpoint was asked once, not once per reload", token_requests == 1,
                  f"{token_requests} token requests over {reloaded} reloads")
    rc = relay.stop()
    results.check(f"{NAME}: final SIGTERM exits 0", rc == 0, f"rc={rc}")
    sim.stop()
    counts.update({"sighups": hups, "reloads": reloaded, "token_requests": token_requests,
                   "interrupted_claims": len(relay.events("delivery.interrupted"))})
    return counts
