#include "luks/header.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "luks/cryptsetup.hpp"
#include "luks/probe.hpp"

namespace rbdgw::luks {
namespace {

using nlohmann::json;
using detail::CryptPtr;

constexpr std::uint64_t kBinaryHeaderSize = 4096;
constexpr std::uint64_t kDefaultHeaderArea = 16u << 20;  // LUKS2 default data offset

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd, o.fd);
    return *this;
  }
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Fd make_memfd(std::string_view object) {
  Fd f(::memfd_create("rbdgw-luks2-header", MFD_CLOEXEC));
  if (f.fd < 0) throw_errno("memfd_create", object, errno);
  return f;
}

void pwrite_all(int fd, const std::uint8_t* p, std::size_t n, std::uint64_t off,
                std::string_view object) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_errno("pwrite (header copy)", object, errno);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
    off += static_cast<std::uint64_t>(w);
  }
}

// Reads up to n bytes at off; fewer only where the source ends.
std::vector<std::uint8_t> read_some(const Reader& read, std::uint64_t off, std::size_t n) {
  std::vector<std::uint8_t> buf(n);
  std::size_t got = 0;
  while (got < n) {
    const std::size_t r = read(std::span(buf).subspan(got), off + got);
    if (r == 0) break;
    got += r;
  }
  buf.resize(got);
  return buf;
}

// Reads exactly n bytes at off, or throws "truncated LUKS2 header".
std::vector<std::uint8_t> read_exact(const Reader& read, std::string_view object,
                                     std::uint64_t off, std::size_t n) {
  auto buf = read_some(read, off, n);
  if (buf.size() < n)
    throw Error(EINVAL, cat(object, ": truncated LUKS2 header: it needs ", off + n,
                            " bytes but the source ends at ", off + buf.size()));
  return buf;
}

std::uint64_t be64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

