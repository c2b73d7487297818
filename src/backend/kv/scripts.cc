#include "backend/kv/scripts.h"

#include <openssl/evp.h>

#include <array>
#include <cstdio>

namespace dpfs::kv {
namespace {

// Shared by every script. Keys (P = ARGV[1], "dpfs:{FSNAME}:"):
//   P..'i:'..ino   hash: mode uid gid nlink size rdev as an ms mn cs cn
//                  (times in seconds and nanoseconds), parent (directories),
//                  target (symlinks), seq (directories: the last entry's)
//   P..'d:'..ino   hash: name -> "type:ino:seq" (type: mode >> 12)
//   P..'z:'..ino   sorted set: seq -> name (READDIR's stable offsets)
//   P..'x:'..ino   hash: xattr name -> value
//   P..'k:'..ino   sorted set: the indexes of the file's chunks (each its
//                  own score); a chunk that exists is in it (one that is
//                  not may be, for a while)
//   P..'next'      the last inode number given out
//   P..'stats'     hash: inodes
//   P..'l:'..ino   hash: lock owner -> "start,end,type,pid;..." (its locks)
//   P..'dl:'..dev  set: the inodes device `dev` holds locks on
//   P..'devices'   sorted set: device -> the end of its lease (ms); the
//                  locks of a device whose lease ran out are void
// Errnos: EPERM 1, ENOENT 2, EEXIST 17, ENOTDIR 20, EISDIR 21, EINVAL 22,
// EMLINK 31, ENODATA 61, ENOTEMPTY 39, ESTALE 116.
constexpr char kPrelude[] = R"lua(
local P = ARGV[1]
local NOW_S, NOW_NS = tonumber(ARGV[2]), tonumber(ARGV[3])
local F = {'mode','uid','gid','nlink','size','rdev','as','an','ms','mn','cs','cn','bytes'}
local IFMT, DIR, REG, LNK = 61440, 16384, 32768, 40960
local MAX_LINKS = 65000
local function ik(i) return P .. 'i:' .. i end
local function dk(i) return P .. 'd:' .. i end
local function zk(i) return P .. 'z:' .. i end
local function xk(i) return P .. 'x:' .. i end
local function get(i)
  local v = redis.call('HMGET', ik(i), unpack(F))
  if not v[1] then return nil end
  local a = {ino = tonumber(i)}
  for n = 1, #F do a[F[n]] = tonumber(v[n]) or 0 end
  return a
end
local function attr(a)
  return {a.ino, a.mode, a.uid, a.gid, a.nlink, a.size, a.rdev, a.as, a.an, a.ms, a.mn, a.cs, a.cn,
          a.bytes}
end
local function ok(a, ...)
  local r = {0}
  for _, v in ipairs({...}) do r[#r + 1] = v end
  for _, v in ipairs(attr(a)) do r[#r + 1] = v end
  return r
end
local function put(a, fields)
  local args = {}
  for _, k in ipairs(fields) do args[#args + 1] = k; args[#args + 1] = a[k] end
  redis.call('HSET', ik(a.ino), unpack(args))
end
local function ftype(mode) return bit.band(mode, IFMT) end
local function isdir(a) return ftype(a.mode) == DIR end
local function changed(a)
  a.cs, a.cn = NOW_S, NOW_NS
  put(a, {'cs', 'cn'})
end
local function dir_changed(a)
  a.ms, a.mn, a.cs, a.cn = NOW_S, NOW_NS, NOW_S, NOW_NS
  put(a, {'ms', 'mn', 'cs', 'cn'})
end
-- The directory `i` one may change, or nil and an errno.
local function dir(i)
  local d = get(i)
  if not d then return nil, 116 end
  if not isdir(d) then return nil, 20 end
  if d.nlink == 0 then return nil, 2 end
  return d
end
-- The type (mode >> 12) and ino `name` names in directory `d`, or nil.
local function entry(d, name)
  local e = redis.call('HGET', dk(d.ino), name)
  if not e then return nil end
  local t, i = string.match(e, '^(%d+):(%d+):')
  return tonumber(t), tonumber(i)
end
local function add_entry(d, name, a)
  local seq = redis.call('HINCRBY', ik(d.ino), 'seq', 1) + 2
  redis.call('HSET', dk(d.ino), name, math.floor(a.mode / 4096) .. ':' .. a.ino .. ':' .. seq)
  redis.call('ZADD', zk(d.ino), seq, name)
end
local function remove_entry(d, name)
  redis.call('HDEL', dk(d.ino), name)
  redis.call('ZREM', zk(d.ino), name)
end
-- Set-user-ID always; set-group-ID only with group execute.
local function kill_suid(mode)
  mode = bit.band(mode, bit.bnot(2048))
  if bit.band(mode, 8) ~= 0 then mode = bit.band(mode, bit.bnot(1024)) end
  return mode
end
local function drop_capability(a) redis.call('HDEL', xk(a.ino), 'security.capability') end
local function is_dot(name) return name == '.' or name == '..' end
)lua";

constexpr char kLookup[] = R"lua(
local d, err = get(ARGV[4]), 0
if not d then return {116} end
if not isdir(d) then return {20} end
local name = ARGV[5]
local c
if name == '.' then c = d
elseif name == '..' then c = get(redis.call('HGET', ik(d.ino), 'parent') or d.ino)
else
  local _, i = entry(d, name)
  if i then c = get(i) end
end
if not c then return {2} end
return ok(c)
)lua";

constexpr char kGetattr[] = R"lua(
local a = get(ARGV[4])
if not a then return {116} end
return ok(a)
)lua";

constexpr char kMknode[] = R"lua(
local d, err = dir(ARGV[4])
if not d then return {err} end
local name = ARGV[5]
if is_dot(name) or redis.call('HEXISTS', dk(d.ino), name) == 1 then return {17} end
local mode = tonumber(ARGV[6])
local t = ftype(mode)
if t == DIR and d.nlink >= MAX_LINKS then return {31} end
local a = {ino = redis.call('INCR', P .. 'next'), mode = mode, uid = tonumber(ARGV[7]),
           gid = tonumber(ARGV[8]), nlink = 1, size = 0, rdev = 0, bytes = 0,
           as = NOW_S, an = NOW_NS, ms = NOW_S, mn = NOW_NS, cs = NOW_S, cn = NOW_NS}
-- A set-group-ID directory gives its group, and to directories its bit.
if bit.band(d.mode, 1024) ~= 0 then
  a.gid = d.gid
  if t == DIR then a.mode = bit.bor(a.mode, 1024) end
end
if t == 8192 or t == 24576 then a.rdev = tonumber(ARGV[9]) end
local fields = {'mode','uid','gid','nlink','size','rdev','as','an','ms','mn','cs','cn','bytes'}
if t == DIR then
  a.nlink = 2
  a.parent = d.ino
  a.seq = 0
  fields[#fields + 1] = 'parent'
  fields[#fields + 1] = 'seq'
  redis.call('HINCRBY', ik(d.ino), 'nlink', 1)
elseif t == LNK then
  a.size = #ARGV[10]
  a.target = ARGV[10]
  fields[#fields + 1] = 'target'
end
put(a, fields)
add_entry(d, name, a)
dir_changed(d)
redis.call('HINCRBY', P .. 'stats', 'inodes', 1)
return ok(a)
)lua";

constexpr char kLink[] = R"lua(
local a = get(ARGV[4])
if not a then return {116} end
local d, err = dir(ARGV[5])
if not d then return {err} end
local name = ARGV[6]
if isdir(a) then return {1} end
if is_dot(name) or redis.call('HEXISTS', dk(d.ino), name) == 1 then return {17} end
if a.nlink == 0 then return {2} end
if a.nlink >= MAX_LINKS then return {31} end
a.nlink = a.nlink + 1
put(a, {'nlink'})
changed(a)
add_entry(d, name, a)
dir_changed(d)
return ok(a)
)lua";

constexpr char kUnlink[] = R"lua(
local d, err = dir(ARGV[4])
if not d then return {err} end
local name = ARGV[5]
local t, i = entry(d, name)
if not t then
  if is_dot(name) then return {21} end
  return {2}
end
if t == 4 then return {21} end
remove_entry(d, name)
dir_changed(d)
local a = get(i)
if not a then return {0, i, 0} end
a.nlink = math.max(a.nlink - 1, 0)
put(a, {'nlink'})
changed(a)
return {0, i, a.nlink}
)lua";

constexpr char kRmdir[] = R"lua(
local d, err = dir(ARGV[4])
if not d then return {err} end
local name = ARGV[5]
if name == '.' then return {22} end
if name == '..' then return {39} end
local t, i = entry(d, name)
if not t then return {2} end
if t ~= 4 then return {20} end
if redis.call('HLEN', dk(i)) > 0 then return {39} end
remove_entry(d, name)
d.nlink = d.nlink - 1
put(d, {'nlink'})
dir_changed(d)
redis.call('DEL', ik(i), dk(i), zk(i), xk(i), P .. 'l:' .. i)
redis.call('HINCRBY', P .. 'stats', 'inodes', -1)
return {0}
)lua";

constexpr char kRename[] = R"lua(
local fd, err = dir(ARGV[4])
if not fd then return {err} end
local td, err2 = dir(ARGV[6])
if not td then return {err2} end
if td.ino == fd.ino then td = fd end
local name, new_name, flags = ARGV[5], ARGV[7], tonumber(ARGV[8])
local noreplace, exchange = bit.band(flags, 1) ~= 0, bit.band(flags, 2) ~= 0
if is_dot(name) or is_dot(new_name) then return {16} end
local ft, fi = entry(fd, name)
if not ft then return {2} end
local tt, ti = entry(td, new_name)
if exchange and not tt then return {2} end
if tt and noreplace then return {17} end
if ti == fi then return {0, 0, 0} end
local node = get(fi)
local target = ti and get(ti)
-- A directory cannot move below itself: walk up from where it would go.
local function inside(d, ancestor)
  local i, n = d, 0
  while i and n < 100000 do
    if i == ancestor then return true end
    if i == 1 then return false end
    local p = redis.call('HGET', ik(i), 'parent')
    if not p then return false end
    i, n = tonumber(p), n + 1
  end
  return false
end
if isdir(node) and inside(td.ino, node.ino) then return {22} end
if exchange and isdir(target) and inside(fd.ino, target.ino) then return {22} end
if target and not exchange then
  if isdir(node) and not isdir(target) then return {20} end
  if not isdir(node) and isdir(target) then return {21} end
  if isdir(target) and redis.call('HLEN', dk(target.ino)) > 0 then return {39} end
end
if isdir(node) and fd.ino ~= td.ino and td.nlink >= MAX_LINKS then return {31} end
local gone, left = 0, 0
if exchange then
  remove_entry(fd, name)
  remove_entry(td, new_name)
  add_entry(fd, name, target)
  add_entry(td, new_name, node)
  if fd.ino ~= td.ino then
    if isdir(node) then
      node.parent = td.ino; put(node, {'parent'})
      fd.nlink = fd.nlink - 1; td.nlink = td.nlink + 1
    end
    if isdir(target) then
      target.parent = fd.ino; put(target, {'parent'})
      td.nlink = td.nlink - 1; fd.nlink = fd.nlink + 1
    end
  end
  changed(target)
else
  if target then
    remove_entry(td, new_name)
    if isdir(target) then
      td.nlink = td.nlink - 1
      redis.call('DEL', ik(target.ino), dk(target.ino), zk(target.ino), xk(target.ino))
      redis.call('HINCRBY', P .. 'stats', 'inodes', -1)
    else
      target.nlink = math.max(target.nlink - 1, 0)
      put(target, {'nlink'})
      changed(target)
      gone, left = target.ino, target.nlink
    end
  end
  remove_entry(fd, name)
  add_entry(td, new_name, node)
  if isdir(node) and fd.ino ~= td.ino then
    node.parent = td.ino; put(node, {'parent'})
    fd.nlink = fd.nlink - 1; td.nlink = td.nlink + 1
  end
end
changed(node)
put(fd, {'nlink'})
dir_changed(fd)
if td.ino ~= fd.ino then
  put(td, {'nlink'})
  dir_changed(td)
end
return {0, gone, left}
)lua";

