// KMSConfig: the ceph-csi-encryption-kms-config JSON, good and bad.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "common/error.hpp"
#include "kms/config.hpp"
#include "kms_test_util.hpp"

namespace rbdgw::kms {
namespace {

const Secrets secrets{{"encryptionPassphrase", "sc-secret-passphrase"}};

// Expects build() or parse() to throw Error(code) whose message contains
// every one of `parts`.
template <typename F>
void expect_error(F&& f, int code, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "'" << p << "' not in: " << e.what();
  }
}

TEST(KMSConfig, BuildsEachTypeOfAGoodConfig) {
  auto c = KMSConfig::parse(R"({
      "secrets-metadata-test": {"encryptionKMSType": "metadata"},
      "legacy-provider": {"KMS_PROVIDER": "metadata"},
      "as-string": "{\"encryptionKMSType\": \"metadata\"}",
      "shared": {"encryptionKMSType": "default"},
      "vault-test": {"encryptionKMSType": "vault", "vaultAddress": "http://vault:8200"}
    })", "test config");
  EXPECT_EQ(c.ids(), (std::vector<std::string>{"as-string", "legacy-provider",
                                               "secrets-metadata-test", "shared", "vault-test"}));
  for (const char* id : {"secrets-metadata-test", "legacy-provider", "as-string"}) {
    auto k = c.build(id, secrets);
    EXPECT_EQ(k->id(), id);
    EXPECT_EQ(k->requires_dek_store(), DEKStoreType::metadata);
    EXPECT_EQ(k->integrated_store(), nullptr);
  }
  auto shared = c.build("shared", secrets);
  EXPECT_EQ(shared->requires_dek_store(), DEKStoreType::integrated);
  EXPECT_NE(shared->integrated_store(), nullptr);
}

TEST(KMSConfig, EmptyOrDefaultIdIsTheDefaultKMS) {
  KMSConfig c;
  for (const char* id : {"", "default"}) {
    auto k = c.build(id, secrets);
    EXPECT_EQ(k->id(), "default");
    EXPECT_EQ(k->requires_dek_store(), DEKStoreType::integrated);
    EXPECT_EQ(k->decrypt_dek("vol", "").view(), "sc-secret-passphrase");
  }
}

TEST(KMSConfig, MalformedJson) {
  expect_error([] { KMSConfig::parse(R"({"a": {"encryptionKMSType": )", "cm/config.json"); },
               EINVAL, {"cm/config.json", "not valid JSON"});
  expect_error([] { KMSConfig::parse(R"(["metadata"])", "cm/config.json"); }, EINVAL,
               {"cm/config.json", "JSON object keyed by KMS ID"});
}

TEST(KMSConfig, MalformedEntries) {
  auto c = KMSConfig::parse(R"({
      "not-object": 42,
      "bad-string": "{nope",
      "no-type": {"secretName": "x"},
      "type-not-string": {"encryptionKMSType": 7},
      "file-not-string": {"encryptionKMSType": "metadata", "passphraseFile": ["a"]}
    })", "test config");
  expect_error([&] { c.build("not-object", secrets); }, EINVAL, {"KMS 'not-object'", "object"});
  expect_error([&] { c.build("bad-string", secrets); }, EINVAL, {"KMS 'bad-string'", "not JSON"});
  expect_error([&] { c.build("no-type", secrets); }, EINVAL,
               {"KMS 'no-type'", "missing key 'encryptionKMSType'"});
  expect_error([&] { c.build("type-not-string", secrets); }, EINVAL,
               {"KMS 'type-not-string'", "key 'encryptionKMSType' must be a string"});
  expect_error([&] { c.build("file-not-string", secrets); }, EINVAL,
               {"KMS 'file-not-string'", "key 'passphraseFile' must be a string"});
}

