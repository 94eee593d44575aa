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
#include "luks/layout.hpp"

namespace rbdgw::luks {
namespace {

using nlohmann::json;
using detail::CryptPtr;
using detail::json_u64;

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

constexpr std::size_t kCopyChunk = std::size_t{1} << 20;

// Copies extent e of the source into fd at the same offset, kCopyChunk at a
// time; throws "truncated LUKS2 header" where the source ends early.
void copy_range(const Reader& read, int fd, const Extent& e, std::string_view object) {
  std::vector<std::uint8_t> buf(std::min<std::uint64_t>(kCopyChunk, e.size));
  for (std::uint64_t done = 0; done < e.size;) {
    const std::size_t want = std::min<std::uint64_t>(buf.size(), e.size - done);
    std::size_t got = 0;
    while (got < want) {
      const std::size_t r = read(std::span(buf).subspan(got, want - got), e.offset + done + got);
      if (r == 0)
        throw Error(EINVAL, cat(object, ": truncated LUKS2 header: it needs ", e.end(),
                                " bytes but the source ends at ", e.offset + done + got));
      got += r;
    }
    if (std::any_of(buf.begin(), buf.begin() + want, [](std::uint8_t c) { return c != 0; }))
      pwrite_all(fd, buf.data(), want, e.offset + done, object);
    done += want;
  }
}

[[noreturn]] void corrupt(std::string_view object, std::string_view what) {
  throw Error(EINVAL, cat(object, ": corrupt LUKS2 header: ", what));
}

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

  // An in-memory copy: the headers, and the key material of the keyslots
  // (or the whole keyslots area with `full`), in a sparse memfd as large as
  // the data offset, loaded by libcryptsetup. Every size is checked against
  // LUKS2's limits first (inspect_header), so a crafted header costs at most
  // 2 * 4 MiB of headers plus 128 MiB of keyslots area, read in chunks of
  // kCopyChunk; all-zero chunks stay holes.
  static std::unique_ptr<Impl> copy(const Reader& read, std::string_view object, bool full) {
    const HeaderLayout l = inspect_header(read, object);
    auto impl = std::make_unique<Impl>();
    impl->object = object;
    impl->memfd = make_memfd(object);
    const int fd = impl->memfd.fd;
    pwrite_all(fd, l.headers.data(), l.headers.size(), 0, object);
    if (full) {
      const std::uint64_t start = 2 * l.hdr_size, end = l.keyslots_end();
      if (end > start) copy_range(read, fd, {start, end - start}, object);
    } else {
      for (const Extent& e : l.key_material) copy_range(read, fd, e, object);
    }
    check_data_inside(read, l, object);
    if (::ftruncate(fd, static_cast<off_t>(l.data_offset)) != 0)
      throw_errno("ftruncate (header copy)", object, errno);
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

bool Header::keyslot_active(int slot) const {
  const crypt_keyslot_info s = crypt_keyslot_status(impl_->cd.get(), slot);
  return s == CRYPT_SLOT_ACTIVE || s == CRYPT_SLOT_ACTIVE_LAST;
}

Pbkdf Header::keyslot_pbkdf(int slot) const {
  crypt_pbkdf_type t{};
  check(crypt_keyslot_get_pbkdf(impl_->cd.get(), slot, &t), "crypt_keyslot_get_pbkdf",
        cat(impl_->object, " keyslot ", slot));
  Pbkdf p;
  const std::string_view type = t.type ? t.type : "";
  if (type == CRYPT_KDF_PBKDF2) {
    p.type = Pbkdf::Type::pbkdf2;
  } else if (type == CRYPT_KDF_ARGON2ID) {
    p.type = Pbkdf::Type::argon2id;
    p.max_memory_kib = t.max_memory_kb;
    p.parallel_threads = t.parallel_threads;
  } else {
    throw Error(ENOTSUP, cat(impl_->object, ": keyslot ", slot, " uses key derivation '", type,
                             "'; give the new keyslot's explicitly"));
  }
  p.iterations = t.iterations;
  return p;
}

void Header::destroy_keyslot(int slot) {
  if (!keyslot_active(slot))
    throw Error(ENOENT, cat(impl_->object, ": keyslot ", slot, " is not in use"));
  if (keyslot_count() <= 1)
    throw Error(EBUSY, cat(impl_->object, ": keyslot ", slot,
                           " is the last one; removing it would make the data unreadable"));
  check(crypt_keyslot_destroy(impl_->cd.get(), slot), "crypt_keyslot_destroy", impl_->object);
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
