// lib/luks against the real libcryptsetup and the cryptsetup CLI, on files
// in a private temp dir: unlock of CLI-made volumes (key identical to
// `cryptsetup luksDump --dump-volume-key`), XTS byte compatibility with an
// independent AES-XTS on those volumes, in-memory format, keyslot
// rotation in memory and on a file, the error cases, probe(), and the
// device-mapper calls failing cleanly on hosts without device-mapper.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <tuple>

#include "common/error.hpp"
#include "common/log.hpp"
#include "crypto/xts.hpp"
#include "luks/header.hpp"
#include "luks/probe.hpp"
#include "luks/volume.hpp"
#include "../crypto/test_util.hpp"

namespace rbdgw::luks {
namespace {

using test::read_file;
using test::run;
using test::write_file;

constexpr std::uint64_t kMiB = 1 << 20;
const std::string kPass = "correct horse battery staple";

SecretBuffer secret(const std::string& s) { return SecretBuffer(std::string_view(s)); }

Pbkdf fast_pbkdf() {
  Pbkdf p;
  p.type = Pbkdf::Type::pbkdf2;
  p.iterations = 1000;
  return p;
}

FormatOptions fast_format(std::uint32_t sector = 4096, std::uint32_t key_bits = 512) {
  FormatOptions o;
  o.sector_size = sector;
  o.key_bits = key_bits;
  o.pbkdf = fast_pbkdf();
  return o;
}

// Runs f, expecting rbdgw::Error with `code` and `text` in the message.
template <typename F>
void expect_error(F&& f, int code, const std::string& text) {
  try {
    f();
    ADD_FAILURE() << "no error; expected errno " << code << " with '" << text << "'";
  } catch (const Error& e) {
    EXPECT_EQ(code, e.code()) << e.what();
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos)
        << "message '" << e.what() << "' lacks '" << text << "'";
  }
}

// Collects every log line written while alive.
class LogCapture {
 public:
  LogCapture() {
    log::set_level(log::Level::debug);
    log::set_sink([this](log::Level, std::string_view m) {
      std::lock_guard g(mu_);
      text_ += m;
      text_ += '\n';
    });
  }
  ~LogCapture() {
    log::set_sink(nullptr);
    log::set_level(log::Level::info);
  }
  std::string text() {
    std::lock_guard g(mu_);
    return text_;
  }

 private:
  std::mutex mu_;
  std::string text_;
};

class LuksTest : public ::testing::Test {
 protected:
  void SetUp() override { write_file(dir / "pass", kPass); }

  // A file of `mib` MiB of random data (never all zero).
  std::string data_file(const std::string& name, std::uint64_t mib) {
    write_file(dir / name, test::random_bytes(mib * kMiB));
    return dir / name;
  }
  // `cryptsetup luksFormat` on a 20 MiB file, passphrase from the key file.
  std::string cli_format(const std::string& name, const std::string& extra) {
    const std::string f = data_file(name, 20);
    EXPECT_EQ(0, run("cryptsetup luksFormat --batch-mode --pbkdf pbkdf2 "
                     "--pbkdf-force-iterations 1000 --key-file " + (dir / "pass") + " " + extra +
                     " " + f));
    return f;
  }
  // The volume key as the cryptsetup CLI dumps it.
  std::vector<std::uint8_t> cli_volume_key(const std::string& file) {
    std::filesystem::remove(dir / "vk");  // the CLI does not overwrite
    EXPECT_EQ(0, run("cryptsetup luksDump --batch-mode --dump-volume-key --volume-key-file " +
                     (dir / "vk") + " --key-file " + (dir / "pass") + " " + file));
    return read_file(dir / "vk");
  }
  bool cli_accepts(const std::string& file, const std::string& passphrase) {
    write_file(dir / "try", passphrase);
    return run("cryptsetup open --test-passphrase --batch-mode --key-file " + (dir / "try") +
               " " + file) == 0;
  }

