"""Many accounts: the daemon's idle CPU, then --events posted over the first --busy accounts
(default: all) and drained against the simulator (16 workers, rate limit off), with the
daemon's CPU per event. Example, the case in docs/performance.md:
CANDIDATE_RELAY_BIN=$PWD/.build/release/candidate-relay python3 scripts/probes/many_accounts.py --accounts 500 --busy 5"""
import sys, os, time, json, threading, argparse
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reliability"))
import lib
ap = argparse.ArgumentParser(); ap.add_argument("--accounts", type=int, default=500); ap.add_argument("--events", type=int, default=3000); ap.add_argument("--busy", type=int, default=0)
a = ap.parse_args()
lib.install_signal_handlers()
work = lib.make_workdir("accounts")
names = [f"a{i:03d}" for i in range(a.accounts)]
args = []
for n in names: args += ["--api-key", "key-" + n]
sim = lib.Simulator(args).start()
cfg = {"accounts": {n: {"api_key_file": "key-" + n} for n in names},
       "partner": {"auth": {"api_key_file": lib.DELETE}}, "delivery": {"workers": 16}}
relay = lib.Relay(work, cfg, sim=sim)
for n in names: relay._write_secret("key-" + n, "key-" + n + "\n")
relay.start()
def cpu():
    f = open(f"/proc/{relay.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
time.sleep(3)
c0 = cpu(); time.sleep(10); c1 = cpu()
print(f"{a.accounts} accounts: idle CPU {100*(c1-c0)/10:.1f}% of a core", flush=True)
# post events spread over accounts, 8 threads
sent = [0]; lock = threading.Lock()
def sender(k):
    for i in range(k, a.events, 8):
        n = names[i % (a.busy or len(names))]
        st = lib.signed_post(relay, lib.candidate(i), path=f"/v1/accounts/{n}/candidates")[0]
        assert st == 202, st
t0 = time.monotonic(); c0 = cpu()
ts = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
t_post = time.monotonic() - t0
def delivered():
    st = sim.state()
    return len(st.get("candidates", [])) >= a.events
lib.wait_until(delivered, 600, 0.2)
t_all = time.monotonic() - t0; c1 = cpu()
print(f"{a.events} events over {a.accounts} accounts: posted in {t_post:.1f}s, all delivered after {t_all:.1f}s; daemon CPU {c1-c0:.1f}s ({1000*(c1-c0)/a.events:.2f} ms/event)", flush=True)
relay.stop(); sim.stop(); lib.cleanup()
