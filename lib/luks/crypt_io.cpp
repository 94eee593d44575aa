#include "luks/crypt_io.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "common/error.hpp"

namespace rbdgw::luks {
namespace {

constexpr std::size_t kMaxSector = 4096;

// Plaintext zeros for zero(). Never written; not const so that it lives in
// .bss (no space in the binary) and reads map the shared zero page.
alignas(kMaxSector) std::uint8_t zero_chunk[CryptIO::kChunk];

// The calling thread's bounce buffer for encrypted writes (kChunk bytes,
// mapped on the thread's first aligned write, unmapped when it exits).
// Its own mapping, not malloc: a gateway's worker threads come and go with
// their connections, and glibc kept their freed 1 MiB buffers in its
// per-thread arenas (its mmap threshold grows past 1 MiB after the first
// free), so a shared decrypting gateway whose 100 volumes had all been
// busy once held ~5 MiB per volume with no connection left
// (bench/attach/many-volumes.sh --encrypted --map-shared).
class BounceBuffer {
 public:
  BounceBuffer() = default;
  BounceBuffer(const BounceBuffer&) = delete;
  BounceBuffer& operator=(const BounceBuffer&) = delete;
  ~BounceBuffer() {
    if (p_) ::munmap(p_, CryptIO::kChunk);
  }
  std::uint8_t* get() {
    if (!p_) {
      void* p = ::mmap(nullptr, CryptIO::kChunk, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw Error(ENOMEM, "LUKS2 write: no memory for a 1 MiB bounce buffer");
      p_ = p;
    }
    return static_cast<std::uint8_t*>(p_);
  }

 private:
  void* p_ = nullptr;
};

std::uint8_t* bounce_buffer() {
  thread_local BounceBuffer buf;
  return buf.get();
}

}  // namespace

CryptIO::CryptIO(crypto::XtsSectorCipher cipher, std::uint64_t data_offset)
    : cipher_(std::move(cipher)), data_offset_(data_offset), sector_(cipher_.sector_size()) {}

void CryptIO::read_sector(CryptBackend& dev, std::uint64_t sector_off, std::uint8_t* out) const {
  dev.pread({out, sector_}, data_offset_ + sector_off);
  cipher_.decrypt(sector_off, {out, sector_});
}

void CryptIO::read(CryptBackend& dev, std::span<std::uint8_t> buf, std::uint64_t offset) const {
  alignas(16) std::uint8_t sec[kMaxSector];
  if (const std::size_t at = offset % sector_; at != 0 && !buf.empty()) {
    const std::size_t n = std::min<std::size_t>(sector_ - at, buf.size());
    read_sector(dev, offset - at, sec);
    std::memcpy(buf.data(), sec + at, n);
    buf = buf.subspan(n);
    offset += n;
  }
  if (const std::size_t whole = buf.size() - buf.size() % sector_; whole != 0) {
    auto mid = buf.first(whole);
    dev.pread(mid, data_offset_ + offset);
    cipher_.decrypt(offset, mid);
    buf = buf.subspan(whole);
    offset += whole;
  }
  if (!buf.empty()) {
    read_sector(dev, offset, sec);
    std::memcpy(buf.data(), sec, buf.size());
  }
}

void CryptIO::rmw(CryptBackend& dev, std::uint64_t sector_off, std::size_t at,
                  const std::uint8_t* src, std::size_t n, bool fua) {
  alignas(16) std::uint8_t sec[kMaxSector];
  std::lock_guard lock(stripes_[(sector_off / sector_) % kStripes]);
  read_sector(dev, sector_off, sec);
  if (src)
    std::memcpy(sec + at, src, n);
  else
    std::memset(sec + at, 0, n);
  cipher_.encrypt(sector_off, {sec, sector_});
  dev.pwrite({sec, sector_}, data_offset_ + sector_off, fua);
}

void CryptIO::write_impl(CryptBackend& dev, const std::uint8_t* src, std::uint64_t length,
                         std::uint64_t offset, bool fua) {
  auto advance = [&](std::uint64_t n) {
    if (src) src += n;
    length -= n;
    offset += n;
  };
  if (const std::size_t at = offset % sector_; length != 0 && (at != 0 || length < sector_)) {
    const std::size_t n = std::min<std::uint64_t>(sector_ - at, length);
    rmw(dev, offset - at, at, src, n, fua);
    advance(n);
  }
  while (length >= sector_) {
    const std::size_t n = std::min<std::uint64_t>(length - length % sector_, kChunk);
    std::uint8_t* out = bounce_buffer();
    cipher_.encrypt(offset, {src ? src : zero_chunk, n}, {out, n});
    dev.pwrite({out, n}, data_offset_ + offset, fua);
    advance(n);
  }
  if (length != 0) rmw(dev, offset, 0, src, length, fua);
}

void CryptIO::write(CryptBackend& dev, std::span<const std::uint8_t> buf, std::uint64_t offset,
                    bool fua) {
  write_impl(dev, buf.data(), buf.size(), offset, fua);
}

void CryptIO::zero(CryptBackend& dev, std::uint64_t length, std::uint64_t offset, bool fua) {
  write_impl(dev, nullptr, length, offset, fua);
}

}  // namespace rbdgw::luks