  test::TempDir dir;
};

// Volumes made by the cryptsetup CLI: same key, same segment, and our XTS
// matches an independent AES-XTS on their data segment, both directions.
class CliVolume : public LuksTest,
                  public ::testing::WithParamInterface<std::tuple<std::uint32_t, std::uint32_t>> {};

TEST_P(CliVolume, UnlockMatchesCliAndXtsIsByteCompatible) {
  const auto [sector, key_bits] = GetParam();
  const std::string f = cli_format("vol", "--type luks2 --cipher aes-xts-plain64 --sector-size " +
                                              std::to_string(sector) + " --key-size " +
                                              std::to_string(key_bits));
  const auto bytes = read_file(f);
  const Unlocked u = unlock(span_reader(bytes), "vol", secret(kPass));
  const auto vk = cli_volume_key(f);
  ASSERT_EQ(vk.size(), u.volume_key.size());
  EXPECT_EQ(0, std::memcmp(vk.data(), u.volume_key.data(), vk.size())) << "volume key differs";
  EXPECT_EQ(16 * kMiB, u.segment.offset);
  EXPECT_FALSE(u.segment.size.has_value()) << "expected a dynamic segment";
  EXPECT_EQ(sector, u.segment.sector_size);
  EXPECT_EQ(0u, u.segment.iv_tweak);
  EXPECT_EQ("aes-xts-plain64", u.segment.cipher);
  EXPECT_EQ(key_bits, u.segment.key_bits);
  EXPECT_EQ(0, u.keyslot);

  // Our encryption of plaintext at a segment offset decrypts with Python.
  const auto cipher =
      crypto::XtsSectorCipher::create(u.volume_key, u.segment.sector_size, u.segment.iv_tweak);
  const std::uint64_t off = 5 * std::uint64_t{sector};
  const auto plain = test::random_bytes(256 * 1024);
  std::vector<std::uint8_t> enc(plain.size());
  cipher.encrypt(off, plain, enc);
  write_file(dir / "enc", enc);
  ASSERT_EQ(0, test::python_xts(dir / "vk", dir / "enc", dir / "dec", sector, off / 512, false));
  EXPECT_EQ(plain, read_file(dir / "dec"));
  // And the volume's existing (random) ciphertext decrypts like Python does.
  const std::vector<std::uint8_t> stored(bytes.begin() + u.segment.offset + off,
                                         bytes.begin() + u.segment.offset + off + 128 * 1024);
  write_file(dir / "stored", stored);
  ASSERT_EQ(0, test::python_xts(dir / "vk", dir / "stored", dir / "ref", sector, off / 512, false));
  std::vector<std::uint8_t> mine(stored);
  cipher.decrypt(off, mine);
  EXPECT_EQ(read_file(dir / "ref"), mine);
}

// Data that cryptsetup itself encrypted (offline `reencrypt --encrypt`, in
// userspace) decrypts with our unlock + XTS, and our encryption of the same
// plaintext gives the same bytes.
TEST_P(CliVolume, DataEncryptedByCryptsetupReencrypt) {
  const auto [sector, key_bits] = GetParam();
  const auto plain = test::random_bytes(24 * kMiB);
  write_file(dir / "vol", plain);
  ASSERT_EQ(0, run("cryptsetup reencrypt --encrypt --type luks2 --batch-mode "
                   "--reduce-device-size 16M --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "
                   "--sector-size " + std::to_string(sector) + " --key-size " +
                   std::to_string(key_bits) + " --key-file " + (dir / "pass") + " " +
                   (dir / "vol")));
  const auto vol = read_file(dir / "vol");
  const Unlocked u = unlock(span_reader(vol), "vol", secret(kPass));
  ASSERT_EQ(sector, u.segment.sector_size);
  ASSERT_EQ(key_bits, u.segment.key_bits);
  // The device shrank by 16 MiB: the segment holds the first 8 MiB.
  const std::size_t n = 8 * kMiB;
  ASSERT_GE(vol.size(), u.segment.offset + n);
  const std::span<const std::uint8_t> stored(vol.data() + u.segment.offset, n);
  const auto cipher =
      crypto::XtsSectorCipher::create(u.volume_key, u.segment.sector_size, u.segment.iv_tweak);
  std::vector<std::uint8_t> out(n);
  cipher.decrypt(0, stored, out);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), plain.begin())) << "decryption differs";
  cipher.encrypt(0, std::span(plain).first(n), out);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), stored.begin())) << "encryption differs";
}