// valid: the SetAttr bits (backend.h).
constexpr char kSetattr[] = R"lua(
local a = get(ARGV[4])
if not a then return {116} end
local v = tonumber(ARGV[5])
local function has(b) return bit.band(v, b) ~= 0 end
local t = ftype(a.mode)
if has(8) then
  if t == DIR then return {21} end
  if t ~= REG then return {22} end
end
local old = a.size
local any = false
if has(1) then a.mode = bit.bor(bit.band(a.mode, IFMT), bit.band(tonumber(ARGV[6]), 4095)); any = true end
if has(2) or has(4) then
  if has(2) then a.uid = tonumber(ARGV[7]) end
  if has(4) then a.gid = tonumber(ARGV[8]) end
  if not has(1) and t ~= DIR then a.mode = kill_suid(a.mode) end
  drop_capability(a)
  any = true
end
if has(2048) then a.mode = kill_suid(a.mode); any = true end
if has(8) then
  drop_capability(a)
  a.size = tonumber(ARGV[9])
  a.ms, a.mn = NOW_S, NOW_NS
  any = true
end
if has(16) then a.as, a.an = tonumber(ARGV[10]), tonumber(ARGV[11]); any = true end
if has(32) then a.ms, a.mn = tonumber(ARGV[12]), tonumber(ARGV[13]); any = true end
if has(1024) then a.cs, a.cn = tonumber(ARGV[14]), tonumber(ARGV[15])
elseif any then a.cs, a.cn = NOW_S, NOW_NS end
put(a, F)
return ok(a, old)
)lua";