TEST(KMSConfig, ValidateChecksEveryEntryWithoutReadingSecrets) {
  // Good: no secret needed, and a passphraseFile is not read yet.
  KMSConfig::parse(R"({
      "m": {"encryptionKMSType": "metadata", "passphraseFile": "/nonexistent/secret"},
      "d": "{\"KMS_PROVIDER\": \"default\"}"
    })", "cfg").validate();
  KMSConfig().validate();
  // Each kind of bad entry, next to a good one, fails naming its ID and key.
  const auto bad = [](const std::string& entry) {
    return [text = R"({"good": {"encryptionKMSType": "metadata"}, )" + entry + "}"] {
      KMSConfig::parse(text, "cfg").validate();
    };
  };
  expect_error(bad(R"("x": 42)"), EINVAL, {"KMS 'x'", "object"});
  expect_error(bad(R"("x": {"encryptionKMSTyp": "metadata"})"), EINVAL,
               {"KMS 'x'", "missing key 'encryptionKMSType'"});
  expect_error(bad(R"("x": {"encryptionKMSType": "vault"})"), EINVAL,
               {"KMS 'x'", "unsupported KMS type 'vault'"});
  expect_error(bad(R"("x": {"encryptionKMSType": "metadata", "secretName": 1})"), EINVAL,
               {"KMS 'x'", "key 'secretName' must be a string"});
}

TEST(KMSConfig, UnknownType) {
  auto c = KMSConfig::parse(R"({"vault-test": {"encryptionKMSType": "vault"}})", "cfg");
  expect_error([&] { c.build("vault-test", secrets); }, EINVAL,
               {"KMS 'vault-test'", "key 'encryptionKMSType'", "unsupported KMS type 'vault'"});
}

TEST(KMSConfig, UnknownKmsId) {
  auto c = KMSConfig::parse(R"({"a": {"encryptionKMSType": "metadata"}})", "cfg");
  expect_error([&] { c.build("no-such-kms", secrets); }, ENOENT,
               {"KMS 'no-such-kms'", "not in cfg", "known: a"});
}

TEST(KMSConfig, MissingSecret) {
  auto c = KMSConfig::parse(R"({
      "m": {"encryptionKMSType": "metadata"},
      "k8s": {"encryptionKMSType": "metadata", "secretName": "s", "secretNamespace": "ns"},
      "nofile": {"encryptionKMSType": "metadata", "passphraseFile": "/nonexistent/rbdgw-kms"}
    })", "cfg");
  expect_error([&] { c.build("m", {}); }, EINVAL, {"KMS 'm'", "missing secret 'encryptionPassphrase'"});
  expect_error([&] { c.build("", {}); }, EINVAL,
               {"KMS 'default'", "missing secret 'encryptionPassphrase'"});
  expect_error([&] { c.build("k8s", {}); }, EINVAL,
               {"KMS 'k8s'", "key 'secretName'", "ns/s", "no Kubernetes API", "passphraseFile"});
  expect_error([&] { c.build("nofile", secrets); }, ENOENT,
               {"KMS 'nofile'", "key 'passphraseFile'", "/nonexistent/rbdgw-kms"});
  expect_error([&] { c.build("m", {{"encryptionPassphrase", ""}}); }, EINVAL,
               {"KMS 'm'", "empty"});
}

TEST(KMSConfig, SecretNameWithSecretsInTheRequestWorks) {
  auto c = KMSConfig::parse(
      R"({"k8s": {"encryptionKMSType": "metadata", "secretName": "s"}})", "cfg");
  EXPECT_EQ(c.build("k8s", secrets)->requires_dek_store(), DEKStoreType::metadata);
}

TEST(KMSConfig, PassphraseFileWinsOverTheRequest) {
  kms_test::TempDir dir;
  std::string file = dir.write("pass", "file-passphrase\n");
  auto c = KMSConfig::parse(
      nlohmann::json{{"shared", {{"encryptionKMSType", "default"}, {"passphraseFile", file}}}}.dump(),
      "cfg");
  // Byte for byte, its trailing newline included (as cryptsetup --key-file).
  EXPECT_EQ(c.build("shared", secrets)->decrypt_dek("v", "").view(), "file-passphrase\n");
  EXPECT_EQ(c.build("shared", {})->decrypt_dek("v", "").view(), "file-passphrase\n");
}

TEST(KMSConfig, LoadNamesTheFile) {
  expect_error([] { KMSConfig::load("/nonexistent/config.json"); }, ENOENT,
               {"/nonexistent/config.json"});
  kms_test::TempDir dir;
  auto c = KMSConfig::load(dir.write("config.json", R"({"x": {"encryptionKMSType": "metadata"}})"));
  EXPECT_EQ(c.ids(), std::vector<std::string>{"x"});
}

}  // namespace
}  // namespace rbdgw::kms
