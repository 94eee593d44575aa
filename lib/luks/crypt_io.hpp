// CryptIO: plaintext I/O of any alignment on a dm-crypt style encrypted data
// segment (aes-xts-plain64), expressed as whole-sector ciphertext I/O on the
// device below. The glue of the nbdkit luks2 filter, kept apart from nbdkit
// so that unit tests reach it.
//
// - Aligned parts of a request go straight through: reads land in the
//   caller's buffer and are decrypted in place; writes are encrypted into a
//   per-thread bounce buffer of at most kChunk bytes, so a large write is
//   cut into chunks of kChunk. Nothing is allocated per sector.
// - A partial sector is read, decrypted, patched, encrypted and written back
//   (read-modify-write) under one of kStripes mutexes chosen by the sector
//   number, so two RMWs of the same sector never lose each other's bytes
//   while RMWs of other sectors and all aligned I/O take no lock. An aligned
//   write racing an RMW of the same sector is an overlapping write, whose
//   outcome NBD leaves unspecified.
// - Zeroing writes encrypted zeros: never a hole or a zeroed range below,
//   since zero ciphertext does not decrypt to zero plaintext.
//
// Thread safety: read(), write() and zero() may run concurrently from any
// number of threads on one instance (and so across NBD connections that
// share it), each with its own CryptBackend.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>

#include "crypto/xts.hpp"

namespace rbdgw::luks {

// Ciphertext I/O on the device below; offsets are absolute on that device
// (the data segment starts at CryptIO::data_offset()). Implementations
// report failures by throwing rbdgw::Error.
class CryptBackend {
 public:
  virtual void pread(std::span<std::uint8_t> buf, std::uint64_t offset) = 0;
  virtual void pwrite(std::span<const std::uint8_t> buf, std::uint64_t offset, bool fua) = 0;

 protected:
  ~CryptBackend() = default;
};

class CryptIO {
 public:
  static constexpr std::size_t kChunk = std::size_t{1} << 20;  // bounce buffer per thread
  static constexpr std::size_t kStripes = 64;                 // RMW lock stripes

  // Serves the segment that starts data_offset bytes into the device below,
  // with `cipher` (which carries the sector size and iv_tweak).
  CryptIO(crypto::XtsSectorCipher cipher, std::uint64_t data_offset);
  CryptIO(const CryptIO&) = delete;
  CryptIO& operator=(const CryptIO&) = delete;

  // Reads plaintext [offset, offset + buf.size()) of the segment. Bounds are
  // the caller's business (nbdkit checks them against get_size).
  void read(CryptBackend& dev, std::span<std::uint8_t> buf, std::uint64_t offset) const;
  // Writes plaintext at `offset`; fua is passed to every write below.
  void write(CryptBackend& dev, std::span<const std::uint8_t> buf, std::uint64_t offset,
             bool fua);
  // Writes `length` bytes of plaintext zeros at `offset` (as encrypted data).
  void zero(CryptBackend& dev, std::uint64_t length, std::uint64_t offset, bool fua);

  std::uint32_t sector_size() const noexcept { return sector_; }
  std::uint64_t data_offset() const noexcept { return data_offset_; }

 private:
  // src == nullptr: zeros.
  void write_impl(CryptBackend& dev, const std::uint8_t* src, std::uint64_t length,
                  std::uint64_t offset, bool fua);
  // Read-modify-write of the sector at sector_off (segment offset): n bytes
  // at byte `at` within it come from src (zeros when src is null).
  void rmw(CryptBackend& dev, std::uint64_t sector_off, std::size_t at, const std::uint8_t* src,
           std::size_t n, bool fua);
  // Reads and decrypts the sector at sector_off into out (sector_ bytes).
  void read_sector(CryptBackend& dev, std::uint64_t sector_off, std::uint8_t* out) const;

  crypto::XtsSectorCipher cipher_;
  std::uint64_t data_offset_;
  std::uint32_t sector_;
  std::array<std::mutex, kStripes> stripes_;
};

}  // namespace rbdgw::luks
