// File data through the kernel: read/write (sparse, odd offsets, large,
// O_DIRECT), fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range, mmap, and
// ENOSPC on a memfs of small capacity.
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/statvfs.h>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class IoTest : public MountTest {};

constexpr off_t kKiB = 1024;
constexpr off_t kMiB = 1024 * 1024;
constexpr off_t kGiB = 1024 * kMiB;

std::string read_range(int fd, off_t offset, size_t size) {
  std::string buf(size, '\0');
  ssize_t n = pread_all(fd, buf.data(), size, offset);
  if (n < 0) {
    ADD_FAILURE() << "pread " << size << " at " << offset << ": " << errname(errno);
    return "";
  }
  buf.resize(static_cast<size_t>(n));
  return buf;
}

TEST_P(IoTest, SparseFileAtOneGiB) {
  int fd = open(cpath("sparse"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "hello", 5, kGiB), 0);
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, kGiB + 5);
  EXPECT_LT(st.st_blocks * 512, 1 * kMiB)
      << "a 1 GiB hole must not take space; st_blocks " << st.st_blocks;
  EXPECT_EQ(read_range(fd, kGiB, 5), "hello");
  EXPECT_EQ(check_zero(read_range(fd, 0, 64 * kKiB), 0), "");
  EXPECT_EQ(check_zero(read_range(fd, kGiB / 2 + 123, 70000), kGiB / 2 + 123), "");
  EXPECT_EQ(check_zero(read_range(fd, kGiB - 4096, 4096), kGiB - 4096), "");
  std::string tail = read_range(fd, kGiB - 3, 100);
  EXPECT_EQ(tail, std::string(3, '\0') + "hello") << "a read crossing EOF is short";
  EXPECT_EQ(read_range(fd, kGiB + 5, 10), "") << "a read at EOF returns nothing";
  EXPECT_EQ(read_range(fd, 2 * kGiB, 10), "") << "a read past EOF returns nothing";
  close(fd);
  // The size is seen through a fresh lookup too.
  EXPECT_EQ(lst(path("sparse")).st_size, kGiB + 5);
}

TEST_P(IoTest, HugeSparseSizes) {
  REQUIRE_CAPABILITY(kHugeSparseFiles);
  int fd = open(cpath("huge"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  const off_t big = off_t(1) << 62;
  ASSERT_SYS(ftruncate(fd, big)) << "a 4 EiB sparse file";
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, big);
  EXPECT_LT(st.st_blocks, 64) << "an empty huge file takes no space";
  EXPECT_EQ(check_zero(read_range(fd, big - 4096, 8192), big - 4096), "");
  ASSERT_EQ(pwrite_all(fd, "end", 3, big), 0);
  EXPECT_EQ(read_range(fd, big - 2, 10), std::string(2, '\0') + "end");
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, big + 3);
  EXPECT_ERRNO(ENXIO, lseek(fd, big + 3, SEEK_DATA));
  EXPECT_ERRNO(EINVAL, ftruncate(fd, -1));
  ASSERT_SYS(ftruncate(fd, 0));
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_blocks, 0);
  close(fd);
}