INSTANTIATE_TEST_SUITE_P(SectorAndKey, CliVolume,
                         ::testing::Combine(::testing::Values(512u, 4096u),
                                            ::testing::Values(256u, 512u)));

TEST_F(LuksTest, UnlockReadsOnlyHeadersAndUsedKeyslots) {
  const std::string f = cli_format("vol", "--type luks2");
  const auto bytes = read_file(f);
  std::uint64_t max_end = 0, total = 0;
  Reader counting = [&](std::span<std::uint8_t> buf, std::uint64_t off) {
    // One byte at the data offset - 1 checks that the data starts inside
    // the source; everything else is headers and key material.
    if (buf.size() > 1) max_end = std::max<std::uint64_t>(max_end, off + buf.size());
    total += buf.size();
    return span_reader(bytes)(buf, off);
  };
  unlock(counting, "vol", secret(kPass));
  EXPECT_LT(max_end, 1 * kMiB) << "unlock read up to " << max_end;
  EXPECT_LT(total, 1 * kMiB) << "unlock read " << total << " bytes";
}

TEST_F(LuksTest, WrongPassphraseIsEpermAndNeverLogged) {
  const std::string f = cli_format("vol", "--type luks2");
  const auto bytes = read_file(f);
  LogCapture logs;
  const std::string wrong = "not-the-passphrase-xyzzy";
  expect_error([&] { unlock(span_reader(bytes), "rbd/vol1", secret(wrong)); }, EPERM,
               "rbd/vol1: wrong passphrase (no keyslot matched)");
  unlock(span_reader(bytes), "rbd/vol1", secret(kPass));
  const std::string text = logs.text();
  EXPECT_EQ(std::string::npos, text.find(wrong));
  EXPECT_EQ(std::string::npos, text.find(kPass));
}

TEST_F(LuksTest, Luks1IsRejectedByName) {
  const std::string f = cli_format("v1", "--type luks1");
  const auto bytes = read_file(f);
  EXPECT_EQ(Content::luks1, probe(bytes).content);
  expect_error([&] { unlock(span_reader(bytes), "rbd/old", secret(kPass)); }, ENOTSUP,
               "rbd/old: LUKS1 is not supported by the luks2");
  expect_error([&] { Header::open(f); }, ENOTSUP, "LUKS1 is not supported");
}

TEST_F(LuksTest, NotLuksNamesWhatWasFound) {
  const std::vector<std::uint8_t> zeros(2 * kMiB, 0);
  expect_error([&] { unlock(span_reader(zeros), "rbd/blank", secret(kPass)); }, EINVAL,
               "rbd/blank: not a LUKS2 volume (found blank)");
  const auto noise = test::random_bytes(kMiB);
  expect_error([&] { unlock(span_reader(noise), "rbd/x", secret(kPass)); }, EINVAL,
               "not a LUKS2 volume (found unknown data)");
  const std::string fs = dir / "ext4";
  write_file(fs, std::vector<std::uint8_t>(8 * kMiB, 0));
  ASSERT_EQ(0, run("mkfs.ext4 -q -F " + fs));
  const auto ext4 = read_file(fs);
  expect_error([&] { unlock(span_reader(ext4), "rbd/fs", secret(kPass)); }, EINVAL,
               "not a LUKS2 volume (found ext2/3/4 filesystem)");
  expect_error([&] { Header::open(fs); }, EINVAL, "no valid LUKS2 header");
}

