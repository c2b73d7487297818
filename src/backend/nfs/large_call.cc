#include "backend/nfs/large_call.h"

extern "C" {
struct rpc_pdu;
struct rpc_pdu* rpc_allocate_pdu2(struct rpc_context* rpc, int program, int version, int procedure,
                                  rpc_cb cb, void* private_data, zdrproc_t zdr_decode_fn,
                                  int zdr_decode_bufsize, size_t alloc_hint);
int rpc_queue_pdu(struct rpc_context* rpc, struct rpc_pdu* pdu);
void rpc_free_pdu(struct rpc_context* rpc, struct rpc_pdu* pdu);
}

namespace dpfs::nfs {
namespace {

struct PduHead {
  struct rpc_pdu* next;
  uint32_t xid;
  ZDR zdr;
};

}  // namespace

int send_large_call(rpc_context* rpc, int program, int version, int procedure, rpc_cb cb,
                    void* private_data, zdrproc_t encode, void* args, zdrproc_t decode,
                    int decode_size, size_t extra) {
  rpc_pdu* pdu = rpc_allocate_pdu2(rpc, program, version, procedure, cb, private_data, decode,
                                   decode_size, extra);
  if (pdu == nullptr) return -1;
  if (encode(&reinterpret_cast<PduHead*>(pdu)->zdr, args) == 0) {
    rpc_free_pdu(rpc, pdu);
    return -1;
  }
  return rpc_queue_pdu(rpc, pdu) == 0 ? 0 : -1;
}

}  // namespace dpfs::nfs
