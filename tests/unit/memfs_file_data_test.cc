// memfs FileData against a flat model: every operation is applied to both a
// FileData and a std::string holding the same bytes, and the whole file is
// compared after each. Also the allocation side: holes cost nothing,
// SEEK_DATA/SEEK_HOLE, and capacity (ENOSPC, partial writes).
#include <gtest/gtest.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <random>
#include <string>

#include "backend/memfs/file_data.h"

namespace dpfs::memfs {
namespace {

constexpr uint64_t kChunk = FileData::kChunkSize;

int64_t write_str(FileData& f, uint64_t offset, const std::string& s) {
  iovec v{const_cast<char*>(s.data()), s.size()};
  return f.write(offset, std::span<const iovec>(&v, 1));
}

// Reads through two iovecs split at an odd place, as a tenant's buffers may be.
std::string read_str(const FileData& f, uint64_t offset, size_t len) {
  std::string out(len, '\xee');
  const size_t split = len / 3;
  iovec v[2] = {{out.data(), split}, {out.data() + split, len - split}};
  out.resize(f.read(offset, len, std::span<const iovec>(v, 2)));
  return out;
}

std::string pattern(size_t len, uint32_t seed) {
  std::string s(len, '\0');
  for (size_t i = 0; i < len; ++i) s[i] = char('a' + (seed + i * 7) % 26);
  return s;
}

TEST(FileDataTest, HolesReadAsZerosAndCostNothing) {
  Space space(1 << 30);
  FileData f(space);
  ASSERT_EQ(write_str(f, 1ull << 30, "end"), 3);
  EXPECT_EQ(f.size(), (1ull << 30) + 3);
  EXPECT_EQ(f.allocated_chunks(), 1u);
  EXPECT_EQ(f.blocks(), kChunk / 512);
  EXPECT_EQ(space.used(), kChunk);
  EXPECT_EQ(read_str(f, 5000, 10), std::string(10, '\0'));
  EXPECT_EQ(read_str(f, (1ull << 30) - 2, 10), std::string(2, '\0') + "end")
      << "a read stops at the end of file";
  EXPECT_EQ(read_str(f, (1ull << 30) + 3, 10), "");
}

TEST(FileDataTest, ShrinkZeroesTheTailSoGrowingShowsZeros) {
  Space space(1 << 20);
  FileData f(space);
  ASSERT_EQ(write_str(f, 0, std::string(3 * kChunk, 'x')), int64_t(3 * kChunk));
  f.truncate(kChunk + 10);
  EXPECT_EQ(f.allocated_chunks(), 2u) << "chunks past the end are freed";
  EXPECT_EQ(space.used(), 2 * kChunk);
  f.truncate(3 * kChunk);
  EXPECT_EQ(read_str(f, kChunk, 20), std::string(10, 'x') + std::string(10, '\0'));
  EXPECT_EQ(read_str(f, 2 * kChunk, kChunk), std::string(kChunk, '\0'));
}

TEST(FileDataTest, DestructionReturnsTheSpace) {
  Space space(1 << 20);
  {
    FileData f(space);
    ASSERT_EQ(write_str(f, 0, std::string(5 * kChunk, 'x')), int64_t(5 * kChunk));
    EXPECT_EQ(space.used(), 5 * kChunk);
  }
  EXPECT_EQ(space.used(), 0u);
}

TEST(FileDataTest, SeekDataAndHole) {
  Space space(1 << 30);
  FileData f(space);
  ASSERT_EQ(write_str(f, 2 * kChunk + 5, "data"), 4);  // chunk 2
  ASSERT_EQ(write_str(f, 3 * kChunk, "more"), 4);      // chunk 3
  f.truncate(10 * kChunk + 1);
  EXPECT_EQ(f.seek(0, SEEK_DATA), int64_t(2 * kChunk));
  EXPECT_EQ(f.seek(2 * kChunk + 100, SEEK_DATA), int64_t(2 * kChunk + 100));
  EXPECT_EQ(f.seek(4 * kChunk, SEEK_DATA), -ENXIO) << "only a hole up to the end";
  EXPECT_EQ(f.seek(0, SEEK_HOLE), 0);
  EXPECT_EQ(f.seek(2 * kChunk, SEEK_HOLE), int64_t(4 * kChunk));
  EXPECT_EQ(f.seek(10 * kChunk, SEEK_HOLE), int64_t(10 * kChunk));
  EXPECT_EQ(f.seek(10 * kChunk + 1, SEEK_HOLE), -ENXIO) << "at the end of file";
  EXPECT_EQ(f.seek(10 * kChunk + 1, SEEK_DATA), -ENXIO);
  // Data up to the end: the end of file is the hole.
  FileData full(space);
  ASSERT_EQ(write_str(full, 0, std::string(100, 'x')), 100);
  EXPECT_EQ(full.seek(0, SEEK_HOLE), 100);
}

TEST(FileDataTest, FallocateModes) {
  Space space(1 << 30);
  FileData f(space);
  EXPECT_EQ(f.fallocate(0, 100, 2 * kChunk), 0);
  EXPECT_EQ(f.size(), 100 + 2 * kChunk);
  EXPECT_EQ(f.allocated_chunks(), 3u);
  EXPECT_EQ(f.fallocate(FALLOC_FL_KEEP_SIZE, 10 * kChunk, kChunk), 0);
  EXPECT_EQ(f.size(), 100 + 2 * kChunk) << "KEEP_SIZE";
  EXPECT_EQ(f.allocated_chunks(), 4u) << "KEEP_SIZE still allocates past the end";
  EXPECT_EQ(f.fallocate(FALLOC_FL_PUNCH_HOLE, 0, kChunk), -EOPNOTSUPP)
      << "PUNCH_HOLE needs KEEP_SIZE";
  EXPECT_EQ(f.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 20 * kChunk), 0);
  EXPECT_EQ(f.allocated_chunks(), 0u);
  EXPECT_EQ(f.fallocate(FALLOC_FL_UNSHARE_RANGE, 0, kChunk), -EOPNOTSUPP);
  EXPECT_EQ(f.fallocate(0, 0, 0), -EINVAL);
  EXPECT_EQ(f.fallocate(0, FileData::kMaxSize, 1), -EFBIG);
  // COLLAPSE/INSERT: chunk-aligned, inside the file.
  EXPECT_EQ(f.fallocate(FALLOC_FL_COLLAPSE_RANGE, 1, kChunk), -EINVAL);
  EXPECT_EQ(f.fallocate(FALLOC_FL_COLLAPSE_RANGE, 0, 4 * kChunk), -EINVAL) << "reaches the end";
  EXPECT_EQ(f.fallocate(FALLOC_FL_INSERT_RANGE, 4 * kChunk, kChunk), -EINVAL) << "at the end";
}

TEST(FileDataTest, FallocateBeyondCapacityTakesNothing) {
  Space space(8 * kChunk);
  FileData f(space);
  ASSERT_EQ(write_str(f, 0, "x"), 1);
  EXPECT_EQ(f.fallocate(0, 0, 100 * kChunk), -ENOSPC);
  EXPECT_EQ(f.size(), 1u);
  EXPECT_EQ(space.used(), kChunk) << "all or nothing";
  EXPECT_EQ(f.fallocate(FALLOC_FL_ZERO_RANGE, 0, 1ull << 60), -ENOSPC);
}

TEST(FileDataTest, WritePastCapacityIsPartialThenENOSPC) {
  Space space(4 * kChunk);
  FileData f(space);
  EXPECT_EQ(write_str(f, 100, std::string(10 * kChunk, 'x')), int64_t(4 * kChunk - 100));
  EXPECT_EQ(f.size(), 4 * kChunk);
  EXPECT_EQ(write_str(f, 4 * kChunk, "y"), -ENOSPC);
  EXPECT_EQ(write_str(f, 0, "overwrite"), 9) << "writing into allocated chunks needs no space";
  f.truncate(0);
  EXPECT_EQ(space.used(), 0u);
  EXPECT_EQ(write_str(f, 0, "again"), 5);
}

TEST(FileDataTest, CopyAcrossFilesKeepsHoles) {
  Space space(1 << 30);
  FileData a(space), b(space);
  ASSERT_EQ(write_str(a, 5 * kChunk, "island"), 6);
  a.truncate(20 * kChunk);
  EXPECT_EQ(FileData::copy(a, 0, b, 3, 100 * kChunk), int64_t(20 * kChunk)) << "stops at EOF";
  EXPECT_EQ(b.size(), 3 + 20 * kChunk);
  EXPECT_LE(b.allocated_chunks(), 2u) << "holes stay holes";
  EXPECT_EQ(read_str(b, 5 * kChunk + 3, 6), "island");
  EXPECT_EQ(FileData::copy(a, 20 * kChunk, b, 0, 10), 0) << "nothing past EOF";
  // A hole copied over data zeroes it.
  FileData c(space);
  ASSERT_EQ(write_str(c, 0, std::string(3 * kChunk, 'c')), int64_t(3 * kChunk));
  EXPECT_EQ(FileData::copy(a, 0, c, 10, kChunk), int64_t(kChunk));
  EXPECT_EQ(read_str(c, 0, 12), std::string(10, 'c') + std::string(2, '\0'));
  EXPECT_EQ(read_str(c, kChunk + 10, 2), "cc");
}

// Random operations on a FileData and on a string model; the two must agree
// byte for byte after each, and the FileData must never hold more than the
// chunks its size needs plus what fallocate asked for.
class FileDataModelTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(FileDataModelTest, RandomOperationsMatchTheModel) {
  std::mt19937_64 rng(GetParam());
  Space space(1 << 30);
  FileData f(space);
  std::string model;
  constexpr uint64_t kMax = 64 * kChunk;
  auto rand = [&](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  auto rand_len = [&]() {
    switch (rand(4)) {
      case 0:
        return 1 + rand(16);
      case 1:
        return (1 + rand(4)) * kChunk;
      default:
        return 1 + rand(3 * kChunk);
    }
  };
  for (int op = 0; op < 3000; ++op) {
    const uint64_t off = rand(4) == 0 ? rand(kMax / kChunk) * kChunk : rand(kMax);
    const uint64_t len = std::min(rand_len(), kMax - std::min(off, kMax) + 1);
    std::string what;
    switch (rand(9)) {
      case 0:
      case 1: {
        const std::string data = pattern(len, uint32_t(op));
        what = "write";
        ASSERT_EQ(write_str(f, off, data), int64_t(len));
        if (model.size() < off + len) model.resize(off + len, '\0');
        model.replace(off, len, data);
        break;
      }
      case 2: {
        what = "truncate";
        f.truncate(off);
        model.resize(off, '\0');
        break;
      }
      case 3: {
        const bool keep = rand(2);
        what = keep ? "alloc keep" : "alloc";
        ASSERT_EQ(f.fallocate(keep ? FALLOC_FL_KEEP_SIZE : 0, off, len), 0);
        if (!keep && model.size() < off + len) model.resize(off + len, '\0');
        break;
      }
      case 4: {
        what = "punch";
        ASSERT_EQ(f.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len), 0);
        if (off < model.size()) {
          const uint64_t n = std::min<uint64_t>(len, model.size() - off);
          model.replace(off, n, std::string(n, '\0'));
        }
        break;
      }
      case 5: {
        const bool keep = rand(2);
        what = keep ? "zero keep" : "zero";
        ASSERT_EQ(f.fallocate(FALLOC_FL_ZERO_RANGE | (keep ? FALLOC_FL_KEEP_SIZE : 0), off, len),
                  0);
        if (!keep && model.size() < off + len) model.resize(off + len, '\0');
        if (off < model.size()) {
          const uint64_t n = std::min<uint64_t>(len, model.size() - off);
          model.replace(off, n, std::string(n, '\0'));
        }
        break;
      }
      case 6: {
        const uint64_t aoff = off / kChunk * kChunk;
        const uint64_t alen = (1 + rand(4)) * kChunk;
        if (aoff + alen < model.size()) {
          what = "collapse";
          ASSERT_EQ(f.fallocate(FALLOC_FL_COLLAPSE_RANGE, aoff, alen), 0);
          model.erase(aoff, alen);
        } else if (aoff < model.size() && model.size() + alen <= kMax) {
          what = "insert";
          ASSERT_EQ(f.fallocate(FALLOC_FL_INSERT_RANGE, aoff, alen), 0);
          model.insert(aoff, std::string(alen, '\0'));
        }
        break;
      }
      case 7: {
        // Within the file, ranges overlapping either way.
        what = "copy within";
        const uint64_t from = rand(model.size() + 1);
        const uint64_t to = std::min<uint64_t>(
            kMax, rand(2) ? from + rand(2 * kChunk) : from - std::min(from, rand(2 * kChunk)));
        const int64_t n = FileData::copy(f, from, f, to, len);
        const uint64_t expect =
            from < model.size() ? std::min<uint64_t>(len, model.size() - from) : 0;
        ASSERT_EQ(n, int64_t(expect)) << "copy " << from << " -> " << to << " len " << len;
        if (expect > 0) {
          const std::string src = model.substr(from, expect);
          if (model.size() < to + expect) model.resize(to + expect, '\0');
          model.replace(to, expect, src);
        }
        break;
      }
      case 8: {
        what = "seek";
        if (off < model.size()) {
          const int64_t data = f.seek(off, SEEK_DATA);
          const int64_t hole = f.seek(off, SEEK_HOLE);
          ASSERT_GE(hole, int64_t(off));
          ASSERT_LE(hole, int64_t(model.size()));
          // Everything from off up to the next data is zeros.
          const uint64_t zeros_to = data < 0 ? model.size() : uint64_t(data);
          ASSERT_EQ(model.substr(off, zeros_to - off), std::string(zeros_to - off, '\0'));
          if (uint64_t(hole) < model.size()) {
            // A reported hole reads as zeros at least to the next chunk.
            const uint64_t end = std::min<uint64_t>(model.size(), (hole / kChunk + 1) * kChunk);
            ASSERT_EQ(model.substr(hole, end - hole), std::string(end - hole, '\0'));
          }
        } else {
          ASSERT_EQ(f.seek(off, SEEK_DATA), -ENXIO);
          ASSERT_EQ(f.seek(off, SEEK_HOLE), -ENXIO);
        }
        break;
      }
    }
    ASSERT_EQ(f.size(), model.size()) << "after op " << op << " (" << what << ")";
    ASSERT_EQ(read_str(f, 0, model.size() + 10), model) << "after op " << op << " (" << what << ")";
    ASSERT_EQ(space.used(), f.allocated_chunks() * kChunk);
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, FileDataModelTest, ::testing::Values(1, 2, 3, 4, 5, 6, 7, 8));

}  // namespace
}  // namespace dpfs::memfs
