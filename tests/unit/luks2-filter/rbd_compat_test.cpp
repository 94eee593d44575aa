// LUKS2 images formatted by rbdgw (format_image) open with librbd's own
// encryption (rbd_encryption_load), and data crosses both ways between
// librbd's encryption and CryptIO (the luks2 filter's data path) on the
// raw image. Needs the test cluster (CEPH_CONF).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "crypto/random.hpp"
#include "crypto/xts.hpp"
#include "luks/crypt_io.hpp"
#include "luks/volume_format.hpp"
#include "rbd/cluster.hpp"
#include "rbd/encryption.hpp"
#include "rbd/image.hpp"

namespace rbdgw::luks {
namespace {

// CryptIO's device: the raw (not decrypted) image.
class ImageDevice : public CryptBackend {
 public:
  explicit ImageDevice(rbd::Image& img) : img_(img) {}
  void pread(std::span<std::uint8_t> buf, std::uint64_t off) override {
    img_.read(off, buf.data(), buf.size());
  }
  void pwrite(std::span<const std::uint8_t> buf, std::uint64_t off, bool) override {
    img_.write(off, buf.data(), buf.size());
  }

 private:
  rbd::Image& img_;
};

class RbdCompat : public ::testing::TestWithParam<std::uint32_t> {
 protected:
  void SetUp() override {
    if (!std::getenv("CEPH_CONF")) GTEST_SKIP() << "CEPH_CONF not set";
    name_ = "luks2-compat-" + std::to_string(::getpid()) + "-" + std::to_string(GetParam());
    cluster_.emplace(rbd::Cluster::connect({}));
    io_.emplace(cluster_->open_ioctx("rbd"));
    rbd::CreateOptions co;
    co.size = 24 << 20;
    rbd::create_image(*io_, name_, co);
  }
  void TearDown() override {
    if (io_) rbd::remove_image(*io_, name_);
  }
  std::string name_;
  std::optional<rbd::Cluster> cluster_;
  std::optional<rbd::IoCtx> io_;
};

TEST_P(RbdCompat, FormattedImageOpensWithLibrbdEncryption) {
  const SecretBuffer pass(std::string_view("compat passphrase"));
  FormatOptions opts;
  opts.sector_size = GetParam();
  opts.pbkdf.type = Pbkdf::Type::pbkdf2;
  opts.pbkdf.iterations = 1000;
  Segment seg;
  Unlocked u;
  {
    auto raw = rbd::Image::open(*io_, name_);
    seg = format_image(raw, pass, opts, false);
    u = unlock(
        [&](std::span<std::uint8_t> b, std::uint64_t off) {
          raw.read(off, b.data(), b.size());
          return b.size();
        },
        raw.spec(), pass);
  }
  const std::size_t len = 2 << 20;
  std::vector<std::uint8_t> a(len), b(len), got(len);
  crypto::random_fill(a);
  crypto::random_fill(b);

  // librbd's encryption writes `a` at 0; CryptIO reads it from the raw image.
  {
    auto enc = rbd::Image::open(*io_, name_);
    rbd::load_encryption(enc, rbd::EncryptionFormat::luks2, pass);
    EXPECT_EQ(enc.size(), (24u << 20) - seg.offset);
    enc.write(0, a.data(), len);
    enc.close();
  }
  auto raw = rbd::Image::open(*io_, name_);
  ImageDevice dev(raw);
  CryptIO cio(crypto::XtsSectorCipher::create(u.volume_key, seg.sector_size, seg.iv_tweak),
              seg.offset);
  cio.read(dev, got, 0);
  EXPECT_TRUE(got == a) << "librbd -> CryptIO";

  // CryptIO writes `b` at an unaligned offset; librbd's encryption reads it.
  cio.write(dev, b, 1000, false);
  raw.close();
  auto enc = rbd::Image::open(*io_, name_);
  rbd::load_encryption(enc, rbd::EncryptionFormat::luks2, pass);
  enc.read(1000, got.data(), len);
  EXPECT_TRUE(got == b) << "CryptIO -> librbd";
  enc.read(0, got.data(), 1000);
  EXPECT_EQ(0, std::memcmp(got.data(), a.data(), 1000)) << "bytes before the unaligned write";
}

INSTANTIATE_TEST_SUITE_P(SectorSize, RbdCompat, ::testing::Values(512u, 4096u));

}  // namespace
}  // namespace rbdgw::luks
