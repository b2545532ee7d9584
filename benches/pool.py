#!/usr/bin/env python3
"""Pool the rounds of several benches/tls.sh runs and compare each veer build with the others.

On a machine whose speed drifts between rounds, one run's median moves by ±10 %; pooling the
per-round ratios of several runs, with a bootstrap interval for their median, says how sure a
difference is. Each ratio is taken within a round (runs seconds apart), so drift cancels.

Usage: benches/tls.sh 11 5 32 10 | tee run1.txt; ...; benches/pool.py run1.txt run2.txt ...
Reads the per-round lines ("ROUND TARGET REQ/S P50 P99 CPU CPU_LOGGED ...") and ignores the rest.
"""
import random
import statistics
import sys

METRICS = ("req/s", "p99", "cpu/req", "cpu/req(logged)")
COLUMNS = (0, 2, 3, 4)  # offsets after the target name: req/s, p50, p99, cpu, cpu_logged


def rounds(path):
    """{round: {target: [req/s, p50, p99, cpu, cpu_logged]}} of one run's output."""
    out = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 7 and f[0].isdigit():
            try:
                out.setdefault(f[0], {})[f[1]] = [float(x) for x in f[2:7]]
            except ValueError:
                continue
    return out


def interval(xs, rng, n=2000):
    """A 95 % bootstrap interval for the median of xs."""
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def main(paths):
    if not paths:
        sys.exit(__doc__)
    runs = [rounds(p) for p in paths]
    targets = list(dict.fromkeys(t for run in runs for r in run.values() for t in r))
    rng = random.Random(1)
    total = sum(len(run) for run in runs)
    print(f"{total} rounds from {len(paths)} runs; median of per-round ratios [95 % interval]")
    for me in (t for t in targets if t.startswith("veer")):
        for other in (t for t in targets if t != me):
            ratios = [
                [r[me][c] / r[other][c] for c in COLUMNS]
                for run in runs
                for r in run.values()
                if me in r and other in r and all(r[other][c] for c in COLUMNS)
            ]
            if not ratios:
                continue
            cells = []
            for i, name in enumerate(METRICS):
                xs = [x[i] for x in ratios]
                lo, hi = interval(xs, rng)
                cells.append(f"{name} {statistics.median(xs):.2f} [{lo:.2f}, {hi:.2f}]")
            print(f"{me}/{other} (n={len(ratios)}): " + "  ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