TEST_F(LuksTest, TruncatedHeaderIsAClearError) {
  const std::string f = cli_format("vol", "--type luks2");
  const auto bytes = read_file(f);
  for (std::size_t n : {std::size_t{100}, std::size_t{20000}, std::size_t{40000}}) {
    const std::span<const std::uint8_t> cut(bytes.data(), n);
    expect_error([&] { unlock(span_reader(cut), "rbd/cut", secret(kPass)); }, EINVAL,
                 "rbd/cut: truncated LUKS2 header");
  }
}

TEST_F(LuksTest, UnsupportedCipherIsRejected) {
  // The keyslots use AES (no kernel crypto API here); the data segment does not.
  const std::string f =
      cli_format("vol", "--type luks2 --cipher aes-cbc-essiv:sha256 --key-size 256 "
                        "--keyslot-cipher aes-xts-plain64 --keyslot-key-size 512");
  const auto bytes = read_file(f);
  expect_error([&] { unlock(span_reader(bytes), "rbd/cbc", secret(kPass)); }, ENOTSUP,
               "rbd/cbc: cipher aes-cbc-essiv:sha256 is not supported; only aes-xts-plain64");
}

TEST_F(LuksTest, CorruptJsonIsAClearError) {
  const std::string f = cli_format("vol", "--type luks2");
  auto bytes = read_file(f);
  // Damage the JSON of both copies (hdr_size is 16 KiB by default).
  for (std::size_t base : {std::size_t{0}, std::size_t{16384}})
    std::memset(bytes.data() + base + 4096, '#', 64);
  expect_error([&] { unlock(span_reader(bytes), "rbd/bad", secret(kPass)); }, EINVAL,
               "rbd/bad: corrupt LUKS2 header");
}

TEST_F(LuksTest, FormatInMemoryOpensWithTheCli) {
  for (auto [sector, key_bits] : {std::pair{4096u, 512u}, std::pair{512u, 256u}}) {
    const Header h = Header::format_in_memory(secret(kPass), fast_format(sector, key_bits));
    const auto hdr = h.bytes();
    ASSERT_EQ(16 * kMiB, hdr.size());
    EXPECT_EQ(Content::luks2, probe(hdr).content);
    auto vol = hdr;
    const auto data = test::random_bytes(kMiB);
    vol.insert(vol.end(), data.begin(), data.end());
    write_file(dir / "vol", vol);
    EXPECT_TRUE(cli_accepts(dir / "vol", kPass));
    EXPECT_FALSE(cli_accepts(dir / "vol", "wrong"));
    const Unlocked u = unlock(span_reader(vol), "vol", secret(kPass));
    EXPECT_EQ(sector, u.segment.sector_size);
    EXPECT_EQ(key_bits, u.segment.key_bits);
    EXPECT_EQ(16 * kMiB, u.segment.offset);
    EXPECT_FALSE(u.segment.size.has_value());
    const auto vk = cli_volume_key(dir / "vol");
    ASSERT_EQ(vk.size(), u.volume_key.size());
    EXPECT_EQ(0, std::memcmp(vk.data(), u.volume_key.data(), vk.size()));
  }
}

TEST_F(LuksTest, FormatTwiceGivesDifferentKeys) {
  const auto a = Header::format_in_memory(secret(kPass), fast_format()).unlock(secret(kPass));
  const auto b = Header::format_in_memory(secret(kPass), fast_format()).unlock(secret(kPass));
  EXPECT_FALSE(a.volume_key.equals(b.volume_key));
}