TEST_P(IoTest, PreadPwriteOddOffsets) {
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  std::string model;
  struct W {
    off_t off;
    size_t len;
  };
  uint64_t seed = 100;
  for (W w : {W{0, 1}, W{1, 4095}, W{4095, 2}, W{4097, 65537}, W{3, 7}, W{131071, 131073},
              W{500000, 1}, W{65535, 3}, W{1, 1}, W{262143, 4096 * 3 + 1}, W{0, 0}}) {
    std::string data = pattern(++seed, 0, w.len);
    ASSERT_EQ(pwrite_all(fd, data.data(), data.size(), w.off), 0)
        << "pwrite " << w.len << " at " << w.off;
    if (model.size() < w.off + w.len) model.resize(w.off + w.len, '\0');
    model.replace(static_cast<size_t>(w.off), w.len, data);
  }
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, static_cast<off_t>(model.size()));
  std::string all = read_range(fd, 0, model.size() + 100);
  ASSERT_EQ(all.size(), model.size());
  for (size_t i = 0; i < model.size(); ++i) {
    if (all[i] != model[i]) {
      ADD_FAILURE() << "first difference at offset " << i;
      break;
    }
  }
  // Odd-sized reads at odd offsets agree with the model.
  for (off_t off : {off_t(0), off_t(1), off_t(4095), off_t(4097), off_t(131070), off_t(499999)}) {
    for (size_t len : {size_t(1), size_t(3), size_t(4097), size_t(70001)}) {
      std::string got = read_range(fd, off, len);
      std::string want = model.substr(static_cast<size_t>(off), len);
      EXPECT_TRUE(got == want) << "pread " << len << " at " << off;
    }
  }
  // write() and read() move the file offset.
  ASSERT_EQ(lseek(fd, 10, SEEK_SET), 10);
  EXPECT_EQ(write(fd, "XY", 2), 2);
  EXPECT_EQ(lseek(fd, 0, SEEK_CUR), 12);
  char c;
  EXPECT_EQ(read(fd, &c, 1), 1);
  EXPECT_EQ(c, model[12]);
  EXPECT_EQ(lseek(fd, 0, SEEK_END), static_cast<off_t>(model.size()));
  close(fd);
}

TEST_P(IoTest, LargeWriteEightMiB) {
  const size_t size = 8 * kMiB;
  std::string data = pattern(42, 0, size);
  int fd = open(cpath("big"), O_CREAT | O_RDWR | O_TRUNC, 0644);
  ASSERT_SYS(fd);
  ssize_t n = write(fd, data.data(), size);
  ASSERT_SYS(n);
  EXPECT_EQ(static_cast<size_t>(n), size) << "one write of 8 MiB to a regular file is not short";
  if (static_cast<size_t>(n) < size) {
    ASSERT_EQ(pwrite_all(fd, data.data() + n, size - static_cast<size_t>(n), n), 0);
  }
  close(fd);
  // Read back through a fresh descriptor in one read() and compare checksums.
  fd = open(cpath("big"), O_RDONLY);
  ASSERT_SYS(fd);
  std::string back(size, '\0');
  ssize_t r = pread_all(fd, back.data(), size, 0);
  close(fd);
  ASSERT_EQ(r, static_cast<ssize_t>(size));
  EXPECT_EQ(fnv1a(back), fnv1a(data)) << check_pattern(back, 42, 0);
  struct stat st = lst(path("big"));
  EXPECT_EQ(st.st_size, static_cast<off_t>(size));
  EXPECT_GE(st.st_blocks * 512, static_cast<blkcnt_t>(size)) << "st_blocks " << st.st_blocks;
}

TEST_P(IoTest, DescriptorModesAreEnforced) {
  ASSERT_EQ(write_file(path("f"), "data"), 0);
  int ro = open(cpath("f"), O_RDONLY);
  int wo = open(cpath("f"), O_WRONLY);
  ASSERT_SYS(ro);
  ASSERT_SYS(wo);
  char c;
  EXPECT_ERRNO(EBADF, write(ro, "x", 1));
  EXPECT_ERRNO(EBADF, read(wo, &c, 1));
  EXPECT_ERRNO(EINVAL, pread(ro, &c, 1, -1));
  close(ro);
  close(wo);
}

TEST_P(IoTest, ODirectReadWrite) {
  int fd = open(cpath("direct"), O_CREAT | O_RDWR | O_DIRECT, 0644);
  // Every dpfs backend takes O_DIRECT; a file system the suites did not
  // mount (DPFS_TEST_ON_TMPFS, DPFS_TEST_ON_DIR) may not.
  if (fd < 0 && errno == EINVAL && backend().not_dpfs) {
    GTEST_SKIP() << "O_DIRECT is not supported by the file system under test";
  }
  ASSERT_SYS(fd);
  const size_t size = 256 * kKiB;
  void* raw = nullptr;
  ASSERT_EQ(posix_memalign(&raw, 4096, size), 0);
  std::unique_ptr<void, decltype(&free)> buf(raw, &free);
  std::string data = pattern(9, 0, size);
  memcpy(buf.get(), data.data(), size);
  ssize_t n = pwrite(fd, buf.get(), size, 4096);
  EXPECT_EQ(n, static_cast<ssize_t>(size)) << errname(errno);
  memset(buf.get(), 0, size);
  n = pread(fd, buf.get(), size, 4096);
  EXPECT_EQ(n, static_cast<ssize_t>(size)) << errname(errno);
  EXPECT_EQ(memcmp(buf.get(), data.data(), size), 0)
      << "O_DIRECT read differs from what was written";
  close(fd);
  // A buffered reader sees the same bytes.
  fd = open(cpath("direct"), O_RDONLY);
  ASSERT_SYS(fd);
  EXPECT_EQ(check_zero(read_range(fd, 0, 4096), 0), "");
  EXPECT_EQ(check_pattern(read_range(fd, 4096, size), 9, 0), "");
  close(fd);
}

