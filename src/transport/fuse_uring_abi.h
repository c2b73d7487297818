// The FUSE-over-io_uring part of the kernel's FUSE ABI, which the installed
// <linux/fuse.h> (7.38) predates. Follows include/uapi/linux/fuse.h of Linux
// 6.14 (FUSE 7.42, where FUSE_OVER_IO_URING appeared) and is unchanged in
// meaning up to 6.18 (7.44/7.45); fs/fuse/dev_uring.c is the other side.
//
// The protocol, as the kernel implements it:
// - INIT is answered over read/write as always; the kernel offers
//   FUSE_OVER_IO_URING in init_in.flags2 only while the fuse module's
//   enable_uring parameter is set, and the daemon accepts it in
//   init_out.flags2. From then on new requests wait until every queue of
//   the ring is ready, or until a REGISTER fails (which turns the ring off
//   for the connection: requests then go over read/write again).
// - The ring has one queue per possible CPU (num_possible_cpus()); a request
//   goes to the queue of the CPU its sender runs on. The ring is ready once
//   every queue has at least one registered entry.
// - An entry is a pair of buffers: a header (struct FuseUringReqHeader) and a
//   payload of at least max(FUSE_MIN_READ_BUFFER, max_write, max_pages *
//   page size). It is registered with IORING_OP_URING_CMD (an SQE128 ring,
//   cmd_op FUSE_IO_URING_CMD_REGISTER, sqe->addr an array of these two
//   iovecs, sqe->len 2, the queue in the command area).
// - A request arrives as the completion (res 0) of that command: its
//   fuse_in_header in in_out, its first argument (the per-opcode struct) in
//   op_in, the other arguments in the payload, their size in
//   ring_ent_in_out.payload_sz, and commit_id to answer with.
// - The reply goes back with FUSE_IO_URING_CMD_COMMIT_AND_FETCH: the
//   fuse_out_header in in_out, the reply's arguments in the payload with
//   their size in payload_sz, the commit_id and the queue in the command
//   area. The same command waits for the entry's next request.
// - FORGET, BATCH_FORGET and INTERRUPT still come through read(2), and
//   notifications are still written to /dev/fuse (the ring refuses unique 0).
#pragma once

#include <linux/fuse.h>

#include <cstddef>
#include <cstdint>

namespace dpfs::transport::uring_abi {

// init_in.flags2 / init_out.flags2 bit (FUSE_OVER_IO_URING is 1ULL << 41 of
// the 64-bit flags).
constexpr uint32_t kFlags2OverIoUring = 1u << (41 - 32);

constexpr size_t kInOutHeaderSize = 128;  // FUSE_URING_IN_OUT_HEADER_SZ
constexpr size_t kOpInSize = 128;         // FUSE_URING_OP_IN_OUT_SZ

// struct fuse_uring_ent_in_out
struct EntInOut {
  uint64_t flags;
  uint64_t commit_id;   // the request's unique, to be echoed in the commit
  uint32_t payload_sz;  // bytes used in the payload buffer, either way
  uint32_t padding;
  uint64_t reserved;
};

// struct fuse_uring_req_header: iov[0] of a REGISTER.
struct ReqHeader {
  char in_out[kInOutHeaderSize];  // fuse_in_header in, fuse_out_header out
  char op_in[kOpInSize];          // the request's first argument
  EntInOut ring_ent_in_out;
};

// enum fuse_uring_cmd: the SQE's cmd_op.
enum Command : uint32_t {
  kCmdInvalid = 0,
  kCmdRegister = 1,
  kCmdCommitAndFetch = 2,
};

// struct fuse_uring_cmd_req: the start of the SQE's 80-byte command area.
struct CmdReq {
  uint64_t flags;
  uint64_t commit_id;  // 0 for REGISTER
  uint16_t qid;
  uint8_t padding[6];
};

static_assert(sizeof(EntInOut) == 32);
static_assert(offsetof(EntInOut, commit_id) == 8);
static_assert(offsetof(EntInOut, payload_sz) == 16);
static_assert(sizeof(ReqHeader) == 288);
static_assert(offsetof(ReqHeader, op_in) == 128);
static_assert(offsetof(ReqHeader, ring_ent_in_out) == 256);
static_assert(sizeof(CmdReq) == 24);
static_assert(offsetof(CmdReq, qid) == 16);
static_assert(sizeof(fuse_in_header) <= kInOutHeaderSize);
static_assert(sizeof(fuse_out_header) <= kInOutHeaderSize);

}  // namespace dpfs::transport::uring_abi
