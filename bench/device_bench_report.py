#!/usr/bin/env python3
"""Writes docs/BENCHMARKS.md and its plots from what bench/device_bench.sh left.

Usage: device_bench_report.py RESULTS_DIR OUT.md IMG_DIR

RESULTS_DIR (build/bench/device-results after a run) holds meta.json, one
dpfs-bench JSON per device and job (DEVICE.JOB.json), the polling runs
(poll.*.json) and perf's reports. Rerun this to change the report without
rerunning the benchmark. The plots are drawn by gnuplot (apt: gnuplot-nox).
"""
import json
import math
import os
import subprocess
import sys
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def portable(cmd):
    """A command line without this machine's paths: the checkout's own path
    goes, the run's temporary directory becomes $WORK."""
    cmd = cmd.replace(REPO + "/", "")
    return re.sub(r"/tmp/dpfs-device-bench\.[A-Za-z0-9]+", "$WORK", cmd)

results, out, img = sys.argv[1], sys.argv[2], sys.argv[3]
meta = json.load(open(f"{results}/meta.json"))
jobs = meta["jobs"].split()
depths = [int(d) for d in meta["depths"].split()]
devices = ["dpfs", "virtiofsd"]


def load(name):
    try:
        text = open(f"{results}/{name}.json").read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def err_of(name):
    try:
        return open(f"{results}/{name}.err").read().strip().splitlines()[-1]
    except (OSError, IndexError):
        return "no output"


def fmt_num(v, digits=0):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}x"


def field(r, key):
    if r is None:
        return None
    v = r.get(key)
    return None if v is None else float(v)


os.makedirs(img, exist_ok=True)
lines = []
w = lines.append

w("# Benchmarks")
w("")
w("- [benchmarking.md](benchmarking.md): every comparison below in one command,")
w("  `bench/all.sh`: what it needs, how long it takes, and the idle rule.")
w("- [FUSE_BENCHMARKS.md](FUSE_BENCHMARKS.md): dpfs on a `/dev/fuse` mount against")
w("  libfuse's example daemons (`bench/fuse_bench.sh`).")
w("- [GUEST_BENCHMARKS.md](GUEST_BENCHMARKS.md): fio inside a QEMU guest on")
w("  virtio-fs, dpfs against QEMU's virtiofsd (`bench/guest_bench.sh`).")
w("- [NFS_BENCHMARKS.md](NFS_BENCHMARKS.md): fio through a dpfs FUSE mount of an")
w("  NFS export (nfs-ganesha on loopback), the latency split into the NFS round")
w("  trip and dpfs's own time (`bench/nfs_bench.sh`).")
w("- [PASSTHROUGH_BENCHMARKS.md](PASSTHROUGH_BENCHMARKS.md): dpfs's passthrough")
w("  backend against virtiofsd over the same kind of host directory: dpfs-bench")
w("  (`bench/passthrough_device_bench.sh`) and guest fio")
w("  (`TARGETS=\"dpfs-pt virtiofsd\" SHARE=disk bench/guest_bench.sh`).")
w("- [REMOTE_BENCHMARKS.md](REMOTE_BENCHMARKS.md): the remote hop, a dpfs device")
w("  forwarding to a dpfs server over TCP, against the same backend served locally.")
w("- This page: the virtio-fs device alone, dpfs against QEMU's virtiofsd, driven")
w("  by `dpfs-bench` (`bench/device_bench.sh`).")
w("")
w("## The device alone: dpfs against virtiofsd")
w("")
w("`dpfs-bench` (tools/dpfs_bench/) is a userspace virtio-fs driver: it plays")
w("QEMU's vhost-user front-end (memfd memory, SET_MEM_TABLE, vrings, kick and")
w("call eventfds) and the guest kernel's driver (split rings, FUSE requests), so")
w("what is measured is the device: no guest, no VM exits, no guest page cache.")
w("Both devices get exactly the same requests. Latency is from making a request")
w("available to seeing its used entry; CPU per op is the device's CPU time (all")
w("threads, virtiofsd's sandboxed child included, from /proc/PID/task/*/schedstat)")
w("over the measured interval divided by the requests answered.")
w("")
w(f"Run {meta['date']} at commit {meta['commit']} ({meta.get('build_type', '?')} build), "
  "by `bench/device_bench.sh`.")
