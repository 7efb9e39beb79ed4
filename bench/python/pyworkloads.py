#!/usr/bin/env python3
"""Workloads W1..W10 on Python's billiard and multiprocessing pools.

The Python side of `bench` (bench/src/external.rs runs it from the venv it
creates with bench/python/requirements.txt). The workloads are the ones
billiard-host runs in bench/src/workloads.rs, defined in docs/benchmarks.md:
same task, same N, same pool size, the same thing timed, results checked.

    python pyworkloads.py --impl billiard,multiprocessing --workload all \
        --runs 3 [--quick | --scale F] [--jsonl FILE]

One JSON line per result on stdout (and appended to --jsonl):
    {"impl", "workload", "metric", "value" (median of the runs), "unit", "n",
     "min", "max", "runs", "samples", extras: "variant", "outcome", "note",
     "pool_usable_after", "worker_replaced", "replaced_after_s",
     "completed", "next_job_s"}
`value: null` means no number: a hang, or a feature the pool lacks
(`outcome` says which). Each (impl, workload) runs in a fresh interpreter
(this file with --child), in its own session, killed after --cap seconds.
"""

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time

MIB = 1024 * 1024
IMPLS = ("billiard", "multiprocessing")
WORKLOADS = tuple("W%d" % i for i in range(1, 11))


# ---------------------------------------------------------------- tasks
# Module-level, so the fork start method finds them in the workers.

def square(x):
    return x * x


def spin(s):
    # Busy loop on the wall clock: CPU-bound, not a sleep.
    end = time.perf_counter() + s
    while time.perf_counter() < end:
        pass
    return s


def payload_len(b):
    return len(b)


def payload_echo(b):
    return b


def crash_segv():
    os.kill(os.getpid(), signal.SIGSEGV)


def crash_exit1():
    os._exit(1)


def sleep_task(s):
    time.sleep(s)
    return s


# --------------------------------------------------------------- helpers

def make_pool(impl, processes, maxtasksperchild=None, **billiard_kw):
    if impl == "billiard":
        import billiard
        import billiard.pool
        # Built directly: billiard's context.Pool() drops enable_timeouts.
        return billiard.pool.Pool(processes, maxtasksperchild=maxtasksperchild,
                                  context=billiard.get_context("fork"), **billiard_kw)
    import multiprocessing
    return multiprocessing.get_context("fork").Pool(processes, maxtasksperchild=maxtasksperchild)


def warm(pool):
    got = pool.map(square, range(8), chunksize=1)
    assert got == [i * i for i in range(8)], got


def finish(pool):
    pool.close()
    pool.join()


def pctl(sorted_values, q):
    """Nearest-rank percentile (the same rule as the Rust side)."""
    n = len(sorted_values)
    k = min(max(int(round(q / 100.0 * n + 0.5)) - 1, 0), n - 1)
    return sorted_values[k]


def record(impl, workload, metric, samples, unit, n, **extra):
    nums = sorted(s for s in samples if s is not None)
    r6 = lambda v: None if v is None else round(v, 6)
    rec = {"impl": impl, "workload": workload, "metric": metric,
           "value": r6(statistics.median(nums)) if nums else None,
           "unit": unit, "n": n,
           "min": r6(nums[0]) if nums else None, "max": r6(nums[-1]) if nums else None,
           "runs": len(samples), "samples": [r6(s) for s in samples]}
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def unsupported(impl, workload, metric, unit, n, why, **extra):
    return record(impl, workload, metric, [None], unit, n, outcome="unsupported: " + why, **extra)


def smaps(pid):
    """(rss, pss, uss) KiB from /proc/PID/smaps_rollup."""
    fields = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    return (fields["Rss"], fields["Pss"],
            fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))


def worker_pids(pool):
    return sorted(p.pid for p in pool._pool if p.pid)


def describe(e):
    """`Type: first line`; billiard hands some errors over wrapped in an
    ExceptionWithTraceback whose `exc` is the real one."""
    inner = getattr(e, "exc", None)
    if isinstance(inner, BaseException):
        e = inner
    lines = str(e).strip().splitlines()
    return "%s: %s" % (type(e).__name__, lines[0] if lines else "")


def joined(values):
    return " | ".join(sorted(set(values)))


# ------------------------------------------------------------- workloads

def w1(impl, a):
    n = a.n(100_000, 100)
    rates = []
    for _ in range(a.runs):
        pool = make_pool(impl, 2)
        warm(pool)
        t0 = time.perf_counter()
        count = 0
        for i, v in enumerate(pool.imap(square, range(n), chunksize=1)):
            assert v == i * i, (i, v)
            count += 1
        rates.append(n / (time.perf_counter() - t0))
        assert count == n
        finish(pool)
    return [record(impl, "W1", "throughput", rates, "tasks/s", n,
                   note="imap(square, range(n), chunksize=1), results in order")]