// The hot path, without the prelude (which costs every call): 9.7 us of
// the store's time for a 4 KiB write against 22 for a chunk script and a
// metadata script with it (INFO commandstats, usec_per_call). ARGV[4] ino,
// [5] the write's end, [6] '1': kill set-user-ID and set-group-ID, [7] what
// chunks written elsewhere grew by, then the chunks written here: key,
// offset, bytes (one server: all in one script). Times and the size go as
// the caller's strings: a Lua number past 14 digits would be rounded.
constexpr char kWrite[] = R"lua(
local k = ARGV[1] .. 'i:' .. ARGV[4]
local v = redis.call('HMGET', k, 'mode', 'size', 'bytes')
if not v[1] then return {116} end
local mode = tonumber(v[1])
if bit.band(mode, 61440) ~= 32768 then return {bit.band(mode, 61440) == 16384 and 21 or 22} end
local index = ARGV[1] .. 'k:' .. ARGV[4]
local grew = tonumber(ARGV[7])
local marks = tonumber(ARGV[8])
for n = 9, 8 + marks do redis.call('ZADD', index, ARGV[n], ARGV[n]) end
for n = 9 + marks, #ARGV, 4 do
  local old = redis.call('STRLEN', ARGV[n])
  grew = grew + redis.call('SETRANGE', ARGV[n], ARGV[n + 2], ARGV[n + 3]) - old
  if old == 0 then redis.call('ZADD', index, ARGV[n + 1], ARGV[n + 1]) end