w("")
w("### Machine")
w("")
w(f"- CPU: {meta['cpu']}, {meta['cores']} cores; kernel {meta['kernel']}")
w(f"- Load average before the run: {meta['load_before']}; after: {meta['load_after']}.")
if meta.get("provisional"):
    w("- **Provisional**: measured with FORCE=1 on a machine that was not idle; ratios, not")
    w("  absolute numbers, are what this run can show.")
w("  The machine is shared with other builds and tests: absolute numbers move")
w("  from run to run by tens of percent; the ratios, taken in the same minute,")
w("  move less.")
w(f"- virtiofsd: {meta['virtiofsd']}")
w(f"- {meta['duration']} s measured per run after {meta['warmup']} s of warm-up; data file")
w(f"  {meta['file_size']}.")
w("")
w("### Commands")
w("")
w("```")
w(f"dpfs:      {portable(meta['dpfs_cmd'])}")
w(f"virtiofsd: {portable(meta['virtiofsd_cmd'])}")
w(f"driver:    {portable(meta['bench_cmd'])} --workload W --depth D [--block-size B]")
w("```")
w("")
w("dpfs serves memfs (memory); virtiofsd serves a directory on tmpfs (memory,")
w("through the host kernel's VFS). Both have one request queue served by one")
w("thread (virtiofsd has one request queue; dpfs runs `--threads 1`). The driver")
w("is event-driven (sleeps on the call eventfd).")
w("")
w("### Results")
w("")
w("ops/s counts FUSE requests (open-read: OPEN, READ, RELEASE are three ops;")
w("lookup: LOOKUP, GETATTR, FORGET three; metadata: CREATE, SETATTR, RELEASE,")
w("UNLINK, FORGET five). Ratios are dpfs over virtiofsd for ops/s and virtiofsd")
w("over dpfs for CPU per op (above 1: dpfs is better).")
w("")
w("| job | dpfs ops/s | virtiofsd ops/s | ops ratio | dpfs MB/s | virtiofsd MB/s "
  "| dpfs p50 / p99 µs | virtiofsd p50 / p99 µs | dpfs CPU µs/op | virtiofsd CPU µs/op "
  "| CPU ratio |")
w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
failures = []
for job in jobs:
    if job.startswith("sweep-"):
        continue
    r = {d: load(f"{d}.{job}") for d in devices}
    for d in devices:
        if r[d] is None:
            failures.append(f"{d} {job}: {err_of(f'{d}.{job}')}")
        elif r[d]["errors"]:
            failures.append(f"{d} {job}: {r[d]['errors']} errors, first: {r[d]['first_error']}")
    ops = {d: field(r[d], "ops_per_s") for d in devices}
    cpu = {d: field(r[d], "device_cpu_us_per_op") for d in devices}
    mbs = {d: field(r[d], "mb_per_s") for d in devices}
    lat = {d: f"{fmt_num(field(r[d], 'lat_p50_us'), 1)} / {fmt_num(field(r[d], 'lat_p99_us'), 1)}"
           for d in devices}
    w(f"| {job} | {fmt_num(ops['dpfs'])} | {fmt_num(ops['virtiofsd'])} "
      f"| {ratio(ops['dpfs'], ops['virtiofsd'])} "
      f"| {fmt_num(mbs['dpfs'], 1) if mbs['dpfs'] else '–'} "
      f"| {fmt_num(mbs['virtiofsd'], 1) if mbs['virtiofsd'] else '–'} "
      f"| {lat['dpfs']} | {lat['virtiofsd']} | {fmt_num(cpu['dpfs'], 2)} "
      f"| {fmt_num(cpu['virtiofsd'], 2)} | {ratio(cpu['virtiofsd'], cpu['dpfs'])} |")