TEST_F(LuksTest, FormatRejectsBadOptionsAndArgon2Works) {
  expect_error([&] { Header::format_in_memory(secret(kPass), fast_format(2048 + 1)); }, EINVAL,
               "sector size 2049");
  expect_error([&] { Header::format_in_memory(secret(kPass), fast_format(4096, 384)); }, EINVAL,
               "key size 384");
  expect_error([&] { Header::format_in_memory(SecretBuffer(), fast_format()); }, EINVAL,
               "empty passphrase");
  FormatOptions o;  // argon2id with a small, fixed cost
  o.pbkdf.max_memory_kib = 32 * 1024;
  o.pbkdf.iterations = 4;
  o.pbkdf.parallel_threads = 1;
  o.label = "rbdgw-test";
  const Header h = Header::format_in_memory(secret(kPass), o);
  write_file(dir / "argon", h.bytes());
  EXPECT_TRUE(cli_accepts(dir / "argon", kPass));
  ASSERT_EQ(0, run("cryptsetup luksDump " + (dir / "argon") + " > " + (dir / "dump")));
  const auto dump = read_file(dir / "dump");
  const std::string text(dump.begin(), dump.end());
  EXPECT_NE(std::string::npos, text.find("argon2id"));
  EXPECT_NE(std::string::npos, text.find("Memory:     32768"));
  EXPECT_NE(std::string::npos, text.find("rbdgw-test"));
}

// Rotation on an in-memory copy: read -> change -> write back; the data and
// the volume key stay, the old passphrase stops working.
TEST_F(LuksTest, KeyslotRotationInMemory) {
  const std::string f = cli_format("vol", "--type luks2");
  auto vol = read_file(f);
  const auto key = unlock(span_reader(vol), "vol", secret(kPass)).volume_key.clone();
  const std::vector<std::uint8_t> data(vol.begin() + 16 * kMiB, vol.end());

  Header h = Header::read(span_reader(vol), "rbd/vol");
  EXPECT_EQ(1, h.keyslot_count());
  EXPECT_EQ(1, h.add_passphrase(secret(kPass), secret("second"), fast_pbkdf()));
  expect_error([&] { h.add_passphrase(secret("nope"), secret("third"), fast_pbkdf()); }, EPERM,
               "wrong passphrase");
  h.change_passphrase(secret(kPass), secret("new one"), fast_pbkdf());
  EXPECT_EQ(2, h.keyslot_count());
  auto hdr = h.bytes();
  ASSERT_EQ(16 * kMiB, hdr.size());
  std::copy(hdr.begin(), hdr.end(), vol.begin());
  write_file(dir / "rotated", vol);

  EXPECT_FALSE(cli_accepts(dir / "rotated", kPass));
  EXPECT_TRUE(cli_accepts(dir / "rotated", "new one"));
  EXPECT_TRUE(cli_accepts(dir / "rotated", "second"));
  expect_error([&] { unlock(span_reader(vol), "rbd/vol", secret(kPass)); }, EPERM,
               "wrong passphrase");
  EXPECT_TRUE(unlock(span_reader(vol), "rbd/vol", secret("new one")).volume_key.equals(key));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), vol.begin() + 16 * kMiB));

  Header h2 = Header::read(span_reader(vol), "rbd/vol");
  h2.remove_passphrase(secret("second"));
  EXPECT_EQ(1, h2.keyslot_count());
  const auto before = h2.bytes();
  expect_error([&] { h2.remove_passphrase(secret("new one")); }, EBUSY, "is the last one");
  expect_error([&] { h2.remove_passphrase(secret("second")); }, EPERM, "wrong passphrase");
  EXPECT_EQ(before, h2.bytes()) << "a refused removal changed the header";
  const auto after = h2.bytes();
  std::copy(after.begin(), after.end(), vol.begin());
  expect_error([&] { unlock(span_reader(vol), "rbd/vol", secret("second")); }, EPERM,
               "wrong passphrase");
  EXPECT_TRUE(unlock(span_reader(vol), "rbd/vol", secret("new one")).volume_key.equals(key));
}

