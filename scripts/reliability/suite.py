#!/usr/bin/env python3
"""candidate-relay reliability suite: drives the real binary and the partner simulator from
outside (HTTP, signals, /_sim/state, the outbox read-only, the JSON logs).

    python3 scripts/reliability/suite.py [--long] [--only NAME[,NAME...]] [--keep] [--list]

Prints PASS/FAIL per check, counts per scenario, and ends with the line `N passed, N failed`;
exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import lib  # noqa: E402

SCENARIOS = ["crash_loop", "outage", "auth", "rate_limit", "disk", "shutdown", "reload", "hostile"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long", action="store_true", help="soak lengths (many more kills, minutes-long phases)")
    parser.add_argument("--only", action="append", default=[], help="scenario name(s), repeatable or comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, outboxes)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args()
    lib.set_keep(args.keep)
    lib.install_signal_handlers()

    available = [n for n in SCENARIOS if os.path.exists(os.path.join(HERE, f"scenario_{n}.py"))]
    if args.list:
        print("\n".join(available))
        return 0
    only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in only if n not in available]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    selected = only or available
    results = lib.Results()
    report: dict = {}
    print(f"binary: {lib.BINARY}", flush=True)
    print(f"mode: {'long' if args.long else 'short'}; scenarios: {', '.join(selected)}", flush=True)
    t_start = time.monotonic()
    for name in selected:
        print(f"=== {name}", flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"scenario_{name}")
            counts = module.run(results, args.long)
        except Exception:
            counts = None
            tb = traceback.format_exc()
            print(tb, flush=True)
            results.check(f"{name}: scenario ran to the end", False, tb.strip().splitlines()[-1])
        finally:
            # Whatever the scenario left running is not the next one's business.
            lib.kill_all_processes()
        elapsed = time.monotonic() - t0
        report[name] = (counts, elapsed)
        shown = ", ".join(f"{k}={v}" for k, v in (counts or {}).items())
        print(f"--- {name}: {elapsed:.0f}s; {shown}", flush=True)
    print("=== report", flush=True)
    for name, (counts, elapsed) in report.items():
        shown = ", ".join(f"{k}={v}" for k, v in (counts or {}).items()) or ("(no counts: scenario aborted)" if counts is None else "-")
        print(f"{name:12s} {elapsed:6.0f}s  {shown}", flush=True)
    print(f"total {time.monotonic() - t_start:.0f}s", flush=True)
    return results.summary()


if __name__ == "__main__":
    sys.exit(main())