def w2(impl, a):
    n = a.n(1_000_000, 2000)
    rates = []
    for _ in range(a.runs):
        pool = make_pool(impl, 2)
        warm(pool)
        t0 = time.perf_counter()
        got = pool.map(square, range(n), chunksize=1000)
        rates.append(n / (time.perf_counter() - t0))
        assert len(got) == n and got[-1] == (n - 1) ** 2
        assert sum(got) == (n - 1) * n * (2 * n - 1) // 6
        finish(pool)
    return [record(impl, "W2", "throughput", rates, "tasks/s", n,
                   note="map(square, range(n), chunksize=1000)")]


def w3(impl, a):
    n = a.n(2000, 20)
    p50s, p99s, means = [], [], []
    for _ in range(a.runs):
        pool = make_pool(impl, 1)
        for i in range(100):
            pool.apply(square, (i,))
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            v = pool.apply(square, (i,))
            lat.append((time.perf_counter() - t0) * 1e6)
            assert v == i * i
        lat.sort()
        p50s.append(pctl(lat, 50))
        p99s.append(pctl(lat, 99))
        means.append(sum(lat) / n)
        finish(pool)
    note = "Pool(1), 100 untimed apply, then n sequential apply(square, (i,)), each timed"
    return [record(impl, "W3", "p50", p50s, "us", n, note=note),
            record(impl, "W3", "p99", p99s, "us", n, note=note),
            record(impl, "W3", "mean", means, "us", n, note=note)]


