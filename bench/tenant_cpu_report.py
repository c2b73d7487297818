#!/usr/bin/env python3
"""The report of bench/tenant_cpu.sh: tenant_cpu_report.py RESULTS OUT IMG.

RESULTS (build/bench/tenant-cpu after a run) holds, per case and round,
CASE.rN.console (the guest's console: TENANT-RUN, TENANT-STAT and fio's JSON
per run, tests/guest/workloads/tenant-cpu.sh) and CASE.rN.marks (the
insn-count plugin's lines, tests/guest/insn-count/insn_count.cc), and
meta.txt. Writes RESULTS/results.tsv (one row per case, round and job),
rewrites the generated section of OUT (unless OUT is "none") and draws
IMG/tenant_cpu.png with gnuplot. Rerun it to change the report without
rerunning the guests. Exits 1, saying why, when a run's output is incomplete
(the plugin did not load, a mark is missing, fio failed).
"""
import json
import os
import re
import subprocess
import sys

results, out, img = sys.argv[1:4]
# meta.txt: "runtime=S size=SIZE jobs=LIST rounds=N cases=A B ...", then one
# KEY=VALUE a line.
meta_lines = open(f"{results}/meta.txt").read().splitlines()
meta = dict(l.split("=", 1) for l in meta_lines[1:] if "=" in l)
settings = re.match(r"runtime=(\S+) size=(\S+) jobs=(\S+) rounds=(\d+) cases=(.*)$", meta_lines[0])
if not settings:
    sys.exit(f"tenant_cpu_report: {results}/meta.txt: unexpected first line {meta_lines[0]!r}")
runtime, ROUNDS, CASES = settings.group(1), int(settings.group(4)), settings.group(5).split()
JOB_ORDER = ["randread-4k-qd1", "randread-4k-qd16", "randwrite-4k-qd1", "randwrite-4k-qd16",
             "read-1m-qd1", "write-1m-qd1"]
USER_HZ = 100  # the guest's /proc/stat ticks (Linux x86's USER_HZ)

LABEL = {
    "dpfs-nfs3": "dpfs NFSv3", "knfs3": "kernel NFSv3",
    "dpfs-nfs4": "dpfs NFSv4", "knfs4": "kernel NFSv4",
    "dpfs-pt": "dpfs passthrough", "virtiofsd": "virtiofsd",
}


def fail(why):
    sys.exit(f"tenant_cpu_report: {why}")


def read_marks(path):
    marks, header = {}, None
    for line in open(path):
        f = line.split()
        if not f:
            continue
        if f[0] == "insn-count":
            header = line.strip()
        elif f[0] == "mark":
            marks[int(f[1])] = {k: int(v) for k, v in (x.split("=", 1) for x in f[2:])}
    if header is None or "api=1" not in header:
        fail(f"{path}: no plugin header line (did QEMU load dpfs-insn-count.so?)")
    return header, marks


def read_console(path):
    runs, stats, jsons = {}, {}, {}
    lines = open(path, errors="replace").read().splitlines()
    i = 0
    while i < len(lines):
        f = lines[i].split()
        if f[:1] == ["TENANT-RUN"]:
            runs[f[1]] = (int(f[2]), int(f[3]), int(f[4]))
        elif f[:1] == ["TENANT-STAT"]:
            before, after = lines[i].split(" ", 2)[2].split("|")
            stats[f[1]] = (before.split(), after.split())
        elif f[:1] == ["TENANT-JSON-BEGIN"]:
            j = i + 1
            while j < len(lines) and lines[j].strip() != f"TENANT-JSON-END {f[1]}":
                j += 1
            text = "\n".join(lines[i + 1:j])
            # fio may print notes before its JSON
            jsons[f[1]] = json.loads(text[text.index("{"):]) if "{" in text else None
            i = j
        i += 1
    return runs, stats, jsons


def busy_ticks(cpu_line):
    # cpu user nice system idle iowait irq softirq ...
    v = [int(x) for x in cpu_line[1:8]]
    return v[0] + v[1] + v[2] + v[5] + v[6]


def ios_and_iops(fio):
    job = fio["jobs"][0]
    if job.get("error"):
        fail(f"fio job {job['jobname']} failed: error {job['error']}")
    ios = sum(job[d]["total_ios"] for d in ("read", "write", "trim"))
    iops = sum(job[d]["iops"] for d in ("read", "write", "trim"))
    return ios, iops