// ---------------------------------------------------------------------------
// fallocate

TEST_P(IoTest, FallocateExtendsSize) {
  REQUIRE_CAPABILITY(kFallocate);
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "abc", 3, 0), 0);
  ASSERT_SYS(fallocate(fd, 0, 0, 1 * kMiB));
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 1 * kMiB);
  EXPECT_GE(st.st_blocks * 512, 1 * kMiB) << "fallocate reserves the blocks";
  EXPECT_EQ(read_range(fd, 0, 3), "abc") << "fallocate keeps existing data";
  EXPECT_EQ(check_zero(read_range(fd, 3, 1 * kMiB), 3), "");
  // A range inside the file does not change the size.
  ASSERT_SYS(fallocate(fd, 0, 4096, 4096));
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 1 * kMiB);
  EXPECT_ERRNO(EINVAL, fallocate(fd, 0, 0, 0));
  EXPECT_ERRNO(EINVAL, fallocate(fd, 0, -1, 10));
  close(fd);
  int ro = open(cpath("f"), O_RDONLY);
  EXPECT_ERRNO(EBADF, fallocate(ro, 0, 0, 10));
  close(ro);
}

TEST_P(IoTest, FallocateKeepSize) {
  REQUIRE_CAPABILITY(kFallocate);
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "abc", 3, 0), 0);
  struct stat before;
  ASSERT_SYS(fstat(fd, &before));
  ASSERT_SYS(fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 * kMiB));
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 3) << "KEEP_SIZE must not change the size";
  EXPECT_GE(st.st_blocks * 512, 2 * kMiB) << "KEEP_SIZE still reserves blocks past EOF";
  EXPECT_EQ(read_range(fd, 0, 100), "abc");
  close(fd);
}

TEST_P(IoTest, FallocatePunchHole) {
  REQUIRE_CAPABILITY(kFallocate);
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  std::string data = pattern(77, 0, 4 * kMiB);
  ASSERT_EQ(pwrite_all(fd, data.data(), data.size(), 0), 0);
  struct stat a;
  ASSERT_SYS(fstat(fd, &a));
  ASSERT_SYS(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1 * kMiB, 2 * kMiB));
  struct stat b;
  ASSERT_SYS(fstat(fd, &b));
  EXPECT_EQ(b.st_size, 4 * kMiB);
  EXPECT_LE(b.st_blocks * 512, a.st_blocks * 512 - 2 * kMiB + 64 * kKiB)
      << "punching 2 MiB frees its blocks: st_blocks " << a.st_blocks << " -> " << b.st_blocks;
  std::string back = read_range(fd, 0, 4 * kMiB);
  ASSERT_EQ(back.size(), static_cast<size_t>(4 * kMiB));
  EXPECT_EQ(check_pattern(std::string_view(back).substr(0, kMiB), 77, 0), "");
  EXPECT_EQ(check_zero(std::string_view(back).substr(kMiB, 2 * kMiB), kMiB), "");
  EXPECT_EQ(check_pattern(std::string_view(back).substr(3 * kMiB), 77, 3 * kMiB), "");
  // Unaligned punch zeroes exactly the range.
  ASSERT_SYS(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 3 * kMiB + 100, 5000));
  back = read_range(fd, 3 * kMiB, 6000);
  EXPECT_EQ(check_pattern(std::string_view(back).substr(0, 100), 77, 3 * kMiB), "");
  EXPECT_EQ(check_zero(std::string_view(back).substr(100, 5000), 3 * kMiB + 100), "");
  EXPECT_EQ(check_pattern(std::string_view(back).substr(5100), 77, 3 * kMiB + 5100), "");
  EXPECT_ERRNO(EOPNOTSUPP, fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096))
      << "PUNCH_HOLE needs KEEP_SIZE";
  close(fd);
}

