// format_volume on an in-memory volume: formats blank volumes (and
// interrupted formats when tagged encryptionPrepared), refuses anything else
// with EEXIST/ENOTEMPTY naming what it found, and then writes nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "luks/volume_format.hpp"

namespace rbdgw::luks {
namespace {

FormatOptions fast_options() {
  FormatOptions o;
  o.pbkdf.type = Pbkdf::Type::pbkdf2;
  o.pbkdf.iterations = 1000;
  return o;
}

struct MemVolume {
  explicit MemVolume(std::size_t size) : bytes(size, 0) {}
  Reader reader() { return span_reader(bytes); }
  Writer writer() {
    return [this](std::span<const std::uint8_t> buf, std::uint64_t off) {
      ++writes;
      std::memcpy(bytes.data() + off, buf.data(), buf.size());
    };
  }
  Segment format(const SecretBuffer& pass, bool prepared) {
    return format_volume(reader(), writer(), bytes.size(), "test/vol", pass, fast_options(),
                         prepared);
  }
  std::vector<std::uint8_t> bytes;
  int writes = 0;
};

// Expects format to fail with `code` and `what` in the message, writing nothing.
void expect_refused(MemVolume& v, bool prepared, int code, const std::string& what) {
  const auto before = v.bytes;
  try {
    v.format(SecretBuffer(std::string_view("pass")), prepared);
    FAIL() << "format did not refuse (" << what << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find("test/vol"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
  EXPECT_EQ(v.writes, 0);
  EXPECT_TRUE(v.bytes == before);
}

TEST(VolumeFormat, BlankVolumeIsFormattedAndUnlocks) {
  MemVolume v(20 << 20);
  const SecretBuffer pass(std::string_view("volume passphrase"));
  const Segment s = v.format(pass, false);
  EXPECT_EQ(s.offset, 16u << 20);
  EXPECT_EQ(s.sector_size, 4096u);
  EXPECT_EQ(s.cipher, "aes-xts-plain64");
  const Unlocked u = unlock(v.reader(), "test/vol", pass);
  EXPECT_EQ(u.volume_key.size(), 64u);
  EXPECT_EQ(u.segment.offset, s.offset);
  // The data segment was not written.
  EXPECT_TRUE(std::all_of(v.bytes.begin() + s.offset, v.bytes.end(), [](auto b) { return b == 0; }));
}

TEST(VolumeFormat, RefusesAnEncryptedVolume) {
  MemVolume v(20 << 20);
  v.format(SecretBuffer(std::string_view("first")), false);
  v.writes = 0;
  expect_refused(v, false, EEXIST, "already encrypted (found LUKS2)");
}

TEST(VolumeFormat, EncryptionPreparedReplacesAnInterruptedFormat) {
  MemVolume v(20 << 20);
  v.format(SecretBuffer(std::string_view("first")), false);
  const SecretBuffer second(std::string_view("second"));
  v.format(second, true);
  EXPECT_NO_THROW(unlock(v.reader(), "test/vol", second));
}

TEST(VolumeFormat, RefusesAFilesystemEvenWhenPrepared) {
  MemVolume v(20 << 20);
  // ext4 superblock magic 0xEF53 at 1024 + 56.
  v.bytes[1024 + 56] = 0x53;
  v.bytes[1024 + 57] = 0xEF;
  expect_refused(v, true, ENOTEMPTY, "ext2/3/4");
}

TEST(VolumeFormat, RefusesDataInsideTheHeaderArea) {
  MemVolume v(20 << 20);
  v.bytes[(1 << 20) + 7] = 1;
  expect_refused(v, false, ENOTEMPTY, "unknown data at offset 1048583");
}

TEST(VolumeFormat, RefusesAVolumeTooSmallForTheHeader) {
  MemVolume v(8 << 20);
  expect_refused(v, false, ENOSPC, "too small");
}

}  // namespace
}  // namespace rbdgw::luks
