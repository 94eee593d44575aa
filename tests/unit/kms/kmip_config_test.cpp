// The "kmip" entries of the KMS config: ceph-csi's keys, and each bad
// entry or missing credential refused with a message naming the KMS ID and
// the key, before any connection is made.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "common/error.hpp"
#include "kms/config.hpp"

namespace rbdgw::kms {
namespace {

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

TEST(KmipConfig, ValidatesCephCsiKeys) {
  auto c = KMSConfig::parse(R"({
      "kmip-test": {"KMS_PROVIDER": "kmip", "KMIP_ENDPOINT": "kmip:5696",
                    "KMIP_SECRET_NAME": "ceph-csi-kmip-credentials",
                    "TLS_SERVER_NAME": "kmip.ciphertrustmanager.local",
                    "READ_TIMEOUT": 10, "WRITE_TIMEOUT": 10}
    })", "test");
  EXPECT_NO_THROW(c.validate());

  auto bad = [](const std::string& body) {
    return [body] { KMSConfig::parse(R"({"k": )" + body + "}", "test").validate(); };
  };
  expect_error(bad(R"({"encryptionKMSType": "kmip"})"), EINVAL, {"KMS 'k'", "KMIP_ENDPOINT"});
  expect_error(bad(R"({"encryptionKMSType": "kmip", "KMIP_ENDPOINT": 5696})"), EINVAL,
               {"KMS 'k'", "KMIP_ENDPOINT", "must be a string"});
  expect_error(bad(R"({"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "h:1", "READ_TIMEOUT": "10"})"),
               EINVAL, {"KMS 'k'", "READ_TIMEOUT", "number"});
  expect_error(bad(R"({"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "h:1", "WRITE_TIMEOUT": 0})"),
               EINVAL, {"KMS 'k'", "WRITE_TIMEOUT", "out of range"});
  expect_error(bad(R"({"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "h:1", "TLS_SERVER_NAME": []})"),
               EINVAL, {"KMS 'k'", "TLS_SERVER_NAME"});
}

TEST(KmipConfig, BuildNamesTheMissingCredentialAndBadEndpoint) {
  auto c = KMSConfig::parse(R"({
      "kmip-1": {"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "127.0.0.1:5696"},
      "kmip-2": {"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "no-port",
                 "secretsDir": "/nonexistent/rbdgw-kmip"}
    })", "test");
  expect_error([&] { c.build("kmip-1", {}); }, EINVAL,
               {"KMS 'kmip-1'", "missing credential 'CA_CERT'", "ceph-csi-kmip-credentials"});
  expect_error([&] { c.build("kmip-1", {{"CA_CERT", "x"}, {"CLIENT_CERT", "x"}}); }, EINVAL,
               {"KMS 'kmip-1'", "'CLIENT_KEY'"});
  expect_error(
      [&] {
        c.build("kmip-1",
                {{"CA_CERT", "not pem"}, {"CLIENT_CERT", "x"}, {"CLIENT_KEY", "x"}, {"UNIQUE_IDENTIFIER", "1"}});
      },
      EINVAL, {"KMS 'kmip-1'", "'CA_CERT' holds no PEM certificate"});
  expect_error(
      [&] {
        c.build("kmip-2",
                {{"CA_CERT", "x"}, {"CLIENT_CERT", "x"}, {"CLIENT_KEY", "x"}, {"UNIQUE_IDENTIFIER", "1"}});
      },
      EINVAL, {"KMS 'kmip-2'", "KMIP_ENDPOINT 'no-port'", "HOST:PORT"});
  expect_error([&] { c.build("kmip-2", {}); }, EINVAL,
               {"KMS 'kmip-2'", "/nonexistent/rbdgw-kmip/CA_CERT"});
}

}  // namespace
}  // namespace rbdgw::kms