rows = []  # dicts, one per case, round, job
for case in CASES:
    for r in range(1, ROUNDS + 1):
        name = f"{case}.r{r}"
        header, marks = read_marks(f"{results}/{name}.marks")
        runs, stats, jsons = read_console(f"{results}/{name}.console")
        jobs = [j for j in JOB_ORDER if j in runs]
        if not jobs:
            fail(f"{name}: no job ran (console: {results}/{name}.console)")
        for job in jobs:
            d = {}
            for run in (job + "-base", job):
                if run not in runs or run not in jsons or jsons[run] is None:
                    fail(f"{name}: {run}: no run or no fio output in the console")
                m0, m1, status = runs[run]
                if status != 0:
                    fail(f"{name}: {run}: fio exit {status}")
                if m0 not in marks or m1 not in marks:
                    fail(f"{name}: {run}: the plugin wrote no mark {m0} or {m1}")
                a, b = marks[m0], marks[m1]
                ios, iops = ios_and_iops(jsons[run])
                d[run] = {
                    "insns": b["insns"] - a["insns"], "kernel": b["kernel"] - a["kernel"],
                    "user": b["user"] - a["user"], "ns": b["ns"] - a["ns"],
                    "rep": b.get("rep", 0) - a.get("rep", 0),
                    "device": b.get("device", 0) - a.get("device", 0),
                    "server": b.get("server", 0) - a.get("server", 0),
                    "busy": busy_ticks(stats[run][1]) - busy_ticks(stats[run][0]),
                    "ios": ios, "iops": iops,
                }
            base, run = d[job + "-base"], d[job]
            n = run["ios"] - base["ios"]
            if n <= 0:
                fail(f"{name}: {job}: {run['ios']} I/Os, no more than its baseline's {base['ios']}")
            per = lambda k: (run[k] - base[k]) / n
            rows.append({
                "case": case, "round": r, "job": job, "ios": n, "iops": run["iops"],
                "insns": per("insns") - per("rep"), "tcg_insns": per("insns"), "rep": per("rep"),
                "kernel": per("kernel"), "user": per("user"),
                "base_insns": base["insns"],
                "guest_us": per("busy") * 1e6 / USER_HZ,
                "device_us": per("device") / 1e3 if "device" in marks[runs[job][0]] else None,
                "server_us": per("server") / 1e3 if "server" in marks[runs[job][0]] else None,
            })

# insns: as a CPU's "instructions retired" counts them (a rep-prefixed string
# instruction once); tcg_insns: as TCG runs them (each rep iteration);
# kernel and user: of tcg_insns.
cols = ["case", "round", "job", "ios", "iops", "insns", "tcg_insns", "rep", "kernel", "user",
        "base_insns",
        "guest_us", "device_us", "server_us"]
with open(f"{results}/results.tsv", "w") as t:
    t.write("\t".join(cols) + "\n")
    for row in rows:
        t.write("\t".join("-" if row[c] is None else
                          (f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]))
                          for c in cols) + "\n")

if out == "none":
    sys.exit(0)

jobs = [j for j in JOB_ORDER if any(r["job"] == j for r in rows)]


def cell(case, job, key):
    v = [r[key] for r in rows if r["case"] == case and r["job"] == job and r[key] is not None]
    return v


def mean(v):
    return sum(v) / len(v) if v else None


def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def spread(v):
    """The rounds' range as a percentage of their mean."""
    if len(v) < 2 or not mean(v):
        return ""
    return f" ±{(max(v) - min(v)) / 2 / mean(v) * 100:.0f}%"


text = []
w = text.append
w(f"Run {meta['date']} at commit {meta['commit']}, {meta['machine']}; {meta['qemu']}; "
  f"load average {meta['load']}. {ROUNDS} round(s), {runtime} s per fio job; "
  f"per-case commands in `build/bench/tenant-cpu/CASE.cmd`.")
w("")
w("Guest instructions per I/O (net of fio's start-up; a rep-prefixed string instruction counted "
  "once, as a CPU's instructions-retired counter does; TCG's own count, each rep iteration one, "
  "beside it), the share run in kernel mode, the guest's CPU time "
  "per I/O (its /proc/stat, TCG-inflated), its IOPS (TCG-bound), and the host CPU per I/O of "
  "the device (dpfs or virtiofsd) and of the NFS server (ganesha). Means over the rounds; "
  "± is half the rounds' range.")