def w4(impl, a):
    n = max(a.n(40, 4) // 2 * 2, 2)
    effs, walls = [], []
    for _ in range(a.runs):
        pool = make_pool(impl, 2)
        warm(pool)
        t0 = time.perf_counter()
        got = pool.map(spin, [0.05] * n, chunksize=1)
        wall = time.perf_counter() - t0
        assert got == [0.05] * n
        effs.append((n * 0.05 / 2) / wall)
        walls.append(wall)
        finish(pool)
    note = "map(spin, [0.05]*n, chunksize=1); efficiency = (n x 0.05 / 2) / wall"
    return [record(impl, "W4", "efficiency", effs, "ratio", n, note=note),
            record(impl, "W4", "wall", walls, "s", n, note=note)]


def w5(impl, a):
    n = a.n(500, 5)
    payload = os.urandom(MIB)
    out = []
    for variant, task, metric in (("arg_only", payload_len, "arg_throughput"),
                                  ("round_trip", payload_echo, "roundtrip_throughput")):
        rates = []
        for _ in range(a.runs):
            pool = make_pool(impl, 2)
            warm(pool)
            t0 = time.perf_counter()
            total = 0
            for v in pool.imap(task, itertools.repeat(payload, n), chunksize=1):
                if variant == "arg_only":
                    total += v
                else:
                    assert v == payload
                    total += len(v)
            rates.append(n * MIB / 1e6 / (time.perf_counter() - t0))
            assert total == n * MIB
            finish(pool)
        out.append(record(impl, "W5", metric, rates, "MB/s", n, variant=variant,
                          note="the same 1 MiB random bytes as each task's argument, imap chunksize 1; MB/s per direction"))
    return out


def w6(impl, a):
    n = a.n(2000, 20)
    rates, completed = [], []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        pool = make_pool(impl, 2, maxtasksperchild=1)
        done = 0
        total = 0
        for v in pool.imap_unordered(square, range(n), chunksize=1):
            total += v
            done += 1
            if time.perf_counter() - t0 > a.w6_budget:
                break
        elapsed = time.perf_counter() - t0
        if done == n:
            assert total == (n - 1) * n * (2 * n - 1) // 6
            finish(pool)
        else:
            pool.terminate()
            pool.join()
        rates.append(done / elapsed)
        completed.append(done)
    return [record(impl, "W6", "throughput", rates, "tasks/s", n, completed=completed,
                   note="maxtasksperchild=1, imap_unordered(square, range(n), chunksize=1), pool creation timed; budget %g s" % a.w6_budget)]


def crash_once(impl, task, kw):
    """(seconds to the error or None, outcome, usable after, next job s)."""
    pool = make_pool(impl, 2, **kw)
    warm(pool)
    t0 = time.perf_counter()
    r = pool.apply_async(task)
    try:
        r.get(timeout=15)
        took, outcome = None, "no error"
    except Exception as e:  # the pool's own error types differ
        if type(e).__name__ == "TimeoutError" and time.perf_counter() - t0 >= 14.9:
            took, outcome = None, "hang"
        else:
            took, outcome = time.perf_counter() - t0, describe(e)
    t1 = time.perf_counter()
    try:
        usable = pool.apply_async(square, (7,)).get(timeout=10) == 49
        next_s = time.perf_counter() - t1
    except Exception:
        usable, next_s = False, None
    pool.terminate()
    pool.join()
    return took, outcome, usable, next_s


def collateral(impl, kw):
    pool = make_pool(impl, 2, **kw)
    warm(pool)
    others = [pool.apply_async(sleep_task, (0.5,))]
    pool.apply_async(crash_segv)
    others += [pool.apply_async(square, (i,)) for i in range(4)]
    deadline = time.perf_counter() + 15
    failed = 0
    for r in others:
        try:
            r.get(timeout=max(deadline - time.perf_counter(), 0.01))
        except Exception:
            failed += 1
    pool.terminate()
    pool.join()
    return failed


def w7(impl, a):
    variants = [("default", {})]
    if impl == "billiard":
        variants.append(("lost_worker_timeout=0.01", {"lost_worker_timeout": 0.01}))
    out = []
    for vname, kw in variants:
        if vname == "default":
            counts = [collateral(impl, kw) for _ in range(a.runs)]
            out.append(record(impl, "W7", "collateral_failed_jobs", counts, "jobs", 5, variant=vname,
                              note="sleep_task(0.5), crash_segv(), 4 x square: how many of the 5 others fail"))
        for cname, task in (("segv", crash_segv), ("exit1", crash_exit1)):
            times, outcomes, usable, nexts = [], [], [], []
            for _ in range(a.runs):
                took, outcome, ok, next_s = crash_once(impl, task, kw)
                times.append(took)
                outcomes.append(outcome)
                usable.append(str(ok).lower())
                nexts.append(None if next_s is None else round(next_s, 6))
            out.append(record(impl, "W7", "%s_time_to_error" % cname, times, "s", 1, variant=vname,
                              outcome=joined(outcomes), pool_usable_after=joined(usable),
                              next_job_s=nexts))
    return out


W8_CODE = """
import sys
sys.path.insert(0, %r)
import pyworkloads
pool = pyworkloads.make_pool(%r, 2)
assert pool.apply(pyworkloads.square, (3,)) == 9
pool.close()
pool.join()
"""


def w8(impl, a):
    ins, firsts, closes, whole, base = [], [], [], [], []
    here = os.path.dirname(os.path.abspath(__file__))
    make_pool(impl, 1).terminate()  # imports outside the timing
    for _ in range(a.runs):
        t0 = time.perf_counter()
        pool = make_pool(impl, 2)
        v = pool.apply(square, (3,))
        t1 = time.perf_counter()
        finish(pool)
        t2 = time.perf_counter()
        assert v == 9
        ins.append((t2 - t0) * 1e3)
        firsts.append((t1 - t0) * 1e3)
        closes.append((t2 - t1) * 1e3)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", W8_CODE % (here, impl)], check=True)
        whole.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base.append((time.perf_counter() - t0) * 1e3)
    return [record(impl, "W8", "in_process", ins, "ms", 1, note="Pool(2), apply(square, (3,)), close, join"),
            record(impl, "W8", "in_process_first_result", firsts, "ms", 1),
            record(impl, "W8", "in_process_close_join", closes, "ms", 1),
            record(impl, "W8", "whole_process", whole, "ms", 1, note="python -c: import, the same, exit"),
            record(impl, "W8", "python_startup_baseline", base, "ms", 1, note="python -c pass")]


def w9(impl, a):
    rss, pss, uss, prss = [], [], [], []
    for _ in range(a.runs):
        pool = make_pool(impl, 2)
        warm(pool)
        time.sleep(a.settle)
        figures = [smaps(pid) for pid in worker_pids(pool)]
        assert len(figures) == 2, figures
        rss.append(sum(f[0] for f in figures) / 2)
        pss.append(sum(f[1] for f in figures) / 2)
        uss.append(sum(f[2] for f in figures) / 2)
        prss.append(smaps(os.getpid())[0])
        finish(pool)
    note = "mean of the 2 idle workers, /proc/PID/smaps_rollup"
    return [record(impl, "W9", "worker_rss", rss, "KiB", 2, note=note),
            record(impl, "W9", "worker_pss", pss, "KiB", 2, note=note),
            record(impl, "W9", "worker_uss", uss, "KiB", 2, note=note + "; Private_Clean + Private_Dirty"),
            record(impl, "W9", "parent_rss", prss, "KiB", 1)]


W10_VARIANTS = (("hard", "time_to_hard_limit_error", "hard limit 0.2 s on sleep(10 s)",
                 {"timeout": 0.2}),
                ("soft", "time_to_soft_limit_error", "soft limit 0.2 s on sleep(10 s) (hard 5 s)",
                 {"soft_timeout": 0.2, "timeout": 5}))


def w10(impl, a):
    if impl != "billiard":
        return [unsupported(impl, "W10", metric, "s", 1, "multiprocessing has no task time limit", variant=vname)
                for _, metric, vname, _ in W10_VARIANTS]
    out = []
    for _, metric, vname, limits in W10_VARIANTS:
        times, outcomes, replaced, repl_s, usable = [], [], [], [], []
        for _ in range(a.runs):
            pool = make_pool(impl, 2, enable_timeouts=True)
            warm(pool)
            before = set(worker_pids(pool))
            t0 = time.perf_counter()
            r = pool.apply_async(sleep_task, (10,), **limits)
            try:
                r.get(timeout=15)
                times.append(None)
                outcomes.append("no error")
            except Exception as e:
                times.append(time.perf_counter() - t0)
                outcomes.append(describe(e))
            seen = None
            deadline = time.perf_counter() + 5
            while time.perf_counter() < deadline:
                if set(worker_pids(pool)) - before:
                    seen = time.perf_counter() - t0
                    break
                time.sleep(0.005)
            replaced.append(str(seen is not None).lower())
            repl_s.append(None if seen is None else round(seen, 6))
            try:
                usable.append(str(pool.apply_async(square, (7,)).get(timeout=10) == 49).lower())
            except Exception:
                usable.append("false")
            pool.terminate()
            pool.join()
        out.append(record(impl, "W10", metric, times, "s", 1, variant=vname, outcome=joined(outcomes),
                          worker_replaced=joined(replaced), replaced_after_s=repl_s,
                          pool_usable_after=joined(usable)))
    return out


RUNNERS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5,
           "W6": w6, "W7": w7, "W8": w8, "W9": w9, "W10": w10}