TEST_P(IoTest, FallocateZeroRange) {
  REQUIRE_CAPABILITY(kFallocate);
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  std::string data = pattern(78, 0, 1 * kMiB);
  ASSERT_EQ(pwrite_all(fd, data.data(), data.size(), 0), 0);
  if (fallocate(fd, FALLOC_FL_ZERO_RANGE, 1000, 300000) != 0) {
    const int e = errno;
    // Where it is missing (tmpfs has none; passthrough answers what its
    // host file system does), the refusal must have changed nothing.
    ASSERT_FALSE(has(Capability::kZeroRange)) << "fallocate(ZERO_RANGE): " << errname(e);
    ASSERT_EQ(e, EOPNOTSUPP) << "fallocate(ZERO_RANGE): " << errname(e);
    EXPECT_EQ(check_pattern(read_range(fd, 0, 1 * kMiB), 78, 0), "")
        << "a refused ZERO_RANGE changed the file";
    close(fd);
    return;
  }
  std::string back = read_range(fd, 0, 1 * kMiB);
  ASSERT_EQ(back.size(), static_cast<size_t>(kMiB));
  EXPECT_EQ(check_pattern(std::string_view(back).substr(0, 1000), 78, 0), "");
  EXPECT_EQ(check_zero(std::string_view(back).substr(1000, 300000), 1000), "");
  EXPECT_EQ(check_pattern(std::string_view(back).substr(301000), 78, 301000), "");
  // Past EOF, without KEEP_SIZE, the size grows.
  ASSERT_SYS(fallocate(fd, FALLOC_FL_ZERO_RANGE, kMiB, kMiB));
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 2 * kMiB);
  close(fd);
}

// ---------------------------------------------------------------------------
// SEEK_DATA / SEEK_HOLE

