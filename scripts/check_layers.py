#!/usr/bin/env python3
"""Fails (exit 1) if a file under src/ includes a header of a layer it may not
use. The build runs it (CMakeLists.txt, target check_layers): an include
against the arrow breaks the build, with the file, the line and the rule.

The layers, each allowed what is listed (and itself):

  util                 -> nothing          unique_fd, iov, unix_listener, endpoint, logs
  virtio               -> util             guest memory, split and packed rings
  sandbox              -> util             namespaces, seccomp, capabilities
  backend (the API)    -> util             backend.h, identity, policy, worker_hook
  backend/<one>        -> backend, util    memfs, null, nfs, passthrough (+ sandbox)
  backend/factory      -> every backend    builds one from its configuration
  fuse                 -> backend, util    the session: FUSE requests to backend calls
  remote               -> fuse, backend, util
  transport            -> fuse, sandbox, util   /dev/fuse
  vhost_user           -> fuse, virtio, util    the virtio-fs device
  server               -> everything       configuration, CLI, serve, supervisor

Known exceptions, each one a debt named in issue 13 (and removed when paid):
  backend/passthrough -> backend/memfs/locks.h (the byte-range lock table)
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

ALLOWED = {
    "util": set(),
    "virtio": {"util"},
    "sandbox": {"util"},
    "backend": {"util"},
    "backend/memfs": {"backend", "util"},
    "backend/null": {"backend", "util"},
    "backend/nfs": {"backend", "util"},
    "backend/passthrough": {"backend", "util", "sandbox"},
    "backend/factory": {"backend", "backend/memfs", "backend/null", "backend/nfs",
                        "backend/passthrough", "util"},
    "fuse": {"backend", "util"},
    "remote": {"fuse", "backend", "util"},
    "transport": {"fuse", "sandbox", "util"},
    "vhost_user": {"fuse", "virtio", "util"},
    "server": None,  # the top: everything
}
EXCEPTIONS = {("backend/passthrough", "backend/memfs/locks.h")}
BACKENDS = ("memfs", "null", "nfs", "passthrough")


def layer_of(path):
    """The layer of a path relative to src/ ("backend/nfs/nfs.cc")."""
    parts = path.split("/")
    if parts[0] == "backend":
        if len(parts) > 2 and parts[1] in BACKENDS:
            return "backend/" + parts[1]
        if parts[1].startswith("factory."):
            return "backend/factory"
    return parts[0]


def main():
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    problems = []
    for dirpath, _, files in os.walk(ROOT):
        for name in sorted(files):
            if not name.endswith((".h", ".cc")):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, ROOT)
            if rel == "main.cc":
                continue
            mine = layer_of(rel)
            if mine not in ALLOWED:
                problems.append(f"src/{rel}: layer '{mine}' is not in scripts/check_layers.py")
                continue
            allowed = ALLOWED[mine]
            with open(full, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    m = include.match(line)
                    if not m or "/" not in m.group(1):
                        continue
                    target = layer_of(m.group(1))
                    if allowed is None or target == mine or target in allowed:
                        continue
                    if (mine, m.group(1)) in EXCEPTIONS:
                        continue
                    problems.append(f"src/{rel}:{number}: {mine} may not include "
                                    f"{m.group(1)} ({target}); allowed: "
                                    f"{', '.join(sorted(allowed)) or 'nothing'}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("layers: see the table in scripts/check_layers.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