w("")
for job in jobs:
    w(f"**{job}**")
    w("")
    w("| case | instructions/I/O | TCG count | kernel mode | guest CPU µs/I/O | IOPS "
      "| device CPU µs/I/O | NFS server CPU µs/I/O |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        v = cell(case, job, "insns")
        if not v:
            continue
        k, t = mean(cell(case, job, "kernel")), mean(cell(case, job, "tcg_insns"))
        w(f"| {LABEL[case]} | {fmt(mean(v))}{spread(v)} | {fmt(t)} | {k / t * 100:.0f}% "
          f"| {fmt(mean(cell(case, job, 'guest_us')), 1)} | {fmt(mean(cell(case, job, 'iops')))} "
          f"| {fmt(mean(cell(case, job, 'device_us')), 1)} "
          f"| {fmt(mean(cell(case, job, 'server_us')), 1)} |")
    w("")

pairs = [(a, b) for a, b in (("knfs3", "dpfs-nfs3"), ("knfs4", "dpfs-nfs4"), ("virtiofsd", "dpfs-pt"))
         if a in CASES and b in CASES]
if pairs:
    w("Ratios of guest instructions per I/O (the paper: 88,453 / 32,907 = 2.69 for 4 KiB I/O, "
      "host kernel NFS client against DPFS-NFS):")
    w("")
    w("| job | " + " | ".join(f"{LABEL[a]} / {LABEL[b]}" for a, b in pairs) + " |")
    w("|---|" + "---:|" * len(pairs))
    for job in jobs:
        cells = []
        for a, b in pairs:
            x, y = mean(cell(a, job, "insns")), mean(cell(b, job, "insns"))
            cells.append("–" if x is None or y is None else f"{x / y:.2f}")
        w(f"| {job} | " + " | ".join(cells) + " |")
    w("")
w("![guest instructions per I/O](img/tenant_cpu.png)")

begin = "<!-- bench/tenant_cpu.sh: generated, rewritten by every run -->"
end = "<!-- bench/tenant_cpu.sh: end -->"
section = f"{begin}\n" + "\n".join(text) + f"\n{end}"
doc = open(out).read() if os.path.exists(out) else "# Tenant CPU per I/O\n\n"
if begin in doc and end in doc:
    doc = doc[:doc.index(begin)] + section + doc[doc.index(end) + len(end):]
else:
    doc = doc.rstrip("\n") + "\n\n## Latest run (`bench/tenant_cpu.sh`)\n\n" + section + "\n"
open(out, "w").write(doc)

# The plot: instructions per I/O (thousands) per job, a bar per case; 4 KiB
# jobs and 1 MiB jobs in two panels (their scales differ a hundredfold).
dat = f"{results}/tenant_cpu.dat"
with open(dat, "w") as f:
    f.write("job " + " ".join(f'"{LABEL[c]}"' for c in CASES) + "\n")
    for job in jobs:
        f.write(job + " " + " ".join(
            fmt(mean(cell(c, job, "insns")) / 1e3 if cell(c, job, "insns") else None, 1)
            .replace(",", "").replace("–", "NaN") for c in CASES) + "\n")
small = [j for j in jobs if "-4k-" in j]
large = [j for j in jobs if "-1m-" in j]
panels = [p for p in ((small, "4 KiB random I/O"), (large, "1 MiB sequential I/O")) if p[0]]
ncol = len(CASES)
script = [f"set terminal pngcairo size {500 + 300 * len(panels)},480 font ',10'",
          f"set output '{img}/tenant_cpu.png'",
          f"set multiplot layout 1,{len(panels)} title "
          "'Guest instructions per I/O (thousands; TCG guest, insn-count plugin)'",
          "set style data histograms", "set style histogram clustered gap 1",
          "set style fill solid 0.85 border -1", "set boxwidth 0.9", "set key top left",
          "set grid ytics", "set yrange [0:*]", "set xtics rotate by -20"]
for sel, title in panels:
    rows_dat = f"{results}/tenant_cpu.{sel[0].split('-')[1]}.dat"
    with open(rows_dat, "w") as f:
        for line in open(dat).read().splitlines():
            if line.startswith("job ") or line.split()[0] in sel:
                f.write(line + "\n")
    plots = ", ".join(f"'{rows_dat}' using {i + 2}:xtic(1) title columnheader({i + 2})"
                      for i in range(ncol))
    # 1 MiB: the kernel client's bars are ~100 times dpfs's: log scale
    scale = ["set logscale y", "set yrange [10:*]"] if sel is large else ["unset logscale y",
                                                                          "set yrange [0:*]"]
    script += scale + [f"set title '{title}{' (log scale)' if sel is large else ''}'",
                       f"plot {plots}"]
script.append("unset multiplot")
os.makedirs(img, exist_ok=True)
subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)
