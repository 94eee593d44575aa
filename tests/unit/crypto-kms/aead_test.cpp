// AES-256-GCM against known answers. The vectors are test cases 13, 14 and
// 16 of McGrew & Viega, "The Galois/Counter Mode of Operation" (the GCM
// spec), in Go's layout (ciphertext || tag); each was re-checked with
// python3's `cryptography` AESGCM, an independent implementation:
//   AESGCM(key).encrypt(nonce, plaintext, aad).hex()
#include <gtest/gtest.h>

#include "error_code.hpp"

#include <cerrno>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "crypto/aead.hpp"

namespace rbdgw::crypto {
namespace {

std::vector<std::uint8_t> hex(const std::string& s) {
  std::vector<std::uint8_t> v;
  for (std::size_t i = 0; i + 1 < s.size(); i += 2)
    v.push_back(static_cast<std::uint8_t>(std::stoul(s.substr(i, 2), nullptr, 16)));
  return v;
}

SecretBuffer key_of(const std::string& h) {
  auto v = hex(h);
  return SecretBuffer(v.data(), v.size());
}

struct Vector {
  const char* name;
  const char* key;
  const char* nonce;
  const char* plain;
  const char* aad;
  const char* sealed;
};

const Vector vectors[] = {
    {"tc13 empty", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {"tc14 one block", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "00000000000000000000000000000000", "",
     "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"},
    {"tc16 with aad", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

TEST(Gcm, SealMatchesKnownAnswers) {
  for (const auto& v : vectors) {
    auto sealed = gcm_seal(key_of(v.key), hex(v.nonce), hex(v.plain), hex(v.aad));
    EXPECT_EQ(sealed, hex(v.sealed)) << v.name;
  }
}

TEST(Gcm, OpenMatchesKnownAnswers) {
  for (const auto& v : vectors) {
    auto plain = gcm_open(key_of(v.key), hex(v.nonce), hex(v.sealed), hex(v.aad));
    auto expect = hex(v.plain);
    EXPECT_EQ(std::vector<std::uint8_t>(plain.bytes().begin(), plain.bytes().end()), expect)
        << v.name;
  }
}

void expect_auth_failure(const SecretBuffer& key, const std::vector<std::uint8_t>& nonce,
                         const std::vector<std::uint8_t>& sealed,
                         const std::vector<std::uint8_t>& aad) {
  try {
    gcm_open(key, nonce, sealed, aad);
    ADD_FAILURE() << "gcm_open accepted tampered input";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EBADMSG);
    EXPECT_NE(std::string(e.what()).find("authentication failed"), std::string::npos) << e.what();
  }
}

TEST(Gcm, RejectsAnyChange) {
  const auto& v = vectors[2];
  auto key = key_of(v.key);
  auto nonce = hex(v.nonce), sealed = hex(v.sealed), aad = hex(v.aad);
  for (std::size_t i : {std::size_t{0}, sealed.size() - 17, sealed.size() - 1}) {
    auto bad = sealed;
    bad[i] ^= 1;  // ciphertext and tag bytes
    expect_auth_failure(key, nonce, bad, aad);
  }
  auto bad_nonce = nonce;
  bad_nonce[0] ^= 1;
  expect_auth_failure(key, bad_nonce, sealed, aad);
  auto bad_aad = aad;
  bad_aad.back() ^= 1;
  expect_auth_failure(key, nonce, sealed, bad_aad);
  expect_auth_failure(key, nonce, sealed, {});
  auto other_key = key_of("00feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f94673083");
  expect_auth_failure(other_key, nonce, sealed, aad);
}

TEST(Gcm, RejectsBadSizes) {
  auto key = key_of(vectors[1].key);
  std::vector<std::uint8_t> nonce(12), plain(4);
  using rbdgw::test::error_code;
  SecretBuffer short_key(16);
  EXPECT_EQ(error_code([&] { gcm_seal(short_key, nonce, plain); }), EINVAL);
  std::vector<std::uint8_t> nonce16(16);
  EXPECT_EQ(error_code([&] { gcm_seal(key, nonce16, plain); }), EINVAL);
  std::vector<std::uint8_t> truncated(15);
  EXPECT_EQ(error_code([&] { gcm_open(key, nonce, truncated); }), EINVAL);
}

}  // namespace
}  // namespace rbdgw::crypto
