// Base64 against RFC 4648 section 10 and the behaviour of Go's
// encoding/base64 StdEncoding/URLEncoding.DecodeString (error offsets as
// Go's CorruptInputError reports them).
#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common/base64.hpp"
#include "common/error.hpp"

namespace rbdgw::base64 {
namespace {

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}
std::string str(const std::vector<std::uint8_t>& v) { return {v.begin(), v.end()}; }

TEST(Base64, Rfc4648Vectors) {
  const std::pair<const char*, const char*> v[] = {
      {"", ""},         {"f", "Zg=="},     {"fo", "Zm8="},         {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (auto [plain, enc] : v) {
    EXPECT_EQ(encode(bytes_of(plain)), enc);
    EXPECT_EQ(encode(bytes_of(plain), Alphabet::url), enc);
    EXPECT_EQ(str(decode(enc)), plain);
    EXPECT_EQ(str(decode(enc, Alphabet::url)), plain);
  }
}

TEST(Base64, AlphabetsDifferInTheLastTwoDigits) {
  const std::vector<std::uint8_t> b{0xfb, 0xff, 0xbf};
  EXPECT_EQ(encode(b), "+/+/");
  EXPECT_EQ(encode(b, Alphabet::url), "-_-_");
  EXPECT_EQ(decode("+/+/"), b);
  EXPECT_EQ(decode("-_-_", Alphabet::url), b);
}

TEST(Base64, EncodeToWritesExactlyEncodedSize) {
  std::string out(encoded_size(20) + 1, '#');
  std::vector<std::uint8_t> in(20, 0xff);
  encode_to(in, out.data(), Alphabet::url);
  EXPECT_EQ(out, std::string(26, '_') + "8=#");  // 20 bytes -> 28 chars, one '='
}

TEST(Base64, DecodeSkipsNewlinesAndAcceptsLooseTrailingBits) {
  EXPECT_EQ(str(decode("Zm9v\nYmFy\r\n")), "foobar");
  EXPECT_EQ(str(decode("Zg=\n=")), "f");
  EXPECT_EQ(str(decode("Zh==")), "f");  // Go's non-strict decoding
}

std::string error_of(std::string_view text, Alphabet a = Alphabet::standard) {
  try {
    decode(text, a, "field 'dek'");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EINVAL);
    return e.what();
  }
  return "no error";
}

TEST(Base64, DecodeErrorsAsGoReportsThem) {
  const std::string p = "field 'dek': illegal base64 data at input byte ";
  EXPECT_EQ(error_of("Zg"), p + "0");              // padding missing
  EXPECT_EQ(error_of("Zg="), p + "3");             // second '=' missing
  EXPECT_EQ(error_of("Z==="), p + "1");            // '=' too early
  EXPECT_EQ(error_of("Zg==Zg=="), p + "4");        // data after padding
  EXPECT_EQ(error_of("Zm9v!"), p + "4");           // not a digit
  EXPECT_EQ(error_of("-_-_"), p + "0");            // URL digits in std input
  EXPECT_EQ(error_of("+/+/", Alphabet::url), p + "0");
}

}  // namespace
}  // namespace rbdgw::base64
