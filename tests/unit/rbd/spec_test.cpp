#include <gtest/gtest.h>

#include <cerrno>

#include "common/error.hpp"
#include "rbd/spec.hpp"

using rbdgw::Error;
using rbdgw::rbd::ImageSpec;

TEST(ImageSpec, PoolAndImage) {
  const ImageSpec s = ImageSpec::parse("rbd/vol1");
  EXPECT_EQ(s.pool, "rbd");
  EXPECT_EQ(s.ns, "");
  EXPECT_EQ(s.image, "vol1");
  EXPECT_EQ(s.snap, "");
  EXPECT_FALSE(s.is_snapshot());
  EXPECT_EQ(s.str(), "rbd/vol1");
}

TEST(ImageSpec, NamespaceAndSnapshot) {
  const ImageSpec s = ImageSpec::parse("pool/ns1/img@snap-1");
  EXPECT_EQ(s.pool, "pool");
  EXPECT_EQ(s.ns, "ns1");
  EXPECT_EQ(s.image, "img");
  EXPECT_EQ(s.snap, "snap-1");
  EXPECT_TRUE(s.is_snapshot());
  EXPECT_EQ(s.str(), "pool/ns1/img@snap-1");
  EXPECT_EQ(s.image_str(), "pool/ns1/img");
}

TEST(ImageSpec, RoundTripsThroughStr) {
  for (const char* in : {"a/b", "a/b@c", "a/n/b", "a/n/b@c"})
    EXPECT_EQ(ImageSpec::parse(ImageSpec::parse(in).str()), ImageSpec::parse(in)) << in;
}

// Each malformed spec fails with EINVAL and a message quoting the spec and
// naming what is wrong.
TEST(ImageSpec, MalformedSpecsNameTheProblem) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "empty"},
      {"vol1", "no pool given"},
      {"/vol1", "empty pool name"},
      {"rbd/", "empty image name"},
      {"rbd//img", "empty namespace name"},
      {"a/b/c/d", "too many '/'"},
      {"rbd/img@", "empty snapshot name"},
      {"rbd/img@s@t", "invalid character in snapshot name"},
      {"rbd/im\x01g", "invalid character in image name"},
  };
  for (auto [in, why] : cases) {
    try {
      ImageSpec::parse(in);
      ADD_FAILURE() << "accepted '" << in << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), EINVAL) << in;
      const std::string m = e.what();
      EXPECT_NE(m.find(std::string("image spec '") + in + "'"), std::string::npos) << m;
      EXPECT_NE(m.find(why), std::string::npos) << m;
    }
  }
}