// write_back in pieces, stopped after each piece: the volume always opens
// with the old or the new passphrase, and the data is never written.
TEST_F(LuksTest, WriteBackIsCrashSafe) {
  const std::string f = cli_format("vol", "--type luks2");
  const auto vol = read_file(f);
  Header h = Header::read(span_reader(vol), "rbd/vol");
  const auto before = h.bytes();
  h.change_passphrase(secret(kPass), secret("rotated"), fast_pbkdf());
  std::vector<std::pair<std::uint64_t, std::vector<std::uint8_t>>> writes;
  h.write_back(before, [&](std::span<const std::uint8_t> buf, std::uint64_t off) {
    writes.emplace_back(off, std::vector<std::uint8_t>(buf.begin(), buf.end()));
  });
  ASSERT_GE(writes.size(), 3u) << "expected new keyslot, headers, old keyslot wipe";
  auto opens = [](const std::vector<std::uint8_t>& v, const std::string& p) {
    try {
      unlock(span_reader(v), "rbd/vol", secret(p));
      return true;
    } catch (const Error& e) {
      EXPECT_EQ(EPERM, e.code()) << e.what();
      return false;
    }
  };
  for (std::size_t k = 0; k <= writes.size(); ++k) {
    auto v = vol;
    for (std::size_t i = 0; i < k; ++i) {
      ASSERT_LE(writes[i].first + writes[i].second.size(), 16 * kMiB) << "wrote into the data";
      std::copy(writes[i].second.begin(), writes[i].second.end(), v.begin() + writes[i].first);
    }
    const bool old_ok = opens(v, kPass), new_ok = opens(v, "rotated");
    EXPECT_TRUE(old_ok || new_ok) << "unopenable after " << k << " of " << writes.size();
    if (k == writes.size()) {
      EXPECT_FALSE(old_ok);
      EXPECT_TRUE(new_ok);
      const auto now = h.bytes();
      EXPECT_TRUE(std::equal(now.begin(), now.end(), v.begin()));
      EXPECT_TRUE(std::equal(vol.begin() + 16 * kMiB, vol.end(), v.begin() + 16 * kMiB));
    }
  }
}

TEST_F(LuksTest, KeyslotsAndFormatOnAFile) {
  const std::string f = data_file("file", 17);
  LuksFormat(f, secret(kPass), fast_format(512, 256));
  const auto vk = cli_volume_key(f);
  {
    Header h = Header::open(f);
    const Unlocked u = h.unlock(secret(kPass));
    EXPECT_EQ(512u, u.segment.sector_size);
    ASSERT_EQ(vk.size(), u.volume_key.size());
    EXPECT_EQ(0, std::memcmp(vk.data(), u.volume_key.data(), vk.size()));
    h.add_passphrase(secret(kPass), secret("other"), fast_pbkdf());
    h.change_passphrase(secret(kPass), secret("rotated"), fast_pbkdf());
  }
  EXPECT_FALSE(cli_accepts(f, kPass));
  EXPECT_TRUE(cli_accepts(f, "rotated"));
  EXPECT_TRUE(cli_accepts(f, "other"));
  Header::open(f).remove_passphrase(secret("other"));
  EXPECT_FALSE(cli_accepts(f, "other"));
  EXPECT_TRUE(cli_accepts(f, "rotated"));
}

TEST_F(LuksTest, FormatOfATooSmallFileChangesNothing) {
  const std::string f = data_file("small", 16);
  const auto before = read_file(f);
  expect_error([&] { LuksFormat(f, secret(kPass), fast_format()); }, ENOSPC,
               f + ": 16777216 bytes is too small for LUKS2");
  EXPECT_EQ(before, read_file(f));
  expect_error([&] { LuksFormat(dir / "missing", secret(kPass), fast_format()); }, ENOENT,
               "LuksFormat: open: " + (dir / "missing"));
}

