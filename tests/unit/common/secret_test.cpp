#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "common/error.hpp"
#include "crypto/secret.hpp"

using rbdgw::SecretBuffer;

TEST(SecretBuffer, CopiesAndComparesInConstantTime) {
  SecretBuffer a(std::string_view("hunter2"));
  SecretBuffer b = a.clone();
  EXPECT_TRUE(a.equals(b));
  EXPECT_EQ(a.view(), "hunter2");
  SecretBuffer c(std::string_view("hunter3"));
  EXPECT_FALSE(a.equals(c));
}

TEST(SecretBuffer, MoveLeavesSourceEmpty) {
  SecretBuffer a(std::string_view("k"));
  SecretBuffer b = std::move(a);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(b.view(), "k");
}

TEST(SecretBuffer, ClearEmpties) {
  SecretBuffer a(32);
  a.clear();
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.data(), nullptr);
}

TEST(SecretBuffer, WipeStringClearsContent) {
  std::string s = "secret";
  rbdgw::wipe_string(s);
  EXPECT_TRUE(s.empty());
}

class SecretFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rbdgw-secret-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::string write(const std::string& name, const std::string& content) {
    std::string p = dir_ + "/" + name;
    std::ofstream(p) << content;
    return p;
  }
  std::string dir_;
};

// Exact bytes, as cryptsetup --key-file reads them.
TEST_F(SecretFile, KeepsEveryByteNewlinesSpacesAndNuls) {
  const std::string content("pass\0word  \r\n\n", 15);
  auto p = write("pw", content);
  EXPECT_EQ(rbdgw::read_secret_file(p).view(), content);
}

TEST_F(SecretFile, MissingFileNamesThePath) {
  try {
    rbdgw::read_secret_file(dir_ + "/nope");
    FAIL();
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_NE(std::string(e.what()).find(dir_ + "/nope"), std::string::npos);
  }
}

TEST_F(SecretFile, ReadsUpToTheLimitAndRefusesMoreWhole) {
  std::string max(rbdgw::max_secret_size, 'x');
  EXPECT_EQ(rbdgw::read_secret_file(write("max", max)).size(), max.size());
  try {
    rbdgw::read_secret_file(write("big", max + "y"));
    FAIL() << "a secret one byte over the limit was accepted";
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), EFBIG);
    EXPECT_NE(std::string(e.what()).find(dir_ + "/big"), std::string::npos) << e.what();
  }
}

TEST_F(SecretFile, ParameterPlusFileIsTheWholeFile) {
  const std::string content("a\nb\n", 4);
  auto s = rbdgw::read_secret_parameter("+" + write("pw", content), "passphrase");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->view(), content);
}

TEST(SecretParameter, MinusFdReadsThePipeToItsEndAndClosesIt) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const std::string content("one\ntwo\0three\n", 14);
  ASSERT_EQ(::write(p[1], content.data(), content.size()), static_cast<ssize_t>(content.size()));
  ::close(p[1]);
  auto s = rbdgw::read_secret_parameter("-" + std::to_string(p[0]), "passphrase");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->view(), content);
  EXPECT_EQ(::fcntl(p[0], F_GETFD), -1) << "fd left open";
}

TEST(SecretParameter, MinusAloneIsLeftToTheTerminalPrompt) {
  EXPECT_FALSE(rbdgw::read_secret_parameter("-", "passphrase"));
}

TEST(SecretParameter, RefusesLiteralsStdioAndBadFds) {
  for (const char* v : {"literal-secret", "-0", "-1", "-2", "-x3", "-3x", "+", ""}) {
    try {
      rbdgw::read_secret_parameter(v, "passphrase");
      FAIL() << "accepted '" << v << "'";
    } catch (const rbdgw::Error& e) {
      EXPECT_EQ(e.code(), EINVAL) << v;
      EXPECT_NE(std::string(e.what()).find("'passphrase'"), std::string::npos) << e.what();
    }
  }
  try {
    rbdgw::read_secret_parameter("-987", "key");
    FAIL() << "accepted a closed fd";
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), EBADF);
    EXPECT_NE(std::string(e.what()).find("fd 987 is not open"), std::string::npos) << e.what();
  }
}

TEST(SecretBuffer, TrimWhitespaceForBase64Keys) {
  SecretBuffer s(std::string_view(" \tAQBkey==\r\n"));
  EXPECT_EQ(rbdgw::trim_whitespace(s).view(), "AQBkey==");
  EXPECT_TRUE(rbdgw::trim_whitespace(SecretBuffer(std::string_view(" \n"))).empty());
}

TEST(SecretBuffer, NewlineHintOnlyForAPassphraseEndingInANewline) {
  EXPECT_EQ(rbdgw::trailing_newline_hint(SecretBuffer(std::string_view("pw"))), "");
  EXPECT_EQ(rbdgw::trailing_newline_hint(SecretBuffer(std::string_view("pw\n "))), "");
  EXPECT_EQ(rbdgw::trailing_newline_hint(SecretBuffer()), "");
  const std::string h = rbdgw::trailing_newline_hint(SecretBuffer(std::string_view("pw\n")));
  EXPECT_NE(h.find("ends in a newline"), std::string::npos) << h;
  EXPECT_NE(h.find("0.1.0"), std::string::npos) << h;
}
