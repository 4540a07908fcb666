"""Same-run A/B of the gateway's own per-request CPU: parse, decide every line, build the reply.

For the everyday 20-line bill of ``bench_metrics`` (no gRPC, no Redis, no metrics), two source
trees are timed in alternating child processes and, per part, the least CPU time
(``time.process_time``) over the alternations is kept: the least is what the code costs, the
rest is other load on the machine. Compare this branch with a checkout of another commit:

    git worktree add /tmp/base <commit>        # or: git archive <commit> | tar -x -C /tmp/base
    python -m benchmarks.bench_request_path /tmp/base . [--rounds 15] [--profile zhoushan]
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

PARTS = ("parse", "decide", "build")


def child(profile: str | None, requests: int) -> None:
    from benchmarks.bench_metrics import everyday_bill, evidence
    from gateway.config import Settings
    from gateway.rules import decide_all
    from gateway.settlement import build_response, parse_request

    config = (Settings(policy_profile=profile) if profile else Settings()).rules
    bill, ev = everyday_bill(), evidence()
    parsed = parse_request(bill, config, 10_000)
    decisions = decide_all(parsed.lines, ev, config)
    calls = {
        "parse": lambda: parse_request(bill, config, 10_000),
        "decide": lambda: decide_all(parsed.lines, ev, config),
        "build": lambda: build_response(bill.request_id, parsed.lines, decisions, "v1", 1.0, False),
    }
    out = []
    for name in PARTS:
        call = calls[name]
        for _ in range(requests // 6):
            call()
        best = float("inf")
        for _ in range(7):
            started = time.process_time()
            for _ in range(requests):
                call()
            best = min(best, (time.process_time() - started) / requests)
        out.append(f"{name}={best * 1e6:.2f}")
    print(" ".join(out))


CHILD_SOURCE = "import time\nPARTS = " + repr(PARTS) + "\n" + inspect.getsource(child)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base", type=Path, help="source tree A (e.g. a checkout of the previous commit)")
    p.add_argument("new", type=Path, help="source tree B")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--profile", help="policy profile for tree B (tree A runs with its defaults)")
    args = p.parse_args()
    best: dict[tuple[str, str], float] = collections.defaultdict(lambda: float("inf"))
    for _ in range(args.rounds):
        for label, tree in (("A", args.base), ("B", args.new)):
            # The child's code is this file's, run inside the other tree (which need not have it).
            profile = args.profile if label == "B" else None
            code = f"{CHILD_SOURCE}\nchild({profile!r}, {args.requests})"
            cmd = [sys.executable, "-c", code]
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True)
            total = 0.0
            for part in done.stdout.split():
                name, value = part.split("=")
                best[(label, name)] = min(best[(label, name)], float(value))
                total += float(value)
            best[(label, "total")] = min(best[(label, "total")], total)
    print(f"least CPU per request over {args.rounds} alternations, A={args.base} B={args.new}")
    for name in (*PARTS, "total"):
        a, b = best[("A", name)], best[("B", name)]
        print(f"{name:7s} A {a:7.1f} us   B {b:7.1f} us   {100 * (b - a) / a:+.1f} %")


if __name__ == "__main__":
    main()