end
local set = {'ms', ARGV[2], 'mn', ARGV[3], 'cs', ARGV[2], 'cn', ARGV[3]}
if tonumber(ARGV[5]) > (tonumber(v[2]) or 0) then
  set[#set + 1] = 'size'
  set[#set + 1] = ARGV[5]
end
if grew ~= 0 then
  set[#set + 1] = 'bytes'
  set[#set + 1] = string.format('%d', math.max((tonumber(v[3]) or 0) + grew, 0))
end
if ARGV[6] == '1' then
  local killed = bit.band(mode, bit.bnot(2048))
  if bit.band(mode, 8) ~= 0 then killed = bit.band(killed, bit.bnot(1024)) end
  if killed ~= mode then
    set[#set + 1] = 'mode'
    set[#set + 1] = string.format('%d', killed)
  end
end
redis.call('HSET', k, unpack(set))
redis.call('HDEL', ARGV[1] .. 'x:' .. ARGV[4], 'security.capability')
return {0}
)lua";

// ARGV[4] ino, [5] [6] the first and last chunk index, [7] at most so many.
// Returns 0, then the indexes of chunks that may exist there, in order.
constexpr char kChunkList[] = R"lua(
local r = {0}
for _, i in ipairs(redis.call('ZRANGEBYSCORE', ARGV[1] .. 'k:' .. ARGV[4], ARGV[5], ARGV[6],
                              'LIMIT', 0, tonumber(ARGV[7]))) do
  r[#r + 1] = tonumber(i)
end
return r
)lua";

// The chunks ARGV[5]..ARGV[6] (indexes) of inode ARGV[4] are gone; its
// byte count changes by ARGV[7] (if the inode is still there).
constexpr char kChunksGone[] = R"lua(
redis.call('ZREMRANGEBYSCORE', ARGV[1] .. 'k:' .. ARGV[4], ARGV[5], ARGV[6])
local k = ARGV[1] .. 'i:' .. ARGV[4]
local d = tonumber(ARGV[7])
local b = redis.call('HGET', k, 'bytes')
if b and d ~= 0 then
  redis.call('HSET', k, 'bytes', string.format('%d', math.max(tonumber(b) + d, 0)))
end
return {0}
)lua";

// Removes an inode whose last name went (nlink 0); its data is the
// caller's to delete. Nothing if it was linked again meanwhile.
constexpr char kFree[] = R"lua(
local a = get(ARGV[4])
if not a then return {0, 0} end
if a.nlink > 0 then return {0, 0} end
redis.call('DEL', ik(a.ino), xk(a.ino), P .. 'l:' .. a.ino)
redis.call('HINCRBY', P .. 'stats', 'inodes', -1)
return {0, a.size}
)lua";

// ARGV[5]: the offset (entries with a larger seq), ARGV[6]: at most so many.
// Returns 0, the parent's ino, then name, type, ino, seq for each entry.
constexpr char kReaddir[] = R"lua(
local d = get(ARGV[4])
if not d then return {116} end
if not isdir(d) then return {20} end
local r = {0, tonumber(redis.call('HGET', ik(d.ino), 'parent') or d.ino)}
local names = redis.call('ZRANGEBYSCORE', zk(d.ino), '(' .. ARGV[5], '+inf', 'LIMIT', 0, tonumber(ARGV[6]))
if #names == 0 then return r end
local vals = redis.call('HMGET', dk(d.ino), unpack(names))
for n = 1, #names do
  local v = vals[n]
  if v then
    local t, i, seq = string.match(v, '^(%d+):(%d+):(%d+)$')
    r[#r + 1] = names[n]; r[#r + 1] = tonumber(t); r[#r + 1] = tonumber(i); r[#r + 1] = tonumber(seq)
  end
end
return r
)lua";

// ARGV[7]: XATTR_CREATE 1, XATTR_REPLACE 2.
constexpr char kSetxattr[] = R"lua(
local a = get(ARGV[4])
if not a then return {116} end
local exists = redis.call('HEXISTS', xk(a.ino), ARGV[5]) == 1
local flags = tonumber(ARGV[7])
if bit.band(flags, 1) ~= 0 and exists then return {17} end
if bit.band(flags, 2) ~= 0 and not exists then return {61} end
redis.call('HSET', xk(a.ino), ARGV[5], ARGV[6])
changed(a)
return {0}
)lua";

constexpr char kGetxattr[] = R"lua(
if redis.call('EXISTS', ik(ARGV[4])) == 0 then return {116} end
local v = redis.call('HGET', xk(ARGV[4]), ARGV[5])
if not v then return {61} end
return {0, v}
)lua";

constexpr char kListxattr[] = R"lua(
if redis.call('EXISTS', ik(ARGV[4])) == 0 then return {116} end
local r = {0}
for _, k in ipairs(redis.call('HKEYS', xk(ARGV[4]))) do r[#r + 1] = k end
return r
)lua";

constexpr char kRemovexattr[] = R"lua(
local a = get(ARGV[4])
if not a then return {116} end
if redis.call('HDEL', xk(a.ino), ARGV[5]) == 0 then return {61} end
changed(a)
return {0}
)lua";

