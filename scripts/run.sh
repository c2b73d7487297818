#!/usr/bin/env bash
# The main job: install, build, and serve an in-memory file system on every
# transport dpfs has -- today a FUSE mount at /tmp/dpfs. Ctrl-C unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh build
exec build/dpfs serve --backend memfs --fuse-mount "${DPFS_MOUNT:-/tmp/dpfs}" "$@"