TEST_P(IoTest, SeekDataAndHole) {
  REQUIRE_CAPABILITY(kSeekHoles);
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  // data [0,1M), hole [1M,4M), data [4M,5M), hole [5M,8M) = EOF.
  std::string data = pattern(5, 0, kMiB);
  ASSERT_EQ(pwrite_all(fd, data.data(), data.size(), 0), 0);
  ASSERT_EQ(pwrite_all(fd, data.data(), data.size(), 4 * kMiB), 0);
  ASSERT_SYS(ftruncate(fd, 8 * kMiB));
  EXPECT_EQ(lseek(fd, 0, SEEK_DATA), 0);
  EXPECT_EQ(lseek(fd, 0, SEEK_HOLE), 1 * kMiB);
  EXPECT_EQ(lseek(fd, 100, SEEK_HOLE), 1 * kMiB);
  EXPECT_EQ(lseek(fd, 1 * kMiB, SEEK_DATA), 4 * kMiB);
  EXPECT_EQ(lseek(fd, 2 * kMiB, SEEK_HOLE), 2 * kMiB) << "inside a hole, SEEK_HOLE stays";
  EXPECT_EQ(lseek(fd, 4 * kMiB + 1, SEEK_DATA), 4 * kMiB + 1) << "inside data, SEEK_DATA stays";
  EXPECT_EQ(lseek(fd, 4 * kMiB, SEEK_HOLE), 5 * kMiB);
  EXPECT_ERRNO(ENXIO, lseek(fd, 5 * kMiB + 1, SEEK_DATA)) << "only a hole up to EOF";
  EXPECT_EQ(lseek(fd, 6 * kMiB, SEEK_HOLE), 6 * kMiB);
  EXPECT_ERRNO(ENXIO, lseek(fd, 8 * kMiB, SEEK_DATA)) << "at EOF";
  EXPECT_ERRNO(ENXIO, lseek(fd, 8 * kMiB, SEEK_HOLE)) << "at EOF";
  EXPECT_ERRNO(ENXIO, lseek(fd, 9 * kMiB, SEEK_DATA)) << "past EOF";
  EXPECT_ERRNO(ENXIO, lseek(fd, 9 * kMiB, SEEK_HOLE)) << "past EOF";
  // A file without holes: the only hole is the virtual one at EOF.
  int full = open(cpath("full"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(full);
  ASSERT_EQ(pwrite_all(full, data.data(), 100000, 0), 0);
  EXPECT_EQ(lseek(full, 0, SEEK_HOLE), 100000);
  EXPECT_EQ(lseek(full, 5, SEEK_DATA), 5);
  close(full);
  close(fd);
}

// ---------------------------------------------------------------------------
// copy_file_range

TEST_P(IoTest, CopyFileRangeAcrossFiles) {
  std::string src_data = pattern(21, 0, 2 * kMiB);
  ASSERT_EQ(write_file(path("src"), src_data), 0);
  ASSERT_EQ(write_file(path("dst"), std::string(1000, 'd')), 0);
  int in = open(cpath("src"), O_RDONLY);
  int out = open(cpath("dst"), O_RDWR);
  ASSERT_SYS(in);
  ASSERT_SYS(out);
  loff_t off_in = 12345, off_out = 777;
  size_t want = 300001;
  size_t done = 0;
  while (done < want) {
    ssize_t n = copy_file_range(in, &off_in, out, &off_out, want - done, 0);
    ASSERT_SYS(n);
    ASSERT_GT(n, 0) << "copy_file_range returned 0 before the end of the source";
    done += static_cast<size_t>(n);
  }
  EXPECT_EQ(off_in, 12345 + static_cast<loff_t>(want)) << "copy_file_range advances off_in";
  EXPECT_EQ(off_out, 777 + static_cast<loff_t>(want));
  struct stat st;
  ASSERT_SYS(fstat(out, &st));
  EXPECT_EQ(st.st_size, 777 + static_cast<off_t>(want));
  std::string back = read_range(out, 0, st.st_size);
  EXPECT_EQ(back.substr(0, 777), std::string(777, 'd'));
  EXPECT_EQ(check_pattern(std::string_view(back).substr(777), 21, 12345), "");
  // Past the source's EOF nothing is copied.
  off_in = 2 * kMiB;
  off_out = 0;
  EXPECT_EQ(copy_file_range(in, &off_in, out, &off_out, 100, 0), 0);
  // Without offsets, the file offsets are used and moved.
  ASSERT_EQ(lseek(in, 10, SEEK_SET), 10);
  ASSERT_EQ(lseek(out, 0, SEEK_SET), 0);
  EXPECT_EQ(copy_file_range(in, nullptr, out, nullptr, 50, 0), 50);
  EXPECT_EQ(lseek(in, 0, SEEK_CUR), 60);
  EXPECT_EQ(lseek(out, 0, SEEK_CUR), 50);
  EXPECT_EQ(check_pattern(read_range(out, 0, 50), 21, 10), "");
  EXPECT_ERRNO(EBADF, copy_file_range(out, nullptr, in, nullptr, 10, 0))
      << "destination opened read-only";
  close(in);
  close(out);
}

TEST_P(IoTest, CopyFileRangeWithinOneFile) {
  std::string data = pattern(22, 0, 1 * kMiB);
  ASSERT_EQ(write_file(path("f"), data), 0);
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  loff_t off_in = 100, off_out = 2 * kMiB + 3;
  ssize_t n = copy_file_range(fd, &off_in, fd, &off_out, 200000, 0);
  ASSERT_SYS(n);
  EXPECT_EQ(n, 200000);
  EXPECT_EQ(check_pattern(read_range(fd, 2 * kMiB + 3, 200000), 22, 100), "");
  EXPECT_EQ(check_zero(read_range(fd, kMiB, kMiB + 3), kMiB), "") << "the gap reads as zeros";
  EXPECT_EQ(check_pattern(read_range(fd, 0, kMiB), 22, 0), "") << "the source is unchanged";
  off_in = 0;
  off_out = 1000;
  EXPECT_ERRNO(EINVAL, copy_file_range(fd, &off_in, fd, &off_out, 5000, 0))
      << "overlapping ranges in one file";
  close(fd);
}

// ---------------------------------------------------------------------------
// mmap

TEST_P(IoTest, MmapSharedWriteThenRead) {
  const size_t size = 256 * kKiB;
  int fd = open(cpath("m"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  ASSERT_SYS(ftruncate(fd, size));
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << errname(errno);
  std::string data = pattern(31, 0, size);
  memcpy(p, data.data(), size);
  EXPECT_SYS(msync(p, size, MS_SYNC));
  EXPECT_SYS(munmap(p, size));
  close(fd);
  // Through read() on a fresh descriptor, and from another process.
  auto back = read_file(path("m"));
  ASSERT_TRUE(back);
  EXPECT_EQ(check_pattern(*back, 31, 0), "");
  Child reader([&](Child&) -> std::string {
    auto got = read_file(path("m"));
    if (!got) return "read in child: " + errname(errno);
    return check_pattern(*got, 31, 0);
  });
  EXPECT_EQ(reader.join(), "");
  // write() is seen by a new mapping.
  fd = open(cpath("m"), O_RDWR);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "written", 7, 5000), 0);
  p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << errname(errno);
  EXPECT_EQ(std::string(static_cast<char*>(p) + 5000, 7), "written");
  munmap(p, size);
  // A private mapping does not write back.
  p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << errname(errno);
  memset(p, 'P', 100);
  munmap(p, size);
  EXPECT_EQ(check_pattern(read_range(fd, 0, 100), 31, 0), "");
  close(fd);
}

// ---------------------------------------------------------------------------
// ENOSPC: a memfs with 8 MiB of capacity (a daemon of its own).

class SmallCapacityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    mount_ = std::make_unique<Mount>();
    if (on_tmpfs()) {
      problem = mount_->start_tmpfs("mode=0755,size=8m,nr_inodes=200");
    } else {
      config_ = mount_->base() + "/small.toml";
      ASSERT_EQ(write_file(config_,
                           "[backend]\ntype = \"memfs\"\n\n[backend.memfs]\ncapacity = \"8M\"\n"
                           "max_inodes = 200\n"),
                0);
      problem = mount_->start_dpfs(
          {"serve", "--config", config_, "--fuse-mount", mount_->dir(), "--threads", "2"});
    }
    ASSERT_TRUE(problem.empty()) << problem;
  }
  void TearDown() override {
    if (mount_) {
      close_fds_under(mount_->dir());
      std::string p = mount_->stop();
      EXPECT_TRUE(p.empty()) << p;
    }
    if (!config_.empty()) unlink(config_.c_str());
  }
  std::string path(const std::string& name) const { return mount_->dir() + "/" + name; }

  std::unique_ptr<Mount> mount_;
  std::string config_;
};

