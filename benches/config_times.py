#!/usr/bin/env python3
"""Startup and reload times of one veer config (benches/memory.sh, issue 15).

Usage: config_times.py VEER_BIN CONFIG ADMIN_PORT OLD NEW [RUNS=5]

Each run starts `veer run --config CONFIG` and times it until /readyz answers 200 (polled every
millisecond), then replaces the first OLD in the file by NEW (one weight), times
`POST /api/reload` (the reload: read, validate, apply), checks that it changed something,
puts the file back and stops veer. Prints the median and the best of the runs, in ms, wall
clock and the CPU time veer used meanwhile (user + system, 10 ms ticks): on a busy machine
the wall clock mostly measures the wait for a core.
"""
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time


def ready(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/readyz")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def cpu(pid):
    """CPU time (user + system) of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(binary, config, port, old, new):
    with open(config) as f:
        text = f.read()
    env = dict(os.environ, VEER_LOG="warn")
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "run", "--config", config], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready(port):
            if p.poll() is not None:
                sys.exit(f"veer exited ({p.returncode}) before it was ready")
            if time.monotonic() - t0 > 120:
                sys.exit("veer not ready after 120 s")
            time.sleep(0.001)
        startup = time.monotonic() - t0
        startup_cpu = cpu(p.pid)
        changed = text.replace(old, new, 1)
        if changed == text:
            sys.exit(f"{old!r} is not in {config}")
        # Written in place before the call: the watcher's debounce (100 ms) lets the API call
        # take the change; the watcher then finds the same config and does nothing.
        with open(config, "w") as f:
            f.write(changed)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        cpu1 = cpu(p.pid)
        t1 = time.monotonic()
        c.request("POST", "/api/reload", body=b"", headers={"content-type": "application/json"})
        r = c.getresponse()
        body = r.read()
        reload = time.monotonic() - t1
        reload_cpu = cpu(p.pid) - cpu1
        if r.status != 200 or not json.loads(body).get("changed", True):
            sys.exit(f"reload answered {r.status}: {body[:300]!r}")
        return startup, reload, startup_cpu, reload_cpu
    finally:
        with open(config, "w") as f:
            f.write(text)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    binary, config, port, old, new = sys.argv[1:6]
    runs = int(sys.argv[6]) if len(sys.argv) > 6 else 5
    got = [one_run(binary, config, int(port), old, new) for _ in range(runs)]
    ms = [[g[i] * 1000 for g in got] for i in range(4)]
    med = [statistics.median(m) for m in ms]
    print(f"startup {med[0]:.0f} ms (best {min(ms[0]):.0f}, cpu {med[2]:.0f})  "
          f"reload of one weight {med[1]:.0f} ms (best {min(ms[1]):.0f}, cpu {med[3]:.0f})")


if __name__ == "__main__":
    main()
