// The metadata and default providers without a cluster: wrapping in
// ceph-csi's format, checked both ways against cephcsi_dek.py (an
// independent Python implementation of ceph-csi's secretsMetadataKMS).
#include <gtest/gtest.h>

#include "error_code.hpp"

#include <cerrno>
#include <regex>
#include <string>

#include "common/base64.hpp"
#include "common/error.hpp"
#include "kms/secrets_kms.hpp"
#include "kms/volume_encryption.hpp"
#include "kms_test_util.hpp"

namespace rbdgw::kms {
namespace {

const std::string volid = "0001-0009-rook-ceph-0000000000000002-b0285c1a-b6f4-11ec-9f6d-0242ac110003";
const std::string kms_pass = "metadata-kms-secret-4711";
const std::string dek_text = "k3Jv0q1m7cW2m8d0QjA9hQ-_xYzAbCdEfG==";

std::shared_ptr<EncryptionKMS> metadata_kms(const std::string& pass = kms_pass) {
  return make_metadata_kms("secrets-metadata-test", SecretBuffer(pass));
}

using rbdgw::test::error_code;

TEST(MetadataKMS, WrapsInCephCsiFormat) {
  kms_test::LogCapture log;
  std::string wrapped = metadata_kms()->encrypt_dek(volid, SecretBuffer(dek_text));
  // Go's json.Marshal of struct{DEK, Nonce []byte}: compact, this key order.
  EXPECT_TRUE(std::regex_match(wrapped,
                               std::regex(R"(\{"dek":"[A-Za-z0-9+/]+=*","nonce":"[A-Za-z0-9+/]+=*"\})")))
      << wrapped;
  auto doc = nlohmann::json::parse(wrapped);
  EXPECT_EQ(base64::decode(doc["nonce"].get<std::string>()).size(), 12u);
  EXPECT_EQ(base64::decode(doc["dek"].get<std::string>()).size(), dek_text.size() + 16);
  // Another wrap of the same DEK uses another nonce.
  EXPECT_NE(metadata_kms()->encrypt_dek(volid, SecretBuffer(dek_text)), wrapped);
  log.expect_none_of({kms_pass, dek_text});
}

TEST(MetadataKMS, OursUnwrapsWithTheIndependentImplementation) {
  std::string wrapped = metadata_kms()->encrypt_dek(volid, SecretBuffer(dek_text));
  auto r = kms_test::python_unwrap(kms_pass, volid, wrapped);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, dek_text);
  EXPECT_EQ(kms_test::python_unwrap("other-secret", volid, wrapped).status, 1);
}

TEST(MetadataKMS, IndependentlyWrappedDekUnwraps) {
  kms_test::LogCapture log;
  std::string wrapped = kms_test::python_wrap(kms_pass, volid, dek_text);
  ASSERT_FALSE(wrapped.empty());
  EXPECT_EQ(metadata_kms()->decrypt_dek(volid, wrapped).view(), dek_text);
  log.expect_none_of({kms_pass, dek_text});
}

TEST(MetadataKMS, GoJsonVariantsUnwrap) {
  // Field names match case-insensitively in Go, whitespace and escapes are
  // allowed, and Go's base64 skips newlines.
  auto doc = nlohmann::json::parse(kms_test::python_wrap(kms_pass, volid, dek_text));
  std::string dek = doc["dek"], nonce = doc["nonce"];
  std::string variant = "{ \"Nonce\" : \"" + nonce + "\",\n \"DEK\": \"" + dek.substr(0, 8) +
                        "\\n" + dek.substr(8) + "\" }";
  EXPECT_EQ(metadata_kms()->decrypt_dek(volid, variant).view(), dek_text);
}

TEST(MetadataKMS, WrongPassphraseOrVolumeIsAClearError) {
  std::string wrapped = metadata_kms()->encrypt_dek(volid, SecretBuffer(dek_text));
  std::string msg;
  EXPECT_EQ(error_code([&] { metadata_kms("wrong")->decrypt_dek(volid, wrapped); }, &msg), EPERM);
  EXPECT_NE(msg.find("KMS 'secrets-metadata-test'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(volid), std::string::npos) << msg;
  EXPECT_NE(msg.find("wrong passphrase"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("newline"), std::string::npos) << msg;
  // A KMS secret that ends in a newline: the newline counts, and the error
  // says that older rbdgw stripped it from passphrase files (no retry).
  EXPECT_EQ(error_code([&] { metadata_kms(kms_pass + "\n")->decrypt_dek(volid, wrapped); }, &msg),
            EPERM);
  EXPECT_NE(msg.find("ends in a newline"), std::string::npos) << msg;
  // The KEK is salted with the volume ID: another volume's DEK does not open.
  EXPECT_EQ(error_code([&] { metadata_kms()->decrypt_dek(volid + "x", wrapped); }), EPERM);
}

TEST(MetadataKMS, CorruptWrappedDekIsAClearError) {
  auto doc = nlohmann::json::parse(metadata_kms()->encrypt_dek(volid, SecretBuffer(dek_text)));
  std::string dek = doc["dek"], nonce = doc["nonce"];
  auto with = [](const std::string& d, const std::string& n) {
    return nlohmann::json{{"dek", d}, {"nonce", n}}.dump();
  };
  const std::pair<std::string, std::string> cases[] = {
      {"", "not a JSON object"},
      {"not json", "not a JSON object"},
      {"[1,2]", "not a JSON object"},
      {R"({"dek":"AAAA"})", "field \"nonce\" is missing"},
      {R"({"dek":1,"nonce":"AAAA"})", "field \"dek\" is missing or not a string"},
      {with("!!" + dek, nonce), "field \"dek\": illegal base64 data at input byte 0"},
      {with(dek, "AAAA"), "nonce is 3 bytes"},
      {with("AAAA", nonce), "shorter than the AES-GCM tag"},
  };
  for (const auto& [wrapped, expect] : cases) {
    std::string msg;
    EXPECT_EQ(error_code([&] { metadata_kms()->decrypt_dek(volid, wrapped); }, &msg), EBADMSG)
        << wrapped;
    EXPECT_NE(msg.find(expect), std::string::npos) << "'" << expect << "' not in: " << msg;
    EXPECT_NE(msg.find(volid), std::string::npos) << msg;
  }
  // A flipped ciphertext bit cannot be told from a wrong passphrase.
  auto raw = base64::decode(dek);
  raw[0] ^= 1;
  EXPECT_EQ(error_code([&] { metadata_kms()->decrypt_dek(volid, with(base64::encode(raw), nonce)); }),
            EPERM);
}

TEST(DefaultKMS, OnePassphraseForEveryVolume) {
  auto k = make_default_kms("default", SecretBuffer(std::string("shared-secret")));
  EXPECT_EQ(k->encrypt_dek("v1", SecretBuffer(dek_text)), "");
  EXPECT_EQ(k->decrypt_dek("v1", "").view(), "shared-secret");
  EXPECT_EQ(k->decrypt_dek("v2", "anything").view(), "shared-secret");
  DEKStore* s = k->integrated_store();
  ASSERT_NE(s, nullptr);
  s->store_dek("v1", "x");
  EXPECT_EQ(s->fetch_dek("v1"), std::optional<std::string>(""));
  EXPECT_EQ(error_code([] { make_default_kms("default", SecretBuffer()); }), EINVAL);
}

TEST(VolumePassphrase, GeneratedAsCephCsiDoes) {
  // base64.URLEncoding of 20 random bytes: 27 URL-alphabet digits and one '='.
  std::set<std::string> seen;
  for (int i = 0; i < 32; ++i) {
    SecretBuffer p = new_volume_passphrase();
    std::string s(p.view());
    EXPECT_TRUE(std::regex_match(s, std::regex("[A-Za-z0-9_-]{27}="))) << s;
    EXPECT_EQ(base64::decode(s, base64::Alphabet::url).size(), 20u);
    seen.insert(s);
  }
  EXPECT_EQ(seen.size(), 32u);
}

}  // namespace
}  // namespace rbdgw::kms