TEST(Probe, ClassifiesSignatures) {
  test::TempDir dir;
  EXPECT_EQ(Content::blank, probe(std::vector<std::uint8_t>(4096, 0)).content);
  EXPECT_EQ(Content::blank, probe({}).content);
  EXPECT_EQ(Content::unknown, probe(test::random_bytes(4096)).content);
  std::vector<std::uint8_t> one(4096, 0);
  one[4000] = 1;
  EXPECT_EQ(Content::unknown, probe(one).content);

  const std::string xfs = dir / "xfs";
  ASSERT_EQ(0, run("truncate -s 300M " + xfs + " && mkfs.xfs -q " + xfs));
  auto head = read_file(xfs);
  head.resize(4096);
  EXPECT_EQ(Content::other_signature, probe(head).content);
  EXPECT_EQ("xfs filesystem", probe(head).signature);

  const std::string swap = dir / "swap";
  ASSERT_EQ(0, run("truncate -s 1M " + swap + " && mkswap " + swap));
  head = read_file(swap);
  head.resize(4096);
  EXPECT_EQ("swap", probe(head).signature);

  for (auto [label, name] : {std::pair{"gpt", "GPT partition table"},
                             std::pair{"msdos", "DOS partition table"}}) {
    const std::string disk = dir / label;
    ASSERT_EQ(0, run("truncate -s 4M " + disk + " && parted -s " + disk + " mklabel " + label));
    head = read_file(disk);
    head.resize(4096);
    EXPECT_EQ(name, probe(head).signature) << label;
  }
}

// On hosts without device-mapper the dm calls say so and change nothing.
TEST_F(LuksTest, DeviceMapperCallsFailCleanlyWithoutDeviceMapper) {
  if (device_mapper_available()) GTEST_SKIP() << "this host has device-mapper";
  const std::string f = data_file("vol", 17);
  LuksFormat(f, secret(kPass), fast_format());
  const auto before = read_file(f);
  expect_error([&] { LuksOpen(f, "luks-test-vol", secret(kPass)); }, ENOTSUP,
               "LuksOpen: " + f + ": device-mapper is not available on this host (");
  expect_error([&] { LuksOpen(f, "luks-test-vol", secret(kPass)); }, ENOTSUP,
               "/dev/mapper/control");
  expect_error([&] { LuksOpen(f, "luks-test-vol", secret(kPass)); }, ENOTSUP,
               "); use the userspace attach path");
  expect_error([&] { LuksClose("luks-test-vol"); }, ENOTSUP,
               "LuksClose: luks-test-vol: device-mapper is not available");
  expect_error([&] { LuksStatus("luks-test-vol"); }, ENOTSUP,
               "LuksStatus: luks-test-vol: device-mapper is not available");
  EXPECT_EQ(before, read_file(f)) << "a refused dm call changed the volume";
}

// Runs fn at scope exit (cleanup also when an assertion fails).
template <typename F>
struct Defer {
  F fn;
  ~Defer() { fn(); }
};
template <typename F>
Defer(F) -> Defer<F>;