// LUKS2 JSON numbers are decimal strings ("offset": "16777216").
std::optional<std::uint64_t> json_u64(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (!it->is_string()) return std::nullopt;
  const auto& s = it->get_ref<const std::string&>();
  std::uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

[[noreturn]] void corrupt(std::string_view object, std::string_view what) {
  throw Error(EINVAL, cat(object, ": corrupt LUKS2 header: ", what));
}

// What must be copied before libcryptsetup can load a header: the data
// offset (the copy's size) and the end of the keyslot areas to read.
struct Layout {
  std::uint64_t data_offset = 0;
  std::uint64_t used_keyslots_end = 0;  // end of the last used keyslot area
  std::uint64_t keyslots_end = 0;       // end of the whole keyslots area
};

struct Area {
  std::uint64_t offset = 0, size = 0;
  bool contains(std::uint64_t off) const { return off >= offset && off - offset < size; }
};

// The keyslot areas that a header's JSON references.
std::vector<Area> keyslot_areas(const json& j, std::string_view object) {
  std::vector<Area> areas;
  for (const auto& [_, k] : j.at("keyslots").items()) {
    const auto off = json_u64(k.at("area"), "offset");
    const auto size = json_u64(k.at("area"), "size");
    if (!off || !size || *off + *size < *off) corrupt(object, "keyslot area without offset/size");
    areas.push_back({*off, *size});
  }
  return areas;
}

Layout layout_from_json(const json& j, std::uint64_t hdr_size, std::string_view object) {
  Layout l;
  const auto& segs = j.at("segments");
  if (!segs.is_object() || segs.empty()) corrupt(object, "no data segment");
  l.data_offset = UINT64_MAX;
  for (const auto& [_, s] : segs.items()) {
    const auto off = json_u64(s, "offset");
    if (!off) corrupt(object, "segment without offset");
    l.data_offset = std::min(l.data_offset, *off);
  }
  const auto ks_size = json_u64(j.at("config"), "keyslots_size");
  if (!ks_size) corrupt(object, "no config.keyslots_size");
  l.keyslots_end = std::min(l.data_offset, 2 * hdr_size + *ks_size);
  l.used_keyslots_end = 2 * hdr_size;
  for (const Area& a : keyslot_areas(j, object))
    l.used_keyslots_end = std::max(l.used_keyslots_end, a.offset + a.size);
  if (l.data_offset < 2 * hdr_size)
    throw Error(ENOTSUP, cat(object, ": LUKS2 header with the data at offset ", l.data_offset,
                             " (a detached header?) is not supported"));
  if (l.used_keyslots_end > l.data_offset) corrupt(object, "keyslot area beyond the data offset");
  return l;
}

// Parses the JSON area of the primary header, or of the secondary one if
// the primary's does not parse (libcryptsetup checks the checksums later).
Layout read_layout(std::span<const std::uint8_t> headers, std::uint64_t hdr_size,
                   std::string_view object) {
  for (std::uint64_t base : {std::uint64_t{0}, hdr_size}) {
    const auto* b = headers.data() + base + kBinaryHeaderSize;
    const auto* e = headers.data() + base + hdr_size;
    const json j = json::parse(b, std::find(b, e, std::uint8_t{0}), nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    try {
      return layout_from_json(j, hdr_size, object);
    } catch (const json::exception&) {
      continue;
    }
  }
  corrupt(object, "neither JSON area is readable");
}

bool is_power_of_two(std::uint64_t v) { return v && (v & (v - 1)) == 0; }

Segment segment_of(crypt_device* cd, std::string_view object) {
  std::uint32_t req = 0;
  if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_REQUIREMENTS, &req) == 0 && req != 0)
    throw Error(ENOTSUP, cat(object, ": LUKS2 header has requirement flags 0x", std::hex, req,
                             std::dec, " (re-encryption in progress?); not supported"));
  const char* text = nullptr;
  check(crypt_dump_json(cd, &text, 0), "crypt_dump_json", object);
  const json j = json::parse(text, nullptr, false);
  try {
    const auto& segs = j.at("segments");
    if (segs.size() != 1)
      throw Error(ENOTSUP, cat(object, ": LUKS2 header has ", segs.size(),
                               " data segments (re-encryption?); only one is supported"));
    const auto& s = segs.begin().value();
    if (s.at("type") != "crypt")
      throw Error(ENOTSUP, cat(object, ": LUKS2 segment type ", s.at("type").dump(),
                               " is not supported"));
    if (s.contains("integrity"))
      throw Error(ENOTSUP, cat(object, ": LUKS2 with dm-integrity is not supported"));
    Segment seg;
    seg.offset = json_u64(s, "offset").value();
    if (s.at("size") != "dynamic") seg.size = json_u64(s, "size").value();
    seg.iv_tweak = json_u64(s, "iv_tweak").value();
    seg.sector_size = s.at("sector_size").get<std::uint32_t>();
    seg.cipher = s.at("encryption").get<std::string>();
    seg.key_bits = static_cast<std::uint32_t>(crypt_get_volume_key_size(cd)) * 8;
    return seg;
  } catch (const json::exception& e) {
    corrupt(object, cat("segment: ", e.what()));
  } catch (const std::bad_optional_access&) {
    corrupt(object, "segment with a malformed number");
  }
}

}  // namespace

Reader span_reader(std::span<const std::uint8_t> bytes) {
  return [bytes](std::span<std::uint8_t> buf, std::uint64_t off) -> std::size_t {
    if (off >= bytes.size()) return 0;
    const std::size_t n = std::min<std::uint64_t>(buf.size(), bytes.size() - off);
    std::memcpy(buf.data(), bytes.data() + off, n);
    return n;
  };
}