constexpr char kGrow[] = R"lua(
local a = get(ARGV[4])
if not a then return {116} end
a.bytes = math.max(a.bytes + tonumber(ARGV[5]), 0)
put(a, {'bytes'})
return {0}
)lua";

constexpr char kChunkWrite[] = R"lua(
local old = redis.call('STRLEN', KEYS[1])
return redis.call('SETRANGE', KEYS[1], ARGV[1], ARGV[2]) - old
)lua";

constexpr char kChunkTrim[] = R"lua(
local old = redis.call('STRLEN', KEYS[1])
local keep = tonumber(ARGV[1])
if old <= keep then return 0 end
if keep == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], 0, keep - 1))
end
return keep - old
)lua";

// ARGV[1]: the chunk holds at least so many bytes (zeros past its data).
constexpr char kChunkAlloc[] = R"lua(
local old = redis.call('STRLEN', KEYS[1])
local want = tonumber(ARGV[1])
if old >= want then return 0 end
return redis.call('SETRANGE', KEYS[1], want - 1, '\0') - old
)lua";

// Bytes ARGV[1] to ARGV[2] (exclusive) of the chunk become zeros, written
// (ZERO_RANGE keeps them allocated).
constexpr char kChunkZero[] = R"lua(
local old = redis.call('STRLEN', KEYS[1])
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
return redis.call('SETRANGE', KEYS[1], from, string.rep('\0', to - from)) - old
)lua";

