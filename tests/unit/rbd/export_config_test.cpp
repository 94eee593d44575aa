#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "common/error.hpp"
#include "rbd/export_config.hpp"

using rbdgw::Error;
using rbdgw::SecretBuffer;
using rbdgw::rbd::EncryptionFormat;
using rbdgw::rbd::ExportConfig;

namespace {

// Expects f to throw Error(EINVAL) whose message contains every fragment.
template <typename F>
void expect_einval(F f, std::initializer_list<const char*> fragments) {
  try {
    f();
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EINVAL);
    for (const char* s : fragments)
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what() << " lacks " << s;
  }
}

}  // namespace

TEST(ExportConfig, AllPlainParameters) {
  ExportConfig c;
  c.set("image", "pool/ns/img@s");
  c.set("conf", "/etc/ceph/x.conf");
  c.set("id", "client.csi");
  c.set("keyring", "/k");
  c.set("mon_host", "127.0.0.1:6789");
  c.set("timeout", "7");
  c.set("ceph.rbd_cache", "false");
  c.set("encryption-format", "luks1");
  c.set_secret("encryption-passphrase", SecretBuffer(std::string_view("pw")));
  ASSERT_TRUE(c.spec);
  EXPECT_EQ(c.spec->str(), "pool/ns/img@s");
  EXPECT_EQ(c.cluster.conf_file, "/etc/ceph/x.conf");
  EXPECT_EQ(c.cluster.id, "csi");  // "client." is stripped
  EXPECT_EQ(c.cluster.keyring, "/k");
  EXPECT_EQ(c.cluster.mon_host, "127.0.0.1:6789");
  EXPECT_EQ(c.cluster.connect_timeout.count(), 7);
  ASSERT_EQ(c.cluster.config.size(), 1u);
  EXPECT_EQ(c.cluster.config[0].first, "rbd_cache");
  EXPECT_EQ(c.cluster.config[0].second, "false");
  EXPECT_EQ(c.encryption, EncryptionFormat::luks1);
  EXPECT_EQ(c.passphrase.view(), "pw");
  EXPECT_NO_THROW(c.validate());
}

TEST(ExportConfig, SecretKeysAreRecognised) {
  EXPECT_TRUE(ExportConfig::is_secret_key("key"));
  EXPECT_TRUE(ExportConfig::is_secret_key("encryption-passphrase"));
  EXPECT_FALSE(ExportConfig::is_secret_key("keyring"));
  ExportConfig c;
  c.set_secret("key", SecretBuffer(std::string_view("AQB...==")));
  EXPECT_EQ(c.cluster.key.view(), "AQB...==");
}

TEST(ExportConfig, UnknownParameterIsNamed) {
  ExportConfig c;
  expect_einval([&] { c.set("foo", "1"); }, {"unknown parameter 'foo'"});
  expect_einval([&] { c.set("ceph.", "1"); }, {"unknown parameter 'ceph.'"});
}

TEST(ExportConfig, SecretAsPlainValueIsRefused) {
  ExportConfig c;
  expect_einval([&] { c.set("key", "AQB"); }, {"'key'", "secret"});
  expect_einval([&] { c.set("encryption-passphrase", "pw"); }, {"'encryption-passphrase'", "secret"});
  expect_einval([&] { c.set("ceph.key", "AQB"); }, {"'ceph.key'", "secret"});
  expect_einval([&] { c.set_secret("conf", SecretBuffer(std::string_view("x"))); },
                {"'conf' is not a secret"});
  EXPECT_TRUE(c.cluster.key.empty());
  EXPECT_TRUE(c.cluster.config.empty());
}

TEST(ExportConfig, MalformedValuesChangeNothing) {
  ExportConfig c;
  expect_einval([&] { c.set("image", "noslash"); }, {"image spec 'noslash'", "no pool"});
  EXPECT_FALSE(c.spec);
  expect_einval([&] { c.set("timeout", "0"); }, {"'timeout'", "'0'"});
  expect_einval([&] { c.set("timeout", "5s"); }, {"'timeout'", "'5s'"});
  EXPECT_EQ(c.cluster.connect_timeout.count(), 30);
  expect_einval([&] { c.set("encryption-format", "luks3"); }, {"'luks3'", "luks1 or luks2"});
  EXPECT_FALSE(c.encryption);
  expect_einval([&] { c.set("conf", ""); }, {"'conf'", "empty"});
  expect_einval([&] { c.set_secret("key", SecretBuffer()); }, {"'key'", "empty"});
}

TEST(ExportConfig, RepeatedParameterIsRefused) {
  ExportConfig c;
  c.set("image", "rbd/a");
  c.set("conf", "/a");
  expect_einval([&] { c.set("image", "rbd/b"); }, {"'image'", "more than once"});
  expect_einval([&] { c.set("conf", "/b"); }, {"'conf'", "more than once"});
  EXPECT_EQ(c.spec->str(), "rbd/a");
  EXPECT_EQ(c.cluster.conf_file, "/a");
}

TEST(ExportConfig, CrossParameterRules) {
  expect_einval([] { ExportConfig().validate(); }, {"no image given"});
  {
    ExportConfig c;
    c.set("image", "rbd/a");
    c.set("keyring", "/k");
    c.set_secret("key", SecretBuffer(std::string_view("AQB")));
    expect_einval([&] { c.validate(); }, {"'keyring'", "'key'"});
  }
  {
    ExportConfig c;
    c.set("image", "rbd/a");
    c.set("encryption-format", "luks2");
    expect_einval([&] { c.validate(); }, {"'encryption-format' needs 'encryption-passphrase'"});
  }
  {
    ExportConfig c;
    c.set("image", "rbd/a");
    c.set_secret("encryption-passphrase", SecretBuffer(std::string_view("pw")));
    expect_einval([&] { c.validate(); }, {"'encryption-passphrase' needs 'encryption-format'"});
  }
}

namespace {

TEST(ExportConfig, ExclusiveAndNode) {
  ExportConfig c;
  c.set("image", "rbd/img");
  EXPECT_FALSE(c.exclusive);
  c.set("exclusive", "true");
  c.set("node", "worker-1");
  EXPECT_TRUE(c.exclusive);
  EXPECT_EQ(c.node, "worker-1");
  c.validate();
  expect_einval([&] { c.set("exclusive", "true"); }, {"exclusive", "more than once"});
  expect_einval([&] { c.set("node", "w2"); }, {"node", "more than once"});
  ExportConfig d;
  expect_einval([&] { d.set("exclusive", "yes"); }, {"exclusive", "true or false"});
}

TEST(ExportConfig, ExclusiveRules) {
  ExportConfig snap;
  snap.set("image", "rbd/img@s1");
  snap.set("exclusive", "true");
  expect_einval([&] { snap.validate(); }, {"exclusive", "snapshot"});
  ExportConfig node_only;
  node_only.set("image", "rbd/img");
  node_only.set("node", "worker-1");
  expect_einval([&] { node_only.validate(); }, {"node", "exclusive=true"});
}

}  // namespace
