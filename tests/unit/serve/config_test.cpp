// rbdgw serve's configuration parser: what it accepts and how it refuses.
#include <gtest/gtest.h>

#include <string>

#include "common/error.hpp"
#include "serve/config.hpp"

using rbdgw::Error;
using namespace rbdgw::serve;

namespace {

std::string with(const std::string& tls, const std::string& exports, const std::string& extra = "") {
  return R"({ "listen": ["127.0.0.1:10809", "unix:/run/x.sock"], )" + tls + extra +
         R"( "exports": [)" + exports + "] }";
}
const std::string kTls = R"("tls": {"psk_file": "/etc/k.psk"},)";
const std::string kVol = R"({"name": "vol", "image": "rbd/vol", "encryption": "none", "allow": ["psk:alice"]})";

// The message of the Error parse_config throws (EINVAL), or "" if none.
std::string refusal(const std::string& text) {
  try {
    parse_config(text, "cfg");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EINVAL) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ServeConfig, ParsesListenersExportsAndGrants) {
  const Config c = parse_config(
      with(R"("tls": {"psk_file": "/etc/k.psk", "certificates": "/etc/pki"},)",
           kVol + R"(, {"name": "db", "image": "rbd/db", "read_only": true, "encryption": "decrypted",
                       "passphrase_file": "/etc/db.pass", "allow": ["x509:hv2"]})",
           R"("negotiation_timeout": 5, "run_dir": "/run/s",)"),
      "cfg");
  ASSERT_EQ(c.listen.size(), 2u);
  EXPECT_EQ(c.listen[0].host, "127.0.0.1");
  EXPECT_EQ(c.listen[0].port, "10809");
  EXPECT_TRUE(c.listen[1].unix_socket);
  EXPECT_EQ(c.listen[1].path, "/run/x.sock");
  EXPECT_TRUE(c.tls());
  EXPECT_EQ(c.negotiation_timeout, 5);
  EXPECT_EQ(c.run_dir, "/run/s");
  ASSERT_NE(c.find("db"), nullptr);
  EXPECT_TRUE(c.find("db")->read_only);
  EXPECT_EQ(c.find("db")->encryption, Encryption::decrypted);
  EXPECT_TRUE(c.find("db")->allows("x509:hv2"));
  EXPECT_FALSE(c.find("db")->allows("psk:hv2"));  // the kind of identity counts
  EXPECT_FALSE(c.find("vol")->allows("psk:alice2"));
  EXPECT_EQ(c.find("nosuch"), nullptr);
  EXPECT_EQ(parse_config(with(kTls, kVol), "cfg").negotiation_timeout, 30);
}

TEST(ServeConfig, ListenForms) {
  EXPECT_EQ(parse_listen("[::1]:10809").host, "::1");
  EXPECT_EQ(parse_listen(":10809").host, "");
  EXPECT_THROW(parse_listen("unix:relative.sock"), Error);
  EXPECT_THROW(parse_listen("127.0.0.1"), Error);
  EXPECT_THROW(parse_listen("127.0.0.1:http"), Error);
  EXPECT_THROW(parse_listen("[::1]10809"), Error);
}

TEST(ServeConfig, TlsIsRequiredUnlessPlainIsExplicit) {
  EXPECT_NE(refusal(with("", kVol)).find("TLS is required"), std::string::npos);
  const Config plain = parse_config(
      with(R"("insecure_plain": true,)",
           R"({"name": "v", "image": "rbd/v", "encryption": "none", "allow": ["anonymous"]})"),
      "cfg");
  EXPECT_FALSE(plain.tls());
  EXPECT_NE(refusal(with(kTls + R"("insecure_plain": true,)", kVol)).find("exclude each other"),
            std::string::npos);
  // "anonymous" is a grant of plain servers only.
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "encryption": "none", "allow": ["anonymous"]})"))
                .find("only for insecure_plain"),
            std::string::npos);
}

TEST(ServeConfig, EncryptionIsExplicit) {
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "allow": ["psk:a"]})"))
                .find("'encryption' must be given explicitly"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "encryption": "luks", "allow": []})"))
                .find("'encryption' must be given explicitly"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "encryption": "decrypted", "allow": []})"))
                .find("needs 'passphrase_file'"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "encryption": "ciphertext",
                                   "passphrase_file": "/p", "allow": []})"))
                .find("only for encryption 'decrypted'"),
            std::string::npos);
}

TEST(ServeConfig, RefusesBadInputNamingTheKey) {
  EXPECT_NE(refusal("{").find("not valid JSON"), std::string::npos);
  EXPECT_NE(refusal(with(kTls, kVol, R"("typo": 1,)")).find("unknown key 'typo'"), std::string::npos);
  EXPECT_NE(refusal(with(kTls, kVol + "," + kVol)).find("defined twice"), std::string::npos);
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "encryption": "none", "allow": ["alice"]})"))
                .find("identity 'alice'"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "image": "rbd/v", "encryption": "none"})")).find("'allow'"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, R"({"name": "v", "encryption": "none", "allow": []})")).find("'image' is required"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, kVol, R"("negotiation_timeout": -1,)")).find("negotiation_timeout"),
            std::string::npos);
  EXPECT_NE(refusal(with(kTls, kVol, R"("run_dir": "rel",)")).find("absolute"), std::string::npos);
  EXPECT_NE(refusal(with(kTls, "")).find("'exports' must be a non-empty list"), std::string::npos);
  EXPECT_NE(refusal(R"({"exports": []})").find("'listen'"), std::string::npos);
  try {
    load_config("/nonexistent/serve.json");
    ADD_FAILURE() << "load_config of a missing file succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/serve.json"), std::string::npos);
  }
}
