// Sending an RPC whose arguments do not fit libnfs 4.0's encode buffer.
//
// libnfs 4.0 encodes a call's arguments into a buffer of
// ZDR_ENCODEBUF_MINSIZE (4 KiB) unless told to make it larger, and its
// rpc_nfs3_*_async / rpc_nfs4_compound_async functions cannot be told: an
// NFSv4 WRITE's data or a 4095-byte NFSv3 symlink target does not fit (the
// encoder fails and the call is never sent). What libnfs's own *_async2
// functions (not exported in 4.0) do is done here with the functions it
// does export, and the head of its struct rpc_pdu (libnfs-private.h of
// libnfs 4.0, built without Kerberos as Debian 12's is: {next, xid, ZDR
// zdr, ...}). Pinned to that version, as the build checks (CMakeLists.txt).
#pragma once

#include <cstddef>

// libnfs.h first: the raw headers use the EXTERN it defines.
#include <nfsc/libnfs.h>

#include <nfsc/libnfs-raw.h>

namespace dpfs::nfs {

// Like rpc_nfs3_*_async(rpc, cb, args, private_data) for procedure
// `procedure` of `program`/`version`, with `extra` more bytes of room for
// the arguments, encoded by `encode` and the answer decoded by `decode`
// into a `decode_size`-byte result. 0: queued (the callback will run).
int send_large_call(rpc_context* rpc, int program, int version, int procedure, rpc_cb cb,
                    void* private_data, zdrproc_t encode, void* args, zdrproc_t decode,
                    int decode_size, size_t extra);

}  // namespace dpfs::nfs
