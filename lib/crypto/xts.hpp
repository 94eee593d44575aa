// XtsSectorCipher: aes-xts-plain64 exactly as dm-crypt applies it.
//
// The data segment is cut into units of sector_size bytes; each unit is one
// AES-XTS data unit whose tweak is le64(iv_tweak + byte_offset / 512), zero
// padded to 16 bytes (so 4096-byte sectors use tweaks 0, 8, 16, ...).
// Keys of 32 bytes (AES-128-XTS) or 64 bytes (AES-256-XTS), each two halves.
//
// Thread safety: encrypt() and decrypt() may run concurrently from any number
// of threads on one instance. The instance keeps a small pool of keyed
// OpenSSL contexts (taken once per call, not per sector), all wiped and
// freed with the instance.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "crypto/secret.hpp"

namespace rbdgw::crypto {

class XtsSectorCipher {
 public:
  // A cipher for `key` (32 or 64 bytes, halves not equal), sector_size a
  // power of two in 512..4096, and the segment's iv_tweak (in 512-byte units).
  // Throws Error(EINVAL) naming the bad parameter.
  static XtsSectorCipher create(const SecretBuffer& key, std::uint32_t sector_size,
                                std::uint64_t iv_tweak = 0);

  XtsSectorCipher(XtsSectorCipher&&) noexcept;
  XtsSectorCipher& operator=(XtsSectorCipher&&) noexcept;
  ~XtsSectorCipher();

  // Encrypts/decrypts whole sectors. `offset` is the byte offset of in[0]
  // within the data segment; offset and in.size() must be multiples of
  // sector_size, and out.size() == in.size(). in and out may be the same
  // memory (in place) but must not otherwise overlap. Throws Error(EINVAL)
  // on misaligned arguments and Error(EIO) if OpenSSL fails.
  void encrypt(std::uint64_t offset, std::span<const std::uint8_t> in,
               std::span<std::uint8_t> out) const;
  void decrypt(std::uint64_t offset, std::span<const std::uint8_t> in,
               std::span<std::uint8_t> out) const;
  // In place.
  void encrypt(std::uint64_t offset, std::span<std::uint8_t> data) const {
    encrypt(offset, data, data);
  }
  void decrypt(std::uint64_t offset, std::span<std::uint8_t> data) const {
    decrypt(offset, data, data);
  }

  std::uint32_t sector_size() const noexcept;
  std::size_t key_bytes() const noexcept;

 private:
  struct State;
  explicit XtsSectorCipher(std::unique_ptr<State> s) noexcept;
  void crypt(bool enc, std::uint64_t offset, std::span<const std::uint8_t> in,
             std::span<std::uint8_t> out) const;
  std::unique_ptr<State> s_;
};

}  // namespace rbdgw::crypto
