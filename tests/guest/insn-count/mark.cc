// dpfs-insn-mark: runs in a guest under QEMU with the insn-count plugin
// (insn_count.cc) and executes its marker instruction once, which makes the
// plugin write the instruction counts so far (one "mark" line). Elsewhere the
// marker is a no-op. Linked statically: the guest has no libraries.
int main() {
  // nopl 0x53465044(%rax): insn_count.cc's kMarker.
  asm volatile(".byte 0x0f, 0x1f, 0x80, 0x44, 0x50, 0x46, 0x53" ::: "memory");
  return 0;
}
