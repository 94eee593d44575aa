// LUKS2 headers through libcryptsetup, on a device/file or on an in-memory
// copy (a memfd), so that one implementation of the format serves the
// kernel path (a block device) and the userspace path (an RBD image or an
// NBD export read through a Reader).
//
//   unlock(reader, object, passphrase)   -> volume key + data segment, for
//                                           the luks2 filter (reads only the
//                                           headers and the used keyslots)
//   Header::format_in_memory(...)        -> header bytes to write at offset 0
//                                           of a blank volume
//   Header::read(reader, object)         -> editable copy: add/change/remove
//                                           passphrases, then write_back() the
//                                           changes (data untouched)
//   Header::open(path)                   -> the same on a device or file
//
// Only LUKS2 with aes-xts-plain64 and no integrity is unlocked; LUKS1,
// other content, truncated or corrupt headers and unsupported ciphers fail
// with an rbdgw::Error naming the object and the cause. No passphrase or
// key is ever logged; libcryptsetup's messages go to rbdgw::log.
//
// Thread safety: a Header is used by one thread at a time; distinct Headers
// and the free functions may be used concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/secret.hpp"

namespace rbdgw::luks {

// Reads up to buf.size() bytes at `offset` of the source into buf and
// returns how many it read: fewer only at the end of the source. Throws
// rbdgw::Error on I/O errors.
using Reader = std::function<std::size_t(std::span<std::uint8_t> buf, std::uint64_t offset)>;

// Writes buf at `offset` of the volume; throws rbdgw::Error on failure.
using Writer = std::function<void(std::span<const std::uint8_t> buf, std::uint64_t offset)>;

// A Reader over bytes in memory (which must outlive the reader).
Reader span_reader(std::span<const std::uint8_t> bytes);

// The data segment of a LUKS2 volume, as dm-crypt maps it.
struct Segment {
  std::uint64_t offset = 0;           // bytes from the start of the volume
  std::optional<std::uint64_t> size;  // bytes; nullopt: "dynamic" (to the end)
  std::uint32_t sector_size = 0;      // encryption sector, 512..4096
  std::uint64_t iv_tweak = 0;         // added to the sector number, 512-byte units
  std::string cipher;                 // e.g. "aes-xts-plain64"
  std::uint32_t key_bits = 0;         // volume key size
};

struct Unlocked {
  SecretBuffer volume_key;
  Segment segment;
  int keyslot = -1;  // the keyslot the passphrase opened
};

// Key derivation for new keyslots.
struct Pbkdf {
  enum class Type { argon2id, pbkdf2 };
  Type type = Type::argon2id;
  // argon2id memory bound in KiB (parallel formats must not exhaust a
  // node's memory); ignored for pbkdf2.
  std::uint32_t max_memory_kib = 256 * 1024;
  // 0: benchmark to reach time_ms. Non-zero: exactly this many iterations
  // (pbkdf2 with e.g. 1000 for tests; argon2id needs at least 4).
  std::uint32_t iterations = 0;
  std::uint32_t time_ms = 2000;
  std::uint32_t parallel_threads = 0;  // 0: libcryptsetup's default (argon2id)
};

struct FormatOptions {
  std::uint32_t sector_size = 4096;
  std::uint32_t key_bits = 512;  // 256 (AES-128-XTS) or 512 (AES-256-XTS)
  Pbkdf pbkdf;
  std::string label;  // optional
  std::string uuid;   // optional; libcryptsetup makes one when empty
};

// Unlocks the LUKS2 volume that `read` reads: checks the passphrase and
// returns the volume key with the data segment. Reads the binary headers,
// the JSON areas and the key material of the keyslots only, each size
// checked against LUKS2's own limits before anything is allocated
// (luks/layout.hpp), so a crafted header costs a few MiB. `object` names
// the source in errors ("rbd/vol1"). Errors: EPERM "wrong passphrase (no
// keyslot matched)", ENOTSUP for LUKS1, a re-encryption in progress,
// unsupported ciphers or integrity, EINVAL for non-LUKS content, truncated,
// corrupt or out-of-limit headers and a data offset past the source's end.
Unlocked unlock(const Reader& read, std::string_view object, const SecretBuffer& passphrase);

// Throws Error(ENOTSUP) naming object unless s is aes-xts-plain64 with a
// 256/512-bit key and a 512..4096 power-of-two sector size.
void check_supported(const Segment& s, std::string_view object);

class Header {
 public:
  // Loads the LUKS2 header of a block device or file in place (changes
  // write to the device).
  static Header open(const std::string& path);
  // Formats `path` (a block device or file of at least 16 MiB + one sector,
  // else ENOSPC) as LUKS2 with a first keyslot for passphrase. Overwrites
  // whatever is there: the caller checks that it is blank (probe()).
  static Header format(const std::string& path, const SecretBuffer& passphrase,
                       const FormatOptions& opts);
  // Makes a new LUKS2 header in memory, with a random volume key and one
  // keyslot for passphrase; bytes() gives what to write at offset 0.
  static Header format_in_memory(const SecretBuffer& passphrase, const FormatOptions& opts);
  // An editable in-memory copy of the whole header area (headers and all
  // keyslot areas, at most 8 MiB + 128 MiB, checked as for unlock()) that
  // `read` reads.
  static Header read(const Reader& read, std::string_view object);