w("")
if failures:
    w("Runs that failed or counted errors:")
    w("")
    for f in failures:
        w(f"- {f}")
    w("")

# Depth sweeps: a data file and two plots.
dat = os.path.join(results, "sweep.dat")
with open(dat, "w") as f:
    f.write("# depth dpfs_getattr_ops vfs_getattr_ops dpfs_randread_ops vfs_randread_ops "
            "dpfs_getattr_p99 vfs_getattr_p99 dpfs_randread_p99 vfs_randread_p99\n")
    for d in depths:
        row = [str(d)]
        for key in ("ops_per_s", "lat_p99_us"):
            for wl in ("getattr", "randread"):
                for dev in devices:
                    v = field(load(f"{dev}.sweep-{wl}-qd{d}"), key)
                    row.append("NaN" if v is None else f"{v:.3f}")
        f.write(" ".join(row) + "\n")

plots = [("device_ops_vs_depth.png", "requests per second", 2, "set logscale y 10"),
         ("device_p99_vs_depth.png", "p99 latency (µs)", 6, "set logscale y 10")]
for png, ylabel, first, extra in plots:
    script = f"""
set terminal pngcairo size 900,540 font 'DejaVu Sans,11'
set output '{os.path.join(img, png)}'
set title '{ylabel} against queue depth (one request queue, event-driven driver)'
set xlabel 'queue depth'
set ylabel '{ylabel}'
set logscale x 2
{extra}
set key top left
set grid
plot '{dat}' using 1:{first} with linespoints lw 2 title 'dpfs GETATTR', \\
     '' using 1:{first + 1} with linespoints lw 2 title 'virtiofsd GETATTR', \\
     '' using 1:{first + 2} with linespoints lw 2 dt 2 title 'dpfs 4k READ', \\
     '' using 1:{first + 3} with linespoints lw 2 dt 2 title 'virtiofsd 4k READ'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)

w("### Against queue depth")
w("")
w("GETATTR of the root (a no-op round trip) and 4 KiB random READs, at each depth:")
w("")
w("![ops/s against queue depth](img/device_ops_vs_depth.png)")
w("")
w("![p99 latency against queue depth](img/device_p99_vs_depth.png)")
w("")
w("| depth | dpfs GETATTR ops/s | virtiofsd GETATTR ops/s | dpfs READ ops/s "
  "| virtiofsd READ ops/s | dpfs GETATTR p99 µs | virtiofsd GETATTR p99 µs "
  "| dpfs READ p99 µs | virtiofsd READ p99 µs |")
w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for row in open(dat).read().splitlines()[1:]:
    v = row.split()
    cells = [fmt_num(None if x == "NaN" else float(x), 0 if i < 4 else 1) for i, x in enumerate(v[1:])]
    w(f"| {v[0]} | " + " | ".join(cells) + " |")
w("")

# Scaling over request queues.
scale_queues = [int(q) for q in meta.get("scale_queues", "").split()]
if scale_queues:
    w("## Scaling: request queues")
    w("")
    w("The same memfs device with N request queues and a worker for each "
      "(`--request-queues N --threads N`), the driver with a thread for each "
      "(`--queues N --threads N`, depth 32 on every queue), as a guest kernel "
      "(6.10 and later) spreads its requests over the queues by CPU. The "
      f"machine has {meta['cores']} cores for the device's workers and the "
      "driver's threads together.")
    w("")
    w("| workload | queues | ops/s | scaling | p50 µs | p99 µs | device CPU µs/op | driver CPU µs/op |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for wl in ("getattr", "randread"):
        base = load(f"dpfs.scale-{wl}-q{scale_queues[0]}")
        for nq in scale_queues:
            r = load(f"dpfs.scale-{wl}-q{nq}")
            if r is None:
                w(f"| {wl} | {nq} | failed: {err_of(f'dpfs.scale-{wl}-q{nq}')} | | | | | |")
                continue
            w(f"| {wl} | {nq} | {fmt_num(r['ops_per_s'])} "
              f"| {ratio(r['ops_per_s'], base['ops_per_s'] if base else None)} "
              f"| {r['lat_p50_us']:.1f} | {r['lat_p99_us']:.1f} "
              f"| {fmt_num(field(r, 'device_cpu_us_per_op'), 2)} | {r['driver_cpu_us_per_op']:.2f} |")
    w("")

# The polling goal.
poll_runs = []
for i in range(1, int(meta.get("poll_runs", 1)) + 1):
    r = load(f"poll.getattr-qd32-{i}")
    try:
        load1 = open(f"{results}/poll.getattr-qd32-{i}.load").read().strip()
    except OSError:
        load1 = "?"
    poll_runs.append((i, r, load1))
poll_ev = load("poll.getattr-qd32-driver-events")
goal = 1_000_000
w("## Polling: the 1 million requests per second goal")
w("")
w("Goal: with the null backend and busy polling, one dpfs worker sustains at")
w("least 1 million no-op requests per second at queue depth 32 from one driver")
w("thread on the other core.")
w("")
w("```")
w(f"{portable(meta['poll_cmd'])}")
w(f"taskset -c 1 dpfs-bench --socket SOCK --workload getattr --depth 32 --poll "
  f"--duration {meta['duration']} --warmup {meta['warmup']} --device-pid PID")
w("```")
w("")
w("| run | load (1 min) | requests/s | of the goal | p50 µs | p99 µs | p99.9 µs | driver CPU µs/op "
  "| dpfs CPU µs/op |")
w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
best = None
for i, r, load1 in poll_runs:
    if r is None:
        w(f"| {i} | {load1} | failed: {err_of(f'poll.getattr-qd32-{i}')} | | | | | | |")
        continue
    if best is None or r["ops_per_s"] > best["ops_per_s"]:
        best = r
    w(f"| {i} | {load1} | {fmt_num(r['ops_per_s'])} | {100.0 * r['ops_per_s'] / goal:.0f}% "
      f"| {r['lat_p50_us']:.1f} | {r['lat_p99_us']:.1f} | {r['lat_p999_us']:.1f} "
      f"| {r['driver_cpu_us_per_op']:.2f} | {fmt_num(field(r, 'device_cpu_us_per_op'), 2)} |")
w("")
if best:
    ratio = best['ops_per_s'] / goal
    verdict = f"{ratio:.2f}x the goal: met" if ratio >= 1 else f"{1 / ratio:.2f}x short"
    w(f"Best run: **{fmt_num(best['ops_per_s'])} requests/s, {100.0 * ratio:.0f}% "
      f"of the goal** ({verdict}). A polling worker spends its whole "
      "core, so its CPU per op is 1/rate.")
if poll_ev:
    w(f"With an event-driven driver against the same polling dpfs: "
      f"{fmt_num(poll_ev['ops_per_s'])} requests/s, p99 {poll_ev['lat_p99_us']:.1f} µs.")
w("")
for name, title in (("perf-self.txt", "Where dpfs's time goes (perf, self time, ≥ 1%)"),
                    ("perf-children.txt", "Including callees (≥ 5%)")):
    path = f"{results}/{name}"
    if os.path.exists(path) and os.path.getsize(path) > 0:
        w(f"{title}, `perf record -F 999 --call-graph dwarf -p PID` during a polling run:")
        w("")
        w("```")
        for l in open(path).read().splitlines()[:30]:
            w(l.rstrip())
        w("```")
        w("")

notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_bench_findings.md")
if os.path.exists(notes):
    w(open(notes).read().rstrip())
    w("")

open(out, "w").write("\n".join(lines) + "\n")
