#include "kms/kmip_ttlv.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

#include "common/error.hpp"

namespace rbdgw::kms::kmip {
namespace {

std::string hex(std::uint32_t v, int width) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%0*X", width, v);
  return buf;
}

std::size_t padded(std::size_t n) { return (n + 7) / 8 * 8; }

bool valid_tag(std::uint32_t t) {
  const std::uint32_t hi = t >> 16;
  return hi == 0x42 || hi == 0x54;
}

bool valid_type(std::uint8_t t) { return t >= 0x01 && t <= 0x0A; }

// The exact value length of a fixed-size type, 0 for variable ones.
std::size_t fixed_length(Type t) {
  switch (t) {
    case Type::integer:
    case Type::enumeration:
    case Type::interval:
      return 4;
    case Type::long_integer:
    case Type::boolean:
    case Type::date_time:
      return 8;
    default:
      return 0;
  }
}

void put_be(std::vector<std::uint8_t>& out, std::uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get_be(const std::uint8_t* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | p[i];
  return v;
}

struct Encoder {
  const Limits& limits;
  std::vector<std::uint8_t> out;
  std::size_t count = 0;

  void item(const Item& it, unsigned depth) {
    if (!valid_tag(it.tag)) throw Error(EINVAL, cat("KMIP encode: tag ", hex(it.tag, 6), " is not a KMIP tag"));
    if (it.type == Type::structure && depth >= limits.max_depth)
      throw Error(EINVAL, cat("KMIP encode: structures nested deeper than ", limits.max_depth));
    if (++count > limits.max_items) throw Error(EINVAL, "KMIP encode: too many items");
    put_be(out, it.tag, 3);
    out.push_back(static_cast<std::uint8_t>(it.type));
    const std::size_t len_at = out.size();
    put_be(out, 0, 4);
    std::size_t len = 0;
    switch (it.type) {
      case Type::structure: {
        const std::size_t start = out.size();
        for (const Item& c : it.items) item(c, depth + 1);
        len = out.size() - start;
        break;
      }
      case Type::integer:
      case Type::enumeration:
      case Type::interval:
        put_be(out, static_cast<std::uint32_t>(it.number), 4);
        len = 4;
        break;
      case Type::long_integer:
      case Type::boolean:
      case Type::date_time:
        put_be(out, static_cast<std::uint64_t>(it.number), 8);
        len = 8;
        break;
      case Type::big_integer:
        if (it.bytes.empty() || it.bytes.size() % 8)
          throw Error(EINVAL, cat("KMIP encode: BigInteger ", hex(it.tag, 6), " must be a multiple of 8 bytes"));
        [[fallthrough]];
      case Type::text_string:
      case Type::byte_string:
        out.insert(out.end(), it.bytes.begin(), it.bytes.end());
        len = it.bytes.size();
        break;
      default:
        throw Error(EINVAL, cat("KMIP encode: bad type for tag ", hex(it.tag, 6)));
    }
    if (len > 0xFFFFFFFFu) throw Error(EINVAL, "KMIP encode: item too large");
    for (int i = 0; i < 4; ++i) out[len_at + i] = static_cast<std::uint8_t>(len >> (8 * (3 - i)));
    out.resize(out.size() + (padded(len) - len), 0);
    if (out.size() > limits.max_size)
      throw Error(EINVAL, cat("KMIP encode: message larger than ", limits.max_size, " bytes"));
  }
};

struct Decoder {
  std::span<const std::uint8_t> in;
  const Limits& limits;
  std::size_t count = 0;

  [[noreturn]] void fail(std::size_t at, const std::string& why) const {
    throw Error(EBADMSG, cat("KMIP message: at byte ", at, ": ", why));
  }

  // Decodes the item at `at`, which must end by `end`; returns its end.
  std::size_t item(std::size_t at, std::size_t end, unsigned depth, Item& it) {
    if (end - at < header_size) fail(at, cat("truncated item header (", end - at, " bytes left)"));
    if (++count > limits.max_items) fail(at, cat("more than ", limits.max_items, " items"));
    const std::uint8_t* p = in.data() + at;
    it.tag = static_cast<std::uint32_t>(get_be(p, 3));
    if (!valid_tag(it.tag)) fail(at, cat("tag ", hex(it.tag, 6), " is not a KMIP tag"));
    if (!valid_type(p[3])) fail(at, cat("tag ", hex(it.tag, 6), ": unknown type ", hex(p[3], 2)));
    it.type = static_cast<Type>(p[3]);
    const std::size_t len = get_be(p + 4, 4);
    const std::size_t value_at = at + header_size;
    const std::string what = cat("tag ", hex(it.tag, 6), " (", type_name(it.type), ")");
    if (std::size_t fl = fixed_length(it.type); fl && len != fl)
      fail(at, cat(what, ": length ", len, ", expected ", fl));
    if (len > end - value_at || padded(len) > end - value_at)
      fail(at, cat(what, ": length ", len, " runs past the end (", end - value_at, " bytes left)"));
    const std::uint8_t* v = in.data() + value_at;
    for (std::size_t i = len; i < padded(len); ++i)
      if (v[i] != 0) fail(value_at + i, cat(what, ": padding byte is not zero"));
    switch (it.type) {
      case Type::structure: {
        if (depth >= limits.max_depth) fail(at, cat(what, ": nested deeper than ", limits.max_depth));
        if (len % 8) fail(at, cat(what, ": length ", len, " is not a multiple of 8"));
        std::size_t pos = value_at;
        const std::size_t stop = value_at + len;
        while (pos < stop) {
          it.items.emplace_back();
          pos = item(pos, stop, depth + 1, it.items.back());
        }
        break;
      }
      case Type::integer:
        it.number = static_cast<std::int32_t>(static_cast<std::uint32_t>(get_be(v, 4)));
        break;
      case Type::enumeration:
      case Type::interval:
        it.number = static_cast<std::int64_t>(get_be(v, 4));
        break;
      case Type::long_integer:
      case Type::date_time:
        it.number = static_cast<std::int64_t>(get_be(v, 8));
        break;
      case Type::boolean: {
        const std::uint64_t b = get_be(v, 8);
        if (b > 1) fail(at, cat(what, ": value ", b, " is neither 0 nor 1"));
        it.number = static_cast<std::int64_t>(b);
        break;
      }
      case Type::big_integer:
        if (len == 0 || len % 8) fail(at, cat(what, ": length ", len, " is not a positive multiple of 8"));
        [[fallthrough]];
      case Type::text_string:
      case Type::byte_string:
        it.bytes.assign(v, v + len);
        break;
    }
    return value_at + padded(len);
  }
};

Item make(std::uint32_t tag, Type type, std::int64_t number = 0) {
  Item it;
  it.tag = tag;
  it.type = type;
  it.number = number;
  return it;
}

}  // namespace

const char* type_name(Type t) {
  switch (t) {
    case Type::structure: return "Structure";
    case Type::integer: return "Integer";
    case Type::long_integer: return "Long Integer";
    case Type::big_integer: return "Big Integer";
    case Type::enumeration: return "Enumeration";
    case Type::boolean: return "Boolean";
    case Type::text_string: return "Text String";
    case Type::byte_string: return "Byte String";
    case Type::date_time: return "Date-Time";
    case Type::interval: return "Interval";
  }
  return "unknown type";
}

std::string operation_name(std::uint32_t o) {
  switch (o) {
    case op::discover_versions: return "DiscoverVersions";
    case op::encrypt: return "Encrypt";
    case op::decrypt: return "Decrypt";
    default: return cat("operation ", hex(o, 2));
  }
}

std::string result_status_name(std::uint32_t s) {
  switch (s) {
    case 0: return "Success";
    case 1: return "Operation Failed";
    case 2: return "Operation Pending";
    case 3: return "Operation Undone";
    default: return cat("status ", hex(s, 2));
  }
}

std::string result_reason_name(std::uint32_t r) {
  static const char* const names[] = {
      nullptr, "Item Not Found", "Response Too Large", "Authentication Not Successful",
      "Invalid Message", "Operation Not Supported", "Missing Data", "Invalid Field",
      "Feature Not Supported", "Operation Canceled By Requester", "Cryptographic Failure",
      "Illegal Operation", "Permission Denied", "Object Archived", "Index Out of Bounds",
      "Application Namespace Not Supported", "Key Format Type Not Supported",
      "Key Compression Type Not Supported", "Encoding Option Error", "Key Value Not Present",
      "Attestation Required", "Attestation Failed", "Sensitive", "Not Extractable",
      "Object Already Exists"};
  if (r >= 1 && r < sizeof names / sizeof names[0]) return names[r];
  if (r == 0x100) return "General Failure";
  return cat("reason ", hex(r, 2));
}

Item::~Item() {
  if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
}

const Item* Item::find(std::uint32_t t) const {
  for (const Item& c : items)
    if (c.tag == t) return &c;
  return nullptr;
}

const Item& Item::need(std::uint32_t t, Type ty, std::string_view what) const {
  const Item* c = find(t);
  if (!c) throw Error(EBADMSG, cat(what, ": missing tag ", hex(t, 6)));
  if (c->type != ty)
    throw Error(EBADMSG, cat(what, ": tag ", hex(t, 6), " is a ", type_name(c->type), ", expected ",
                             type_name(ty)));
  return *c;
}

Item structure(std::uint32_t tag, std::vector<Item> items) {
  Item it = make(tag, Type::structure);
  it.items = std::move(items);
  return it;
}
Item integer(std::uint32_t tag, std::int32_t v) { return make(tag, Type::integer, v); }
Item long_integer(std::uint32_t tag, std::int64_t v) { return make(tag, Type::long_integer, v); }
Item enumeration(std::uint32_t tag, std::uint32_t v) { return make(tag, Type::enumeration, v); }
Item boolean(std::uint32_t tag, bool v) { return make(tag, Type::boolean, v ? 1 : 0); }
Item date_time(std::uint32_t tag, std::int64_t s) { return make(tag, Type::date_time, s); }
Item interval(std::uint32_t tag, std::uint32_t s) { return make(tag, Type::interval, s); }
Item text_string(std::uint32_t tag, std::string_view v) {
  Item it = make(tag, Type::text_string);
  it.bytes.assign(v.begin(), v.end());
  return it;
}
Item byte_string(std::uint32_t tag, std::span<const std::uint8_t> v) {
  Item it = make(tag, Type::byte_string);
  it.bytes.assign(v.begin(), v.end());
  return it;
}

// The encoded size of `it` (no checks; the encoder makes them), so that
// encode() allocates once: a vector that grows leaves the bytes written so
// far (a DEK) in the freed block, unwiped.
std::size_t encoded_size(const Item& it, unsigned depth, const Limits& limits) {
  std::size_t len = 0;
  switch (it.type) {
    case Type::structure:
      if (depth < limits.max_depth)
        for (const Item& c : it.items) len += encoded_size(c, depth + 1, limits);
      break;
    case Type::integer:
    case Type::enumeration:
    case Type::interval:
      len = 4;
      break;
    case Type::long_integer:
    case Type::boolean:
    case Type::date_time:
      len = 8;
      break;
    default:
      len = it.bytes.size();
  }
  return header_size + padded(len);
}

std::vector<std::uint8_t> encode(const Item& item, const Limits& limits) {
  Encoder e{limits, {}};
  e.out.reserve(std::min(encoded_size(item, 0, limits), limits.max_size + header_size + 8));
  e.item(item, 0);
  return std::move(e.out);
}

Item decode(std::span<const std::uint8_t> in, const Limits& limits) {
  if (in.size() > limits.max_size)
    throw Error(EBADMSG, cat("KMIP message: ", in.size(), " bytes, more than ", limits.max_size));
  Decoder d{in, limits};
  Item it;
  const std::size_t end = d.item(0, in.size(), 0, it);
  if (end != in.size()) d.fail(end, cat(in.size() - end, " bytes after the message"));
  return it;
}

std::size_t message_size(std::span<const std::uint8_t> h, const Limits& limits) {
  if (h.size() < header_size) throw Error(EBADMSG, "KMIP message: header shorter than 8 bytes");
  const std::uint32_t t = static_cast<std::uint32_t>(get_be(h.data(), 3));
  if (!valid_tag(t)) throw Error(EBADMSG, cat("KMIP message: tag ", hex(t, 6), " is not a KMIP tag"));
  if (h[3] != static_cast<std::uint8_t>(Type::structure))
    throw Error(EBADMSG, cat("KMIP message: tag ", hex(t, 6), " has type ", hex(h[3], 2),
                             ", expected a Structure"));
  const std::size_t len = get_be(h.data() + 4, 4);
  if (len % 8 || len > limits.max_size - header_size)
    throw Error(EBADMSG, cat("KMIP message: length ", len, " is not a multiple of 8 or exceeds ",
                             limits.max_size, " bytes"));
  return header_size + len;
}

}  // namespace rbdgw::kms::kmip