// Bytes ARGV[1] to ARGV[2] (exclusive) of the chunk read as zeros after,
// freed where they end the chunk (PUNCH_HOLE).
constexpr char kChunkPunch[] = R"lua(
local old = redis.call('STRLEN', KEYS[1])
local from, to = tonumber(ARGV[1]), tonumber(ARGV[2])
if old <= from then return 0 end
if to < old then
  redis.call('SETRANGE', KEYS[1], from, string.rep('\0', to - from))
  return 0
end
if from == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], 0, from - 1))
end
return from - old
)lua";

constexpr char kChunkDrop[] = R"lua(
local old = redis.call('STRLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return -old
)lua";

// Shared by the lock scripts, after the prelude.
constexpr char kLockHelpers[] = R"lua(
local NOW_MS = NOW_S * 1000 + math.floor(NOW_NS / 1000000)
local function lk(i) return P .. 'l:' .. i end
local function ranges(v)
  local out = {}
  for s, e, t, p in string.gmatch(v or '', '(%-?%d+),(%-?%d+),(%d+),(%d+);') do
    out[#out + 1] = {s = tonumber(s), e = tonumber(e), t = tonumber(t), p = tonumber(p)}
  end
  return out
end
local function encode(rs)
  local b = {}
  for _, r in ipairs(rs) do b[#b + 1] = r.s .. ',' .. r.e .. ',' .. r.t .. ',' .. r.p .. ';' end
  return table.concat(b)
end
local function hi(e) if e < 0 then return math.huge end return e end
local function overlap(r, s, e) return r.s <= hi(e) and s <= hi(r.e) end
local function alive(dev)
  local x = redis.call('ZSCORE', P .. 'devices', dev)
  return x and tonumber(x) >= NOW_MS
end
-- The first lock of another owner of `flavor` that conflicts with a lock
-- of type t over [s, e]; the locks of devices gone go on the way.
local function conflict(ino, me, flavor, s, e, t)
  local all = redis.call('HGETALL', lk(ino))
  for n = 1, #all, 2 do
    local owner = all[n]
    local dev, fl = string.match(owner, '^(%w+):%d+:(%a)$')
    if owner ~= me and fl == flavor then
      if not alive(dev) then
        redis.call('HDEL', lk(ino), owner)
      else
        for _, r in ipairs(ranges(all[n + 1])) do
          if overlap(r, s, e) and (t == 1 or r.t == 1) then return r end
        end
      end
    end
  end
  return nil
end
)lua";

constexpr char kGetlk[] = R"lua(
local ino, me, flavor = ARGV[4], ARGV[5], ARGV[6]
local s, e, t = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local r = conflict(ino, me, flavor, s, e, t)
if not r then return {0, -2} end
return {0, r.s, r.e, r.t, r.p}
)lua";

