// KMIP's TTLV encoding (OASIS KMIP 1.4, section 9.1): every item is a 3-byte
// tag, a 1-byte type, a 4-byte big-endian length and the value, padded with
// zero bytes to a multiple of 8. A Structure's value is its items in order.
//
// The decoder is strict: the lengths of fixed-size types must be exact
// (Integer/Enumeration/Interval 4, LongInteger/DateTime/Boolean 8), a
// Boolean is 0 or 1, padding bytes are zero, a Structure's items fill it
// exactly, tags are in KMIP's 0x42xxxx or extension 0x54xxxx range, and
// size, depth and item count are bounded (Limits). Any violation is
// Error(EBADMSG) naming the byte offset and the tag. Recursion is bounded
// by max_depth.
//
// Item wipes its byte value on destruction (a DEK travels as a ByteString).
//
// Thread safety: none needed (values and pure functions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rbdgw::kms::kmip {

enum class Type : std::uint8_t {
  structure = 0x01,
  integer = 0x02,
  long_integer = 0x03,
  big_integer = 0x04,
  enumeration = 0x05,
  boolean = 0x06,
  text_string = 0x07,
  byte_string = 0x08,
  date_time = 0x09,
  interval = 0x0A,
};

const char* type_name(Type t);

// The tags, operations and enumeration values rbdgw uses (KMIP 1.4, 9.1.3).
namespace tag {
inline constexpr std::uint32_t batch_count = 0x42000D;
inline constexpr std::uint32_t batch_item = 0x42000F;
inline constexpr std::uint32_t block_cipher_mode = 0x420011;
inline constexpr std::uint32_t cryptographic_algorithm = 0x420028;
inline constexpr std::uint32_t cryptographic_parameters = 0x42002B;
inline constexpr std::uint32_t iv_counter_nonce = 0x42003D;
inline constexpr std::uint32_t operation = 0x42005C;
inline constexpr std::uint32_t padding_method = 0x42005F;
inline constexpr std::uint32_t protocol_version = 0x420069;
inline constexpr std::uint32_t protocol_version_major = 0x42006A;
inline constexpr std::uint32_t protocol_version_minor = 0x42006B;
inline constexpr std::uint32_t request_header = 0x420077;
inline constexpr std::uint32_t request_message = 0x420078;
inline constexpr std::uint32_t request_payload = 0x420079;
inline constexpr std::uint32_t response_header = 0x42007A;
inline constexpr std::uint32_t response_message = 0x42007B;
inline constexpr std::uint32_t response_payload = 0x42007C;
inline constexpr std::uint32_t result_message = 0x42007D;
inline constexpr std::uint32_t result_reason = 0x42007E;
inline constexpr std::uint32_t result_status = 0x42007F;
inline constexpr std::uint32_t time_stamp = 0x420092;
inline constexpr std::uint32_t unique_batch_item_id = 0x420093;
inline constexpr std::uint32_t unique_identifier = 0x420094;
inline constexpr std::uint32_t data = 0x4200C2;
}  // namespace tag

namespace op {
inline constexpr std::uint32_t discover_versions = 0x1E;
inline constexpr std::uint32_t encrypt = 0x1F;
inline constexpr std::uint32_t decrypt = 0x20;
}  // namespace op

inline constexpr std::uint32_t algorithm_aes = 0x03;
inline constexpr std::uint32_t block_cipher_mode_cbc = 0x01;
inline constexpr std::uint32_t padding_pkcs5 = 0x03;
inline constexpr std::uint32_t result_status_success = 0x00;

// "Encrypt", "Decrypt", ..., or "operation 0x.." for others.
std::string operation_name(std::uint32_t op);
// "Item Not Found", ..., or "reason 0x..".
std::string result_reason_name(std::uint32_t reason);
// "Operation Failed", ..., or "status 0x..".
std::string result_status_name(std::uint32_t status);

struct Item {
  std::uint32_t tag = 0;
  Type type = Type::structure;
  std::int64_t number = 0;          // Integer, LongInteger, Enumeration, Boolean, DateTime, Interval
  std::vector<std::uint8_t> bytes;  // TextString, ByteString, BigInteger
  std::vector<Item> items;          // Structure

  Item() = default;
  Item(const Item&) = default;
  Item(Item&&) noexcept = default;
  Item& operator=(const Item&) = default;
  Item& operator=(Item&&) noexcept = default;
  ~Item();

  // The first child with this tag, or nullptr.
  const Item* find(std::uint32_t t) const;
  // The first child with this tag and type; Error(EBADMSG) "<what>: missing
  // <tag>" or "... is a <type>, expected <type>" otherwise.
  const Item& need(std::uint32_t t, Type ty, std::string_view what) const;
  std::string_view text() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
};

Item structure(std::uint32_t tag, std::vector<Item> items);
Item integer(std::uint32_t tag, std::int32_t v);
Item long_integer(std::uint32_t tag, std::int64_t v);
Item enumeration(std::uint32_t tag, std::uint32_t v);
Item boolean(std::uint32_t tag, bool v);
Item text_string(std::uint32_t tag, std::string_view v);
Item byte_string(std::uint32_t tag, std::span<const std::uint8_t> v);
Item date_time(std::uint32_t tag, std::int64_t seconds);
Item interval(std::uint32_t tag, std::uint32_t seconds);

struct Limits {
  std::size_t max_size = 1 << 20;  // bytes of one message, header included
  unsigned max_depth = 16;         // nesting of Structures
  std::size_t max_items = 4096;    // items in one message
};

// The TTLV bytes of item. Throws Error(EINVAL) for a value its type cannot
// hold or a message beyond Limits.
std::vector<std::uint8_t> encode(const Item& item, const Limits& limits = {});

// Exactly one item that fills `in`. Throws Error(EBADMSG).
Item decode(std::span<const std::uint8_t> in, const Limits& limits = {});

inline constexpr std::size_t header_size = 8;
// From the first 8 bytes of a message: its whole size (header + padded
// value). Throws Error(EBADMSG) for a bad tag or type or a size beyond
// limits.max_size.
std::size_t message_size(std::span<const std::uint8_t> header, const Limits& limits = {});

}  // namespace rbdgw::kms::kmip