# ---------------------------------------------------------------- driver

def child(a):
    impl, workload = a.child
    for rec in RUNNERS[workload](impl, a):
        print(json.dumps(rec), flush=True)


def error_record(impl, workload, message):
    return {"impl": impl, "workload": workload, "metric": "error", "value": None, "unit": None,
            "n": None, "min": None, "max": None, "runs": None, "error": message[-2000:]}


def run_one(a, impl, workload):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, workload,
           "--runs", str(a.runs), "--scale", repr(a.scale), "--w6-budget", repr(a.w6_budget)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=a.cap)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return [error_record(impl, workload, "cap of %g s exceeded; killed" % a.cap)]
    recs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    if p.returncode != 0:
        recs.append(error_record(impl, workload, "exited with %d: %s" % (p.returncode, err.strip())))
    elif not recs:
        recs.append(error_record(impl, workload, "printed no result"))
    return recs


def names(text, known, what):
    if text == "all":
        return list(known)
    out = []
    for t in text.split(","):
        t = t.strip()
        match = [k for k in known if k.lower() == t.lower()]
        if not match:
            sys.exit("pyworkloads: unknown %s %r (one of %s, or all)" % (what, t, ", ".join(known)))
        out.append(match[0])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", default="all", help="billiard,multiprocessing or all")
    p.add_argument("--workload", default="all", help="W1..W10 (comma list) or all")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="N/10 everywhere: a smoke test")
    p.add_argument("--scale", type=float, default=None, help="multiply every N (0 < F <= 1)")
    p.add_argument("--w6-budget", type=float, default=30.0, help="W6: stop a run after S seconds")
    p.add_argument("--cap", type=float, default=900.0, help="kill an (impl, workload) after S seconds")
    p.add_argument("--jsonl", help="also append the result lines to this file")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "W"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.scale is None:
        a.scale = 0.1 if a.quick else 1.0
    if not (0 < a.scale <= 1) or not (1 <= a.runs <= 100) or not (0 < a.w6_budget <= 3600):
        sys.exit("pyworkloads: --scale must be in (0, 1], --runs in 1..100, --w6-budget in (0, 3600]")
    a.n = lambda n, lo: max(int(n * a.scale), lo)
    a.settle = 1.0 if a.scale >= 0.1 else 0.1
    if a.child:
        return child(a)
    impls = names(a.impl, IMPLS, "impl")
    workloads = names(a.workload, WORKLOADS, "workload")
    sink = open(a.jsonl, "a") if a.jsonl else None
    for impl in impls:
        for w in workloads:
            print("[pyworkloads] %s %s" % (impl, w), file=sys.stderr, flush=True)
            for rec in run_one(a, impl, w):
                line = json.dumps(rec)
                print(line, flush=True)
                if sink:
                    sink.write(line + "\n")
                    sink.flush()


if __name__ == "__main__":
    main()