  Header(Header&&) noexcept;
  Header& operator=(Header&&) noexcept;
  ~Header();

  // The data segment.
  Segment segment() const;
  // Checks the passphrase; returns the volume key and segment (EPERM for a
  // wrong passphrase, ENOTSUP for unsupported ciphers).
  Unlocked unlock(const SecretBuffer& passphrase) const;

  // Adds a keyslot for new_passphrase, authorised by `existing`; returns
  // its number. EPERM if `existing` matches no keyslot.
  int add_passphrase(const SecretBuffer& existing, const SecretBuffer& new_passphrase,
                     const Pbkdf& pbkdf = {});
  // Replaces the keyslot that `old_passphrase` opens with one for
  // new_passphrase; the old passphrase no longer opens the volume.
  int change_passphrase(const SecretBuffer& old_passphrase, const SecretBuffer& new_passphrase,
                        const Pbkdf& pbkdf = {});
  // Destroys the keyslot that `passphrase` opens. Refuses (EBUSY, nothing
  // changed) when it is the last keyslot, which would lose the data.
  void remove_passphrase(const SecretBuffer& passphrase);
  // Number of active keyslots.
  int keyslot_count() const;
  // Whether keyslot `slot` holds a key.
  bool keyslot_active(int slot) const;
  // The key derivation of keyslot `slot` (type and its fixed cost), to give
  // a new keyslot the same.
  Pbkdf keyslot_pbkdf(int slot) const;
  // Destroys keyslot `slot` (its key material wiped). Refuses (EBUSY,
  // nothing changed) when it is the last keyslot; an inactive slot is
  // ENOENT.
  void destroy_keyslot(int slot);

  // The header area, [0, data offset): for in-memory headers what to write
  // back to the volume; for devices a copy read from it.
  std::vector<std::uint8_t> bytes() const;

  // Writes what changed since `before` (bytes() of the volume as it is now
  // on disk, i.e. before this Header's changes) in a crash-safe order: new
  // keyslot material first, then both binary+JSON headers, then keyslot
  // areas the new header no longer uses. Stopped at any point, the volume
  // opens with the old passphrases or the new ones. (change_passphrase
  // moves the key to a free keyslot; only when all keyslots are in use does
  // it rewrite one in place, which no write order makes crash-safe.)
  void write_back(std::span<const std::uint8_t> before, const Writer& write) const;

  // The device path, or the object name for in-memory copies.
  const std::string& object() const;

 private:
  struct Impl;
  friend Unlocked unlock(const Reader&, std::string_view, const SecretBuffer&);
  explicit Header(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rbdgw::luks
