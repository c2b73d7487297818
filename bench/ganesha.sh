# shellcheck shell=bash
# Sourced by the NFS benchmarks: starts nfs-ganesha (VFS FSAL) on 127.0.0.1
# exporting $EXPORT (NFSv3 and v4.0; the v4 pseudo path is the export's
# path, root not squashed, numeric v4 owners), with its config and log in
# $WORK. Sets GANESHA_PID; stop_ganesha stops it. Needs root, rpcbind,
# ganesha.nfsd (nfs-ganesha, nfs-ganesha-vfs) and nfs-ls (libnfs-utils).
GANESHA_PID=""

start_ganesha() {
  pgrep -x rpcbind >/dev/null || rpcbind -w
  cat >"$WORK/ganesha.conf" <<CONF
NFS_CORE_PARAM { Bind_addr = 127.0.0.1; Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; Allow_Numeric_Owners = true; Only_Numeric_Owners = true; }
EXPORT { Export_Id = 1; Path = $EXPORT; Pseudo = $EXPORT; Access_Type = RW; Squash = No_Root_Squash;
  SecType = sys; Protocols = 3, 4; Transports = TCP; FSAL { Name = VFS; } }
CONF
  /usr/bin/ganesha.nfsd -F -f "$WORK/ganesha.conf" -L "$WORK/ganesha.log" -p "$WORK/ganesha.pid" &
  GANESHA_PID=$!
  for _ in $(seq 100); do nfs-ls "nfs://127.0.0.1$EXPORT" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "ganesha did not come up: $(tail -5 "$WORK/ganesha.log")" >&2
  return 1
}

stop_ganesha() {
  [[ -n $GANESHA_PID ]] || return 0
  kill "$GANESHA_PID" 2>/dev/null && wait "$GANESHA_PID" 2>/dev/null || true
  GANESHA_PID=""
}
