#!/usr/bin/env python3
"""Fails (exit 1) if a file under src/ includes a header of a layer it may not
use, or belongs to no layer. The build runs it (target check_layers, which
every layer library depends on) over the table CMakeLists.txt writes from its
dpfs_layer() calls -- the one statement of the rule:

  layer <name> <allowed,layers>      (a layer may always use itself)
  file <path under src/> <name>

Usage: check_layers.py BUILD/layers.txt
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
UNLAYERED = {"main.cc"}  # the daemon's main(): above every layer


def read_table(path):
    allowed, owner = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if not words:
                continue
            if words[0] == "layer":
                allowed[words[1]] = set(filter(None, (words[2] if len(words) > 2 else "").split(",")))
            elif words[0] == "file":
                owner[words[1]] = words[2]
    return allowed, owner


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    allowed, owner = read_table(sys.argv[1])
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    problems = []
    for dirpath, _, files in os.walk(ROOT):
        for name in sorted(files):
            if not name.endswith((".h", ".cc")):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
            if rel in UNLAYERED:
                continue
            mine = owner.get(rel)
            if mine is None:
                problems.append(f"src/{rel}: in no layer (add it to a dpfs_layer() in CMakeLists.txt)")
                continue
            with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    m = include.match(line)
                    if not m or m.group(1) not in owner:
                        continue
                    target = owner[m.group(1)]
                    if target == mine or target in allowed[mine]:
                        continue
                    problems.append(f"src/{rel}:{number}: layer {mine} may not include "
                                    f"{m.group(1)} (layer {target}); it may use: "
                                    f"{', '.join(sorted(allowed[mine])) or 'nothing'}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("layers: see the dpfs_layer() table in CMakeLists.txt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
