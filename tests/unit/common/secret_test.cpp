#include <gtest/gtest.h>
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

TEST_F(SecretFile, StripsOneTrailingNewlineWhenAsked) {
  auto p = write("pw", "pass\n\n");
  EXPECT_EQ(rbdgw::read_secret_file(p, true).view(), "pass\n");
  EXPECT_EQ(rbdgw::read_secret_file(p, false).view(), "pass\n\n");
}

TEST_F(SecretFile, MissingFileNamesThePath) {
  try {
    rbdgw::read_secret_file(dir_ + "/nope", true);
    FAIL();
  } catch (const rbdgw::Error& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_NE(std::string(e.what()).find(dir_ + "/nope"), std::string::npos);
  }
}

TEST_F(SecretFile, ReadsLargeFiles) {
  std::string big(100000, 'x');
  EXPECT_EQ(rbdgw::read_secret_file(write("big", big), false).size(), big.size());
}
