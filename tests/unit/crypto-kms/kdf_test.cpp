// scrypt against the test vectors of RFC 7914, section 12 (the fourth,
// N=1048576, needs 1 GiB and is left out), and with ceph-csi's KEK
// parameters against a value computed once with python3's hashlib:
//   hashlib.scrypt(b"test-passphrase", salt=VOLID, n=32768, r=8, p=1,
//                  dklen=32, maxmem=64 << 20).hex()
#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "crypto/kdf.hpp"

namespace rbdgw::crypto {
namespace {

std::string hex_of(const SecretBuffer& b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (auto c : b.bytes()) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TEST(Scrypt, Rfc7914Vectors) {
  EXPECT_EQ(hex_of(scrypt("", bytes_of(""), {16, 1, 1}, 64)),
            "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442"
            "fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906");
  EXPECT_EQ(hex_of(scrypt("password", bytes_of("NaCl"), {1024, 8, 16}, 64)),
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
            "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640");
  EXPECT_EQ(hex_of(scrypt("pleaseletmein", bytes_of("SodiumChloride"), {16384, 8, 1}, 64)),
            "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
            "d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887");
}

// N=32768, r=8 needs just over OpenSSL's default 32 MiB memory limit.
TEST(Scrypt, CephCsiParameters) {
  const char* volid = "0001-0009-rook-ceph-0000000000000002-b0285c1a-b6f4-11ec-9f6d-0242ac110003";
  EXPECT_EQ(hex_of(scrypt("test-passphrase", bytes_of(volid), ceph_csi_scrypt, 32)),
            "8a36bcac5bad2adf360cba53479d49b0b2862b1bdf14e3132de79e15d7b91ff3");
}

TEST(Scrypt, RejectsInvalidParameters) {
  for (ScryptParams p : {ScryptParams{0, 8, 1}, ScryptParams{1000, 8, 1}, ScryptParams{16, 0, 1},
                         ScryptParams{16, 1, 0}}) {
    try {
      scrypt("x", bytes_of("y"), p, 32);
      ADD_FAILURE() << "accepted N=" << p.n << " r=" << p.r << " p=" << p.p;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), EINVAL);
      EXPECT_NE(std::string(e.what()).find("scrypt"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace rbdgw::crypto
