// The KMIP TTLV codec: the encoding examples of the KMIP 1.4 specification
// (section 9.1.2) both ways, a whole request, and malformed input refused
// with EBADMSG (never a crash, a hang or a huge allocation).
#include <gtest/gtest.h>

#include <cerrno>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "kms/kmip_ttlv.hpp"

namespace rbdgw::kms::kmip {
namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes hex(const std::string& s) {
  Bytes out;
  std::string digits;
  for (char c : s)
    if (std::isxdigit(static_cast<unsigned char>(c))) digits += c;
  for (std::size_t i = 0; i + 1 < digits.size(); i += 2)
    out.push_back(static_cast<std::uint8_t>(std::stoul(digits.substr(i, 2), nullptr, 16)));
  return out;
}

void expect_bad(const Bytes& in, const std::string& part) {
  try {
    decode(in);
    ADD_FAILURE() << "decoded: expected an error with '" << part << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EBADMSG) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// KMIP 1.4 section 9.1.2, tag 0x420020.
TEST(KmipTtlv, SpecExamplesEncodeAndDecode) {
  struct Case {
    Item item;
    const char* bytes;
  } cases[] = {
      {integer(0x420020, 8), "42 00 20 02 00 00 00 04 00 00 00 08 00 00 00 00"},
      {long_integer(0x420020, 123456789000000000LL), "42 00 20 03 00 00 00 08 01 B6 9B 4B A5 74 92 00"},
      {enumeration(0x420020, 255), "42 00 20 05 00 00 00 04 00 00 00 FF 00 00 00 00"},
      {boolean(0x420020, true), "42 00 20 06 00 00 00 08 00 00 00 00 00 00 00 01"},
      {text_string(0x420020, "Hello World"),
       "42 00 20 07 00 00 00 0B 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00"},
      {byte_string(0x420020, Bytes{1, 2, 3}), "42 00 20 08 00 00 00 03 01 02 03 00 00 00 00 00"},
      {date_time(0x420020, 0x47DA67F8), "42 00 20 09 00 00 00 08 00 00 00 00 47 DA 67 F8"},
      {interval(0x420020, 864000), "42 00 20 0A 00 00 00 04 00 0D 2F 00 00 00 00 00"},
      {structure(0x420020, {enumeration(0x420004, 254), integer(0x420005, 255)}),
       "42 00 20 01 00 00 00 20 42 00 04 05 00 00 00 04 00 00 00 FE 00 00 00 00"
       "42 00 05 02 00 00 00 04 00 00 00 FF 00 00 00 00"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(encode(c.item), hex(c.bytes)) << c.bytes;
    Item d = decode(hex(c.bytes));
    EXPECT_EQ(d.tag, c.item.tag);
    EXPECT_EQ(d.type, c.item.type);
    EXPECT_EQ(d.number, c.item.number);
    EXPECT_EQ(d.bytes, c.item.bytes);
    EXPECT_EQ(d.items.size(), c.item.items.size());
    EXPECT_EQ(encode(d), hex(c.bytes));
  }
  Item big = decode(hex("42 00 20 04 00 00 00 10 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00"));
  EXPECT_EQ(big.type, Type::big_integer);
  EXPECT_EQ(big.bytes.size(), 16u);
  // Negative Integer: sign-extended.
  EXPECT_EQ(decode(hex("42 00 20 02 00 00 00 04 FF FF FF FE 00 00 00 00")).number, -2);
}

TEST(KmipTtlv, NestedRequestRoundTripsAndMessageSizeReadsTheHeader) {
  Item req = structure(tag::request_message,
                       {structure(tag::request_header,
                                  {structure(tag::protocol_version,
                                             {integer(tag::protocol_version_major, 1),
                                              integer(tag::protocol_version_minor, 4)}),
                                   integer(tag::batch_count, 1)}),
                        structure(tag::batch_item,
                                  {enumeration(tag::operation, op::encrypt),
                                   structure(tag::request_payload,
                                             {text_string(tag::unique_identifier, "1"),
                                              byte_string(tag::data, Bytes(33, 0xAB))})})});
  Bytes b = encode(req);
  EXPECT_EQ(b.size() % 8, 0u);
  EXPECT_EQ(message_size(b), b.size());
  Item d = decode(b);
  const Item& payload = d.need(tag::batch_item, Type::structure, "t")
                            .need(tag::request_payload, Type::structure, "t");
  EXPECT_EQ(payload.need(tag::unique_identifier, Type::text_string, "t").text(), "1");
  EXPECT_EQ(payload.need(tag::data, Type::byte_string, "t").bytes, Bytes(33, 0xAB));
  EXPECT_EQ(encode(d), b);
  try {
    payload.need(tag::data, Type::text_string, "reply");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EBADMSG);
    EXPECT_NE(std::string(e.what()).find("Byte String, expected Text String"), std::string::npos);
  }
}

TEST(KmipTtlv, RefusesMalformedInput) {
  expect_bad({}, "truncated item header");
  expect_bad(hex("42 00 20 02 00 00 00"), "truncated item header");
  expect_bad(hex("43 00 20 02 00 00 00 04 00 00 00 08 00 00 00 00"), "not a KMIP tag");
  expect_bad(hex("42 00 20 0B 00 00 00 04 00 00 00 08 00 00 00 00"), "unknown type");
  expect_bad(hex("42 00 20 00 00 00 00 04 00 00 00 08 00 00 00 00"), "unknown type");
  // Fixed lengths are exact.
  expect_bad(hex("42 00 20 02 00 00 00 08 00 00 00 08 00 00 00 00"), "expected 4");
  expect_bad(hex("42 00 20 03 00 00 00 04 00 00 00 08 00 00 00 00"), "expected 8");
  expect_bad(hex("42 00 20 06 00 00 00 08 00 00 00 00 00 00 00 02"), "neither 0 nor 1");
  // Padding must be zero and present.
  expect_bad(hex("42 00 20 02 00 00 00 04 00 00 00 08 00 00 00 01"), "padding byte is not zero");
  expect_bad(hex("42 00 20 08 00 00 00 03 01 02 03 00 00 00 00 09"), "padding byte is not zero");
  expect_bad(hex("42 00 20 08 00 00 00 03 01 02 03"), "runs past the end");
  // Lengths that run past the buffer or the enclosing structure.
  expect_bad(hex("42 00 20 07 FF FF FF F8 48 65"), "runs past the end");
  expect_bad(hex("42 00 20 01 00 00 00 18 42 00 04 02 00 00 00 04 00 00 00 01 00 00 00 00"),
             "runs past the end");
  expect_bad(hex("42 00 20 01 00 00 00 08 42 00 04 02 00 00 00 04 00 00 00 01 00 00 00 00"),
             "runs past the end");
  expect_bad(hex("42 00 20 01 00 00 00 04 00 00 00 00 00 00 00 00"), "not a multiple of 8");
  // A Big Integer is whole 8-byte words.
  expect_bad(hex("42 00 20 04 00 00 00 04 00 00 00 01 00 00 00 00"), "multiple of 8");
  // Trailing bytes after the one message.
  expect_bad(hex("42 00 20 02 00 00 00 04 00 00 00 08 00 00 00 00 00"), "after the message");
}

TEST(KmipTtlv, BoundsDepthItemsAndSize) {
  // 40 nested structures: refused by depth, iteratively checked.
  Bytes deep;
  const int n = 40;
  for (int i = 0; i < n; ++i) {
    const std::uint32_t len = static_cast<std::uint32_t>((n - 1 - i) * 8);
    Bytes h = {0x42, 0x00, 0x20, 0x01, static_cast<std::uint8_t>(len >> 24),
               static_cast<std::uint8_t>(len >> 16), static_cast<std::uint8_t>(len >> 8),
               static_cast<std::uint8_t>(len)};
    deep.insert(deep.end(), h.begin(), h.end());
  }
  expect_bad(deep, "nested deeper than 16");

  Item flat = structure(0x420020, {});
  for (int i = 0; i < 5000; ++i) flat.items.push_back(integer(0x420021, i));
  Limits big_enough;
  big_enough.max_items = 10000;
  Bytes many = encode(flat, big_enough);
  expect_bad(many, "more than 4096 items");
  EXPECT_EQ(decode(many, big_enough).items.size(), 5000u);

  Limits small;
  small.max_size = 64;
  EXPECT_THROW(message_size(hex("42 00 7B 01 00 01 00 00"), small), Error);
  EXPECT_THROW(message_size(hex("42 00 7B 01 00 00 00 0C")), Error);   // not whole words
  EXPECT_THROW(message_size(hex("42 00 7B 07 00 00 00 08")), Error);   // not a structure
  EXPECT_THROW(message_size(hex("00 00 00 01 00 00 00 08")), Error);   // not a KMIP tag
  EXPECT_THROW(message_size(hex("42 00 7B 01 00 00")), Error);         // short header
  EXPECT_EQ(message_size(hex("42 00 7B 01 00 00 00 18")), 32u);

  Item too_deep = integer(0x420020, 1);
  for (int i = 0; i < 20; ++i) too_deep = structure(0x420020, {too_deep});
  EXPECT_THROW(encode(too_deep), Error);
  EXPECT_THROW(encode(integer(0x110000, 1)), Error);  // not a KMIP tag
}

// Messages PyKMIP's own encoder wrote (tests/fuzz/kmip-ttlv/make-seeds.py):
// an independent implementation's bytes decode to the expected fields and
// encode back byte for byte.
TEST(KmipTtlv, DecodesWhatPyKmipEncodes) {
  auto load = [](const char* name) {
    std::ifstream in(std::string(KMIP_SEEDS_DIR) + "/" + name, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
  };
  Bytes req = load("encrypt-request");
  ASSERT_FALSE(req.empty());
  Item r = decode(req);
  EXPECT_EQ(encode(r), req);
  EXPECT_EQ(r.tag, tag::request_message);
  const Item& bi = r.need(tag::batch_item, Type::structure, "t");
  EXPECT_EQ(bi.need(tag::operation, Type::enumeration, "t").number, op::encrypt);
  const Item& p = bi.need(tag::request_payload, Type::structure, "t");
  EXPECT_EQ(p.need(tag::unique_identifier, Type::text_string, "t").text(), "1");
  const Item& cp = p.need(tag::cryptographic_parameters, Type::structure, "t");
  EXPECT_EQ(cp.need(tag::block_cipher_mode, Type::enumeration, "t").number, block_cipher_mode_cbc);
  EXPECT_EQ(cp.need(tag::padding_method, Type::enumeration, "t").number, padding_pkcs5);
  EXPECT_EQ(cp.need(tag::cryptographic_algorithm, Type::enumeration, "t").number, algorithm_aes);
  EXPECT_EQ(p.need(tag::iv_counter_nonce, Type::byte_string, "t").bytes, Bytes(16, 1));
  // rbdgw's own Cryptographic Parameters encode as PyKMIP's.
  EXPECT_EQ(encode(structure(tag::cryptographic_parameters,
                             {enumeration(tag::block_cipher_mode, block_cipher_mode_cbc),
                              enumeration(tag::padding_method, padding_pkcs5),
                              enumeration(tag::cryptographic_algorithm, algorithm_aes)})),
            encode(cp));

  Bytes fail = load("failure-response");
  Item f = decode(fail);
  EXPECT_EQ(encode(f), fail);
  const Item& fb = f.need(tag::batch_item, Type::structure, "t");
  EXPECT_EQ(fb.need(tag::result_status, Type::enumeration, "t").number, 1);
  EXPECT_EQ(result_reason_name(fb.need(tag::result_reason, Type::enumeration, "t").number),
            "Item Not Found");
  EXPECT_EQ(fb.need(tag::result_message, Type::text_string, "t").text(), "Could not locate object: 9");

  Bytes disc = load("discover-response");
  Item d = decode(disc);
  EXPECT_EQ(message_size(disc), disc.size());
  const Item& pv = d.need(tag::batch_item, Type::structure, "t")
                       .need(tag::response_payload, Type::structure, "t")
                       .need(tag::protocol_version, Type::structure, "t");
  EXPECT_EQ(pv.need(tag::protocol_version_minor, Type::integer, "t").number, 4);
}

}  // namespace
}  // namespace rbdgw::kms::kmip