// O_DIRECT I/O on a block device (so neither side reads a stale page cache).
void direct_io(const std::string& dev, bool write, std::uint8_t* buf, std::size_t n,
               std::uint64_t off) {
  const int fd = ::open(dev.c_str(), (write ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC);
  ASSERT_GE(fd, 0) << dev << ": " << std::strerror(errno);
  const ssize_t r = write ? ::pwrite(fd, buf, n, static_cast<off_t>(off))
                          : ::pread(fd, buf, n, static_cast<off_t>(off));
  ::close(fd);
  ASSERT_EQ(static_cast<ssize_t>(n), r) << dev << ": " << std::strerror(errno);
}

// The real kernel path, where device-mapper exists (the kernel VM:
// tests/unit/luks/test-luks-dm-in-vm.sh): dm-crypt and our XTS agree byte
// for byte both ways; open is idempotent, status reports the mapping.
TEST_F(LuksTest, DmCryptMappingMatchesUserspace) {
  if (!device_mapper_available()) {
    if (std::getenv("RBDGW_REQUIRE_DM")) FAIL() << "RBDGW_REQUIRE_DM set but no device-mapper";
    GTEST_SKIP() << "no device-mapper on this host";
  }
  const std::string f = data_file("vol", 24);
  LuksFormat(f, secret(kPass), fast_format(4096, 512));
  ASSERT_EQ(0, run("losetup -f --show " + f + " > " + (dir / "loop")));
  auto loop_out = read_file(dir / "loop");
  std::string loop(loop_out.begin(), loop_out.end());
  while (!loop.empty() && loop.back() == '\n') loop.pop_back();
  Defer detach{[&] { run("losetup -d " + loop); }};
  const std::string name = "luks-rbdgw-test-" + std::to_string(::getpid());
  Defer close{[&] {
    try {
      LuksClose(name);
    } catch (const Error&) {
    }
  }};

  expect_error([&] { LuksOpen(loop, name, secret("wrong")); }, EPERM, "wrong passphrase");
  EXPECT_FALSE(LuksStatus(name).active);
  EXPECT_EQ(name + ": not active", describe(LuksStatus(name)));
  const std::string mapped = LuksOpen(loop, name, secret(kPass));
  EXPECT_EQ("/dev/mapper/" + name, mapped);
  EXPECT_EQ(mapped, LuksOpen(loop, name, secret(kPass))) << "second open not idempotent";
  const MappingStatus st = LuksStatus(name);
  EXPECT_TRUE(st.active);
  EXPECT_EQ("aes-xts-plain64", st.cipher);
  EXPECT_EQ(512u, st.key_bits);
  EXPECT_EQ(4096u, st.sector_size);
  EXPECT_EQ(loop, st.backing_device);
  EXPECT_EQ(16 * kMiB, st.offset);

  const Unlocked u = Header::open(f).unlock(secret(kPass));
  const auto cipher = crypto::XtsSectorCipher::create(u.volume_key, 4096, u.segment.iv_tweak);
  constexpr std::size_t n = 256 * 1024;
  auto* a = static_cast<std::uint8_t*>(std::aligned_alloc(4096, n));
  auto* b = static_cast<std::uint8_t*>(std::aligned_alloc(4096, n));
  Defer free_bufs{[&] { std::free(a), std::free(b); }};
  // Kernel encrypts, we decrypt.
  const auto plain = test::random_bytes(n);
  std::memcpy(a, plain.data(), n);
  direct_io(mapped, true, a, n, 8192);
  direct_io(loop, false, b, n, u.segment.offset + 8192);
  cipher.decrypt(8192, {b, n});
  EXPECT_EQ(0, std::memcmp(plain.data(), b, n)) << "dm-crypt's ciphertext decrypts differently";
  // We encrypt, the kernel decrypts.
  const auto plain2 = test::random_bytes(n);
  cipher.encrypt(kMiB, plain2, {a, n});
  direct_io(loop, true, a, n, u.segment.offset + kMiB);
  direct_io(mapped, false, b, n, kMiB);
  EXPECT_EQ(0, std::memcmp(plain2.data(), b, n)) << "dm-crypt reads our ciphertext differently";

  EXPECT_TRUE(LuksClose(name));
  EXPECT_FALSE(LuksStatus(name).active);
  EXPECT_FALSE(LuksClose(name));
}

TEST(Describe, NamesTheState) {
  MappingStatus s;
  s.name = "luks-abc";
  EXPECT_EQ("luks-abc: not active", describe(s));
  s.active = true;
  s.cipher = "aes-xts-plain64";
  s.key_bits = 512;
  s.sector_size = 4096;
  s.backing_device = "/dev/nbd0";
  s.offset = 16 * kMiB;
  EXPECT_EQ("luks-abc: active, aes-xts-plain64 512-bit key, 4096-byte sectors, on /dev/nbd0 at "
            "offset 16777216",
            describe(s));
}

}  // namespace
}  // namespace rbdgw::luks