TEST_F(SmallCapacityTest, WritingPastCapacityIsENOSPC) {
  struct statvfs vfs;
  ASSERT_SYS(statvfs(mount_->dir().c_str(), &vfs));
  uint64_t total = uint64_t(vfs.f_blocks) * vfs.f_frsize;
  EXPECT_GE(total, 7ull << 20) << "statfs reports " << total << " bytes in all";
  EXPECT_LE(total, 9ull << 20) << "statfs reports " << total << " bytes in all";

  // A first file of 3 MiB that must survive.
  std::string keep = pattern(1, 0, 3 * kMiB);
  ASSERT_EQ(write_file(path("keep"), keep), 0);

  // Then fill: writes of 256 KiB until ENOSPC.
  int fd = open(path("fill").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_SYS(fd);
  std::string chunk = pattern(2, 0, 256 * kKiB);
  off_t written = 0;
  int err = 0;
  for (int i = 0; i < 100; ++i) {
    ssize_t n = pwrite(fd, chunk.data(), chunk.size(), written);
    if (n < 0) {
      err = errno;
      break;
    }
    written += n;
    if (static_cast<size_t>(n) < chunk.size()) {  // short: the next one must fail
      continue;
    }
  }
  EXPECT_EQ(err, ENOSPC) << "writing " << written << " bytes past 3 MiB on an 8 MiB file system "
                         << "ended with " << errname(err);
  EXPECT_LE(written, 5 * kMiB + 256 * kKiB) << "more was accepted than the capacity";
  EXPECT_GE(written, 3 * kMiB) << "far less was accepted than the capacity";
  close(fd);

  // Nothing already written is corrupted.
  auto back = read_file(path("keep"));
  ASSERT_TRUE(back) << errname(errno);
  EXPECT_EQ(back->size(), keep.size());
  EXPECT_EQ(fnv1a(*back), fnv1a(keep)) << check_pattern(*back, 1, 0);
  struct stat st;
  ASSERT_SYS(stat(path("fill").c_str(), &st));
  EXPECT_EQ(st.st_size, written) << "the size counts only what was written";
  auto filled = read_file(path("fill"));
  ASSERT_TRUE(filled);
  EXPECT_EQ(static_cast<off_t>(filled->size()), written);
  for (off_t off = 0; off + 256 * kKiB <= written; off += 256 * kKiB) {
    std::string_view part = std::string_view(*filled).substr(off, 256 * kKiB);
    if (part != chunk) {
      ADD_FAILURE() << "accepted data at " << off << " differs";
      break;
    }
  }

  // Other growth fails too, while reading and overwriting in place still work.
  int kfd = open(path("keep").c_str(), O_RDWR);
  ASSERT_SYS(kfd);
  EXPECT_ERRNO(ENOSPC, fallocate(kfd, 0, 0, 16 * kMiB));
  EXPECT_EQ(pwrite_all(kfd, "over", 4, 0), 0) << "overwriting allocated bytes needs no space";
  close(kfd);

  // Space comes back after unlink.
  ASSERT_SYS(unlink(path("fill").c_str()));
  EXPECT_EQ(write_file(path("again"), pattern(3, 0, 2 * kMiB)), 0);
  back = read_file(path("again"));
  ASSERT_TRUE(back);
  EXPECT_EQ(check_pattern(*back, 3, 0), "");
}

// POSIX unlink(): "When the file's link count becomes 0 and no process has
// the file open, the space occupied by the file shall be freed". So
// `rm big; write another big` must never fail for space, however quickly
// the second follows the first.
TEST_F(SmallCapacityTest, UnlinkFreesSpaceAtOnce) {
  std::string data = pattern(4, 0, 5 * kMiB);
  for (int i = 0; i < 30; ++i) {
    std::string p = path("round" + std::to_string(i));
    int e = write_file(p, data);
    ASSERT_EQ(e, 0) << "round " << i << ": writing 5 MiB right after unlinking the previous "
                    << "5 MiB file (8 MiB capacity): " << errname(e);
    ASSERT_SYS(unlink(p.c_str()));
  }
  // The same for an inode: create/unlink cycles never run out of inodes.
  for (int i = 0; i < 400; ++i) {
    std::string p = path("inode" + std::to_string(i));
    ASSERT_EQ(write_file(p, ""), 0) << "round " << i << " of create+unlink with 200 inodes";
    ASSERT_SYS(unlink(p.c_str()));
  }
}

TEST_F(SmallCapacityTest, RunningOutOfInodesIsENOSPC) {
  // max_inodes = 200 (nr_inodes for tmpfs), the root included.
  int created = 0;
  int err = 0;
  for (int i = 0; i < 400; ++i) {
    std::string p = path("n" + std::to_string(i));
    int fd = open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0) {
      err = errno;
      break;
    }
    close(fd);
    ++created;
  }
  EXPECT_EQ(err, ENOSPC) << "after " << created << " files: " << errname(err);
  EXPECT_GE(created, 150);
  EXPECT_LE(created, 200);
  struct stat st;
  EXPECT_ERRNO(ENOSPC, mkdir(path("d").c_str(), 0755));
  EXPECT_ERRNO(ENOSPC, symlink("t", path("l").c_str()));
  EXPECT_ERRNO(ENOENT, lstat(path("d").c_str(), &st)) << "a failed mkdir leaves nothing";
  EXPECT_EQ(list_dir(mount_->dir()).size(), static_cast<size_t>(created));
  // Freeing one makes room for one.
  ASSERT_SYS(unlink(path("n1").c_str()));
  int fd = open(path("again").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
  EXPECT_SYS(fd);
  if (fd >= 0) close(fd);
}

DPFS_CONFORMANCE_SUITE(IoTest);

}  // namespace
}  // namespace dpfs::itest