// ARGV[10]: the pid to record.
constexpr char kSetlk[] = R"lua(
local ino, me, flavor = ARGV[4], ARGV[5], ARGV[6]
local s, e, t, pid = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if redis.call('EXISTS', ik(ino)) == 0 then return {116} end
if t ~= 2 and conflict(ino, me, flavor, s, e, t) then return {11} end
-- The owner's own locks over [s, e] are replaced: cut around it, then the
-- new one, then ranges of one type that touch merged (as Linux keeps them).
local out = {}
for _, r in ipairs(ranges(redis.call('HGET', lk(ino), me))) do
  if not overlap(r, s, e) then
    out[#out + 1] = r
  else
    if r.s < s then out[#out + 1] = {s = r.s, e = s - 1, t = r.t, p = r.p} end
    if hi(r.e) > hi(e) then out[#out + 1] = {s = e + 1, e = r.e, t = r.t, p = r.p} end
  end
end
if t ~= 2 then out[#out + 1] = {s = s, e = e, t = t, p = pid} end
table.sort(out, function(a, b) return a.s < b.s end)
local merged = {}
for _, r in ipairs(out) do
  local last = merged[#merged]
  if last and last.t == r.t and hi(last.e) + 1 >= r.s then
    if hi(r.e) > hi(last.e) then last.e = r.e end
  else
    merged[#merged + 1] = r
  end
end
local dev = string.match(me, '^(%w+):')
if #merged == 0 then
  redis.call('HDEL', lk(ino), me)
else
  redis.call('HSET', lk(ino), me, encode(merged))
  redis.call('SADD', P .. 'dl:' .. dev, ino)
end
return {0}
)lua";

constexpr char kUnlockOwner[] = R"lua(
redis.call('HDEL', lk(ARGV[4]), ARGV[5])
return {0}
)lua";

constexpr char kDropDevice[] = R"lua(
local dev = ARGV[4]
for _, ino in ipairs(redis.call('SMEMBERS', P .. 'dl:' .. dev)) do
  local all = redis.call('HKEYS', lk(ino))
  for _, owner in ipairs(all) do
    if string.sub(owner, 1, #dev + 1) == dev .. ':' then redis.call('HDEL', lk(ino), owner) end
  end
end
redis.call('DEL', P .. 'dl:' .. dev)
redis.call('ZREM', P .. 'devices', dev)
return {0}
)lua";

struct Compiled {
  std::string source;
  std::string sha;
};

std::string sha1_hex(const std::string& text) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), md.data(), &len, EVP_sha1(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    char b[3];
    std::snprintf(b, sizeof(b), "%02x", md[i]);
    hex += b;
  }
  return hex;
}

const std::array<Compiled, size_t(Script::kCount)>& compiled() {
  static const auto all = [] {
    const char* bodies[] = {
        kLookup,      kGetattr,    kMknode,    kLink,      kUnlink,      kRmdir,      kRename,
        kSetattr,     kWrite,      kFree,      kReaddir,   kSetxattr,    kGetxattr,   kListxattr,
        kRemovexattr, kGrow,       kGetlk,     kSetlk,     kUnlockOwner, kDropDevice, kChunkList,
        kChunksGone,  kChunkWrite, kChunkTrim, kChunkDrop, kChunkAlloc,  kChunkZero,  kChunkPunch};
    static_assert(std::size(bodies) == size_t(Script::kCount));
    std::array<Compiled, size_t(Script::kCount)> out;
    for (size_t i = 0; i < out.size(); ++i) {
      const Script script = Script(i);
      const bool lock = script == Script::kGetlk || script == Script::kSetlk ||
                        script == Script::kUnlockOwner || script == Script::kDropDevice;
      if (is_chunk_script(script) || script == Script::kWrite || script == Script::kChunkList ||
          script == Script::kChunksGone) {
        out[i].source = bodies[i];
      } else {
        out[i].source = std::string(kPrelude) + (lock ? kLockHelpers : "") + bodies[i];
      }
      out[i].sha = sha1_hex(out[i].source);
    }
    return out;
  }();
  return all;
}

}  // namespace

const std::string& script_source(Script s) { return compiled()[size_t(s)].source; }
const std::string& script_sha(Script s) { return compiled()[size_t(s)].sha; }

}  // namespace dpfs::kv