void check_supported(const Segment& s, std::string_view object) {
  if (s.cipher != "aes-xts-plain64")
    throw Error(ENOTSUP, cat(object, ": cipher ", s.cipher,
                             " is not supported; only aes-xts-plain64"));
  if (s.key_bits != 256 && s.key_bits != 512)
    throw Error(ENOTSUP, cat(object, ": ", s.key_bits,
                             "-bit aes-xts-plain64 key is not supported; only 256 or 512"));
  if (s.sector_size < 512 || s.sector_size > 4096 || !is_power_of_two(s.sector_size))
    throw Error(ENOTSUP, cat(object, ": sector size ", s.sector_size, " is not supported"));
}

struct Header::Impl {
  std::string object;  // device path or the name of the copied source
  std::string path;    // what libcryptsetup opened
  Fd memfd;            // in-memory copies only
  CryptPtr cd;

  // An in-memory copy: the headers, and the keyslot areas up to the end of
  // the used ones (or of all of them with `full`), in a sparse memfd as
  // large as the data offset, loaded by libcryptsetup.
  static std::unique_ptr<Impl> copy(const Reader& read, std::string_view object, bool full) {
    const auto first = read_some(read, 0, kBinaryHeaderSize);
    const ProbeResult p = probe(first);
    if (p.content == Content::luks1)
      throw Error(ENOTSUP, cat(object, ": LUKS1 is not supported by the luks2 code; only LUKS2 "
                                       "(convert with `cryptsetup convert --type luks2`)"));
    if (p.content != Content::luks2)
      throw Error(EINVAL, cat(object, ": not a LUKS2 volume (found ", p.signature, ")"));
    if (first.size() < kBinaryHeaderSize) read_exact(read, object, 0, kBinaryHeaderSize);  // throws
    const std::uint64_t hdr_size = be64(first.data() + 8);
    if (!is_power_of_two(hdr_size) || hdr_size < (16u << 10) || hdr_size > (4u << 20))
      corrupt(object, cat("header size ", hdr_size));
    const auto headers = read_exact(read, object, 0, 2 * hdr_size);
    const Layout l = read_layout(headers, hdr_size, object);

    auto impl = std::make_unique<Impl>();
    impl->object = object;
    impl->memfd = make_memfd(object);
    const int fd = impl->memfd.fd;
    if (::ftruncate(fd, static_cast<off_t>(l.data_offset)) != 0)
      throw_errno("ftruncate (header copy)", object, errno);
    pwrite_all(fd, headers.data(), headers.size(), 0, object);
    const std::uint64_t end = full ? l.keyslots_end : l.used_keyslots_end;
    if (end > 2 * hdr_size) {
      const auto ks = read_exact(read, object, 2 * hdr_size, end - 2 * hdr_size);
      pwrite_all(fd, ks.data(), ks.size(), 2 * hdr_size, object);
    }
    impl->path = cat("/proc/self/fd/", fd);
    impl->cd = detail::init_device(impl->path);
    detail::load_luks2(impl->cd.get(), object);
    return impl;
  }

  std::uint64_t header_end() const {
    std::uint64_t md = 0, ks = 0;
    check(crypt_get_metadata_size(cd.get(), &md, &ks), "crypt_get_metadata_size", object);
    return std::min(crypt_get_data_offset(cd.get()) * 512, 2 * md + ks);
  }

  // The keyslot that passphrase opens (without activating anything).
  int find_keyslot(const SecretBuffer& passphrase) const {
    const int r = crypt_activate_by_passphrase(cd.get(), nullptr, CRYPT_ANY_SLOT,
                                               passphrase.chars(), passphrase.size(), 0);
    if (r < 0) detail::throw_passphrase_error(r, "crypt_activate_by_passphrase", object, &passphrase);
    return r;
  }
};

Header::Header(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Header::Header(Header&&) noexcept = default;
Header& Header::operator=(Header&&) noexcept = default;
Header::~Header() = default;

Header Header::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->object = impl->path = path;
  impl->cd = detail::init_device(path);
  detail::load_luks2(impl->cd.get(), path);
  return Header(std::move(impl));
}

