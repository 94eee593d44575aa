// The KMIP codec leaves no copy of a DEK in freed memory: every heap block
// freed while a request holding a DEK is encoded, or a reply holding one is
// decoded and dropped, is scanned (this program replaces the global sized
// operator delete, which std::vector's allocator calls) for the DEK's bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "kms/kmip_ttlv.hpp"

namespace {
// A 32-byte DEK no other data holds.
constexpr unsigned char kDek[32] = {0xd3, 0x7a, 0x51, 0x9e, 0x02, 0xc4, 0x88, 0x3b, 0x6f, 0xe1, 0x17,
                                    0x90, 0x4d, 0xaa, 0x25, 0x5c, 0xb6, 0x0e, 0x73, 0xf9, 0x31, 0x8d,
                                    0x44, 0xc2, 0x6a, 0x1f, 0xe7, 0x58, 0x93, 0x0b, 0xdd, 0x66};
bool g_watch = false;
int g_leaks = 0;

void scan(const void* p, std::size_t n) {
  if (!g_watch || !p || n < sizeof kDek) return;
  const auto* b = static_cast<const unsigned char*>(p);
  if (std::search(b, b + n, kDek, kDek + sizeof kDek) != b + n) {
    ++g_leaks;
    if (std::getenv("KMIP_WIPE_TRAP")) __builtin_trap();
  }
}
}  // namespace

void* operator new(std::size_t n) {
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t n) noexcept {
  scan(p, n);
  std::free(p);
}

namespace {
using namespace rbdgw::kms::kmip;

Item encrypt_request() {
  const std::vector<std::uint8_t> dek(kDek, kDek + sizeof kDek);
  const std::vector<std::uint8_t> id(16, 0x11), iv(16, 0x22);
  return structure(tag::request_message, {
      structure(tag::request_header, {
          structure(tag::protocol_version, {integer(tag::protocol_version_major, 1),
                                            integer(tag::protocol_version_minor, 4)}),
          integer(tag::batch_count, 1)}),
      structure(tag::batch_item, {
          enumeration(tag::operation, op::encrypt), byte_string(tag::unique_batch_item_id, id),
          structure(tag::request_payload, {
              text_string(tag::unique_identifier, "1234"),
              structure(tag::cryptographic_parameters,
                        {enumeration(tag::block_cipher_mode, block_cipher_mode_cbc),
                         enumeration(tag::padding_method, padding_pkcs5),
                         enumeration(tag::cryptographic_algorithm, algorithm_aes)}),
              byte_string(tag::data, dek), byte_string(tag::iv_counter_nonce, iv)})})});
}

TEST(KmipWipe, EncodingARequestLeavesNoCopyOfItsDekInFreedMemory) {
  Item req = encrypt_request();
  g_leaks = 0;
  g_watch = true;
  std::vector<std::uint8_t> wire = encode(req);
  g_watch = false;
  EXPECT_EQ(g_leaks, 0) << g_leaks << " freed block(s) held the DEK while the request was encoded";
  // The encoded request holds it (the caller wipes it after sending).
  ASSERT_NE(std::search(wire.begin(), wire.end(), kDek, kDek + sizeof kDek), wire.end());
  std::memset(wire.data(), 0, wire.size());
}

TEST(KmipWipe, DecodingAndDroppingAReplyLeavesNoCopyOfItsDek) {
  std::vector<std::uint8_t> wire = encode(encrypt_request());
  g_leaks = 0;
  g_watch = true;
  { Item msg = decode(wire); }
  g_watch = false;
  std::memset(wire.data(), 0, wire.size());
  EXPECT_EQ(g_leaks, 0) << g_leaks << " freed block(s) held the DEK after the decoded message was dropped";
}
}  // namespace
