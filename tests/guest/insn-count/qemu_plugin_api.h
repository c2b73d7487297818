// The part of QEMU's TCG plugin API (version 1, QEMU 7.2 as Debian 12
// packages it) that insn_count.cc uses. Debian does not package QEMU's
// qemu-plugin.h, so these declarations are written from the API's public
// documentation (docs/devel/tcg-plugins.rst, "Plugin API"); they must match
// the ABI of the QEMU that loads the plugin, which resolves the functions
// from its own executable at dlopen time.
//
// Version 1 is what QEMU 6.0 to 8.1 accept (minimum 0); from 9.0 on the
// minimum is 2 and qemu_plugin_insn_data and the inline ops changed, so this
// plugin loads only into a QEMU of that range (QEMU refuses it otherwise,
// naming the versions).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// QEMU's handle of a loaded plugin.
using qemu_plugin_id_t = std::uint64_t;

// Opaque to this plugin: the install hook's information block (architecture,
// API versions, vCPU counts); the counts are asked with qemu_plugin_n_*.
struct qemu_info_t;
// Handles valid only during the translation callback they are passed to.
struct qemu_plugin_tb;
struct qemu_plugin_insn;

// Whether a callback reads or writes guest registers (none here).
enum qemu_plugin_cb_flags {
  QEMU_PLUGIN_CB_NO_REGS,
  QEMU_PLUGIN_CB_R_REGS,
  QEMU_PLUGIN_CB_RW_REGS,
};

// The one inline operation of version 1: *ptr += imm, done in the translated
// code itself (no call). Not atomic: exact only when one vCPU thread runs it.
enum qemu_plugin_op {
  QEMU_PLUGIN_INLINE_ADD_U64,
};

using qemu_plugin_udata_cb_t = void (*)(qemu_plugin_id_t id, void* userdata);
using qemu_plugin_vcpu_udata_cb_t = void (*)(unsigned int vcpu_index, void* userdata);
using qemu_plugin_vcpu_tb_trans_cb_t = void (*)(qemu_plugin_id_t id, struct qemu_plugin_tb* tb);

// Called when a block of guest code is translated (once per translation,
// not per execution).
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
// Called, or done inline, every time the translated block `tb` executes
// (before its first instruction).
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb* tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void* userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb* tb, enum qemu_plugin_op op,
                                              void* ptr, std::uint64_t imm);
// Called every time the instruction `insn` executes, before it does.
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn* insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void* userdata);
// Called when QEMU exits (the guest powered off, or QEMU was told to quit).
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void* userdata);

std::size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
// The guest virtual address of the block's first instruction.
std::uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb* tb);
struct qemu_plugin_insn* qemu_plugin_tb_get_insn(const struct qemu_plugin_tb* tb, std::size_t idx);
// The instruction's bytes and their number.
const void* qemu_plugin_insn_data(const struct qemu_plugin_insn* insn);
std::size_t qemu_plugin_insn_size(const struct qemu_plugin_insn* insn);

// The most vCPUs the guest can have (system emulation).
int qemu_plugin_n_max_vcpus(void);
// Writes to QEMU's log (stderr unless -D names a file).
void qemu_plugin_outs(const char* string);

}  // extern "C"

// What QEMU looks up in the plugin (inside extern "C"): qemu_plugin_version,
// the API version it was built against, and qemu_plugin_install.
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
inline constexpr int kQemuPluginApiVersion = 1;