Header Header::format(const std::string& path, const SecretBuffer& passphrase,
                      const FormatOptions& opts) {
  {
    Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (f.fd < 0) throw_errno("LuksFormat: open", path, errno);
    const off_t size = ::lseek(f.fd, 0, SEEK_END);  // files and block devices
    if (size < 0) throw_errno("LuksFormat: lseek", path, errno);
    const std::uint64_t need = kDefaultHeaderArea + opts.sector_size;
    if (static_cast<std::uint64_t>(size) < need)
      throw Error(ENOSPC, cat("LuksFormat: ", path, ": ", size,
                              " bytes is too small for LUKS2 (needs at least ", need,
                              ": a 16 MiB header and one sector of data)"));
  }
  auto impl = std::make_unique<Impl>();
  impl->object = impl->path = path;
  impl->cd = detail::init_device(path);
  detail::format(impl->cd.get(), passphrase, opts, path);
  return Header(std::move(impl));
}

Header Header::format_in_memory(const SecretBuffer& passphrase, const FormatOptions& opts) {
  auto impl = std::make_unique<Impl>();
  impl->object = "new LUKS2 header";
  impl->memfd = make_memfd(impl->object);
  if (::ftruncate(impl->memfd.fd, kDefaultHeaderArea) != 0)
    throw_errno("ftruncate (new header)", impl->object, errno);
  impl->path = cat("/proc/self/fd/", impl->memfd.fd);
  impl->cd = detail::init_device(impl->path);
  detail::format(impl->cd.get(), passphrase, opts, impl->object);
  return Header(std::move(impl));
}

Header Header::read(const Reader& read, std::string_view object) {
  return Header(Impl::copy(read, object, true));
}

Segment Header::segment() const { return segment_of(impl_->cd.get(), impl_->object); }

Unlocked Header::unlock(const SecretBuffer& passphrase) const {
  Unlocked u;
  u.segment = segment();
  check_supported(u.segment, impl_->object);
  u.volume_key = SecretBuffer(u.segment.key_bits / 8);
  std::size_t size = u.volume_key.size();
  const int r = crypt_volume_key_get(impl_->cd.get(), CRYPT_ANY_SLOT,
                                     reinterpret_cast<char*>(u.volume_key.data()), &size,
                                     passphrase.chars(), passphrase.size());
  if (r < 0) detail::throw_passphrase_error(r, "crypt_volume_key_get", impl_->object, &passphrase);
  if (size != u.volume_key.size())
    throw Error(EIO, cat(impl_->object, ": crypt_volume_key_get returned ", size * 8,
                         " bits, the header says ", u.segment.key_bits));
  u.keyslot = r;
  return u;
}

int Header::add_passphrase(const SecretBuffer& existing, const SecretBuffer& new_passphrase,
                           const Pbkdf& pbkdf) {
  if (new_passphrase.empty()) throw Error(EINVAL, cat(impl_->object, ": empty new passphrase"));
  detail::set_pbkdf(impl_->cd.get(), pbkdf, impl_->object);
  const int r = crypt_keyslot_add_by_passphrase(impl_->cd.get(), CRYPT_ANY_SLOT, existing.chars(),
                                                existing.size(), new_passphrase.chars(),
                                                new_passphrase.size());
  if (r < 0) detail::throw_passphrase_error(r, "crypt_keyslot_add_by_passphrase", impl_->object);
  return r;
}

int Header::change_passphrase(const SecretBuffer& old_passphrase,
                              const SecretBuffer& new_passphrase, const Pbkdf& pbkdf) {
  if (new_passphrase.empty()) throw Error(EINVAL, cat(impl_->object, ": empty new passphrase"));
  detail::set_pbkdf(impl_->cd.get(), pbkdf, impl_->object);
  const int r = crypt_keyslot_change_by_passphrase(
      impl_->cd.get(), CRYPT_ANY_SLOT, CRYPT_ANY_SLOT, old_passphrase.chars(),
      old_passphrase.size(), new_passphrase.chars(), new_passphrase.size());
  if (r < 0)
    detail::throw_passphrase_error(r, "crypt_keyslot_change_by_passphrase", impl_->object);
  return r;
}

