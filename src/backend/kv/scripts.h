// The metadata operations, as Lua scripts the store runs atomically: a
// concurrent device never sees half a rename, and a crash leaves none.
// docs/kv.md describes the keys they work on.
//
// Every script takes KEYS[1] = the file system's format key (it routes the
// script to the metadata's slot in a cluster), ARGV[1] = the metadata
// prefix, ARGV[2], ARGV[3] = the time now (seconds, nanoseconds), then its
// own arguments. It returns an array: {0, ...} on success, {errno} on
// failure.
#pragma once

#include <string>
#include <string_view>

namespace dpfs::kv {

enum class Script {
  kLookup,   // parent, name -> attr
  kGetattr,  // ino -> attr
  kMknode,   // parent, name, mode, uid, gid, rdev, target -> attr
  kLink,     // ino, new parent, new name -> attr
  kUnlink,   // parent, name -> ino, nlink left
  kRmdir,    // parent, name
  kRename,   // parent, name, new parent, new name, flags -> ino replaced and its nlink (or 0 0)
  kSetattr,  // ino, valid, mode, uid, gid, size, as, an, ms, mn, cs, cn -> old size, attr
  // Without the prelude, below.
  kWrite,      // ino, end, kill_suidgid, bytes chunks elsewhere grew, N, N chunk indexes to list in
               // the index, then key index offset data for each chunk to write here
  kFree,       // ino: the inode of a file no name and no handle holds
  kReaddir,    // ino -> parent ino, then name, "type:ino" pairs
  kSetxattr,   // ino, name, value, flags
  kGetxattr,   // ino, name -> value
  kListxattr,  // ino -> names
  kRemovexattr,  // ino, name
  kGrow,         // ino, bytes (signed): the chunks' size changed
  // Locks (ARGV[4] = ino or device; OWNER = "DEVICE:LOCK_OWNER:p|f",
  // p for POSIX and f for flock; END -1 = to the end of the file).
  kGetlk,        // ino, owner, flavor, start, end, type -> start end type pid, or -2
  kSetlk,        // ino, owner, flavor, start, end, type, pid -> 0 or EAGAIN
  kUnlockOwner,  // ino, owner
  kDropDevice,   // device: every lock it holds goes
  kChunkList,    // ino, first, last, limit -> indexes of chunks that may exist (no prelude)
  kChunksGone,   // ino, first, last, bytes (signed): those chunks went (no prelude)
  // On one chunk key (KEYS[1]; no prelude, no prefix, no time): each
  // returns by how many bytes the chunk grew (negative: shrank).
  kChunkWrite,  // offset, data
  kChunkTrim,   // length: the chunk keeps its first `length` bytes
  kChunkDrop,   // the chunk goes
  kChunkAlloc,  // length: the chunk holds at least so many bytes
  kChunkZero,   // from, to: those bytes are written zeros
  kChunkPunch,  // from, to: those bytes read as zeros, freed where they end the chunk
  kCount,
};

// Whether `s` works on one chunk key rather than on the metadata.
constexpr bool is_chunk_script(Script s) { return s >= Script::kChunkWrite; }

// The script's source (the shared prelude and its body).
const std::string& script_source(Script s);
// Its SHA1, as EVALSHA wants it (computed here, so it matches the source).
const std::string& script_sha(Script s);

// The attribute fields of an inode, in the order scripts return them after
// the ino: mode uid gid nlink size rdev atime(s, ns) mtime(s, ns) ctime(s, ns)
// bytes (what its chunks take in the store).
constexpr int kAttrFields = 14;  // with the ino

}  // namespace dpfs::kv