void Header::remove_passphrase(const SecretBuffer& passphrase) {
  const int slot = impl_->find_keyslot(passphrase);
  if (keyslot_count() <= 1)
    throw Error(EBUSY, cat(impl_->object, ": keyslot ", slot,
                           " is the last one; removing it would make the data unreadable"));
  check(crypt_keyslot_destroy(impl_->cd.get(), slot), "crypt_keyslot_destroy", impl_->object);
}

int Header::keyslot_count() const {
  int n = 0;
  for (int i = 0; i < crypt_keyslot_max(CRYPT_LUKS2); ++i) {
    const crypt_keyslot_info s = crypt_keyslot_status(impl_->cd.get(), i);
    if (s == CRYPT_SLOT_ACTIVE || s == CRYPT_SLOT_ACTIVE_LAST) ++n;
  }
  return n;
}

std::vector<std::uint8_t> Header::bytes() const {
  const std::uint64_t n = impl_->header_end();
  Fd f(::open(impl_->path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) throw_errno("open (header bytes)", impl_->object, errno);
  std::vector<std::uint8_t> out(n);
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(f.fd, out.data() + got, n - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("pread (header bytes)", impl_->object, errno);
    if (r == 0) throw Error(EIO, cat(impl_->object, ": header area shorter than ", n, " bytes"));
    got += static_cast<std::size_t>(r);
  }
  return out;
}

void Header::write_back(std::span<const std::uint8_t> before, const Writer& write) const {
  const auto now = bytes();
  if (before.size() != now.size())
    throw Error(EINVAL, cat(impl_->object, ": write_back: the old header area has ",
                            before.size(), " bytes, the new one ", now.size()));
  std::uint64_t md = 0, ks = 0;
  check(crypt_get_metadata_size(impl_->cd.get(), &md, &ks), "crypt_get_metadata_size",
        impl_->object);
  const char* text = nullptr;
  check(crypt_dump_json(impl_->cd.get(), &text, 0), "crypt_dump_json", impl_->object);
  std::vector<Area> in_use;
  try {
    in_use = keyslot_areas(json::parse(text), impl_->object);
  } catch (const json::exception& e) {
    corrupt(impl_->object, e.what());
  }
  // Changed 4 KiB blocks of the keyslots area, merged into runs: those in
  // areas the new header uses are written before the headers, the others
  // (keyslots wiped for the old header) after them.
  std::vector<Area> before_headers, after_headers;
  constexpr std::uint64_t kBlock = 4096;
  for (std::uint64_t off = 2 * md; off < now.size(); off += kBlock) {
    const std::uint64_t n = std::min<std::uint64_t>(kBlock, now.size() - off);
    if (std::memcmp(before.data() + off, now.data() + off, n) == 0) continue;
    const bool used = std::any_of(in_use.begin(), in_use.end(),
                                  [&](const Area& a) { return a.contains(off); });
    auto& runs = used ? before_headers : after_headers;
    if (!runs.empty() && runs.back().offset + runs.back().size == off)
      runs.back().size += n;
    else
      runs.push_back({off, n});
  }
  const auto emit = [&](const Area& a) {
    write(std::span(now).subspan(a.offset, a.size), a.offset);
  };
  for (const Area& a : before_headers) emit(a);
  if (std::memcmp(before.data(), now.data(), 2 * md) != 0) emit({0, 2 * md});
  for (const Area& a : after_headers) emit(a);
}

const std::string& Header::object() const { return impl_->object; }

Unlocked unlock(const Reader& read, std::string_view object, const SecretBuffer& passphrase) {
  return Header(Header::Impl::copy(read, object, false)).unlock(passphrase);
}

}  // namespace rbdgw::luks
