// SecretBuffer: memory for passphrases, keys and DEKs.
//
// mlocked (best effort: a failing mlock is not an error), wiped with
// OPENSSL_cleanse before it is freed, movable but not copyable. Use it for
// every secret the project handles; never copy its bytes into a std::string
// that outlives the call.
//
// Thread safety: like a std::vector (no internal locking).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace rbdgw {

class SecretBuffer {
 public:
  SecretBuffer() noexcept = default;
  // n zero bytes.
  explicit SecretBuffer(std::size_t n);
  // A copy of [data, data + n).
  SecretBuffer(const void* data, std::size_t n);
  explicit SecretBuffer(std::string_view s) : SecretBuffer(s.data(), s.size()) {}
  ~SecretBuffer();

  SecretBuffer(SecretBuffer&& o) noexcept;
  SecretBuffer& operator=(SecretBuffer&& o) noexcept;
  SecretBuffer(const SecretBuffer&) = delete;
  SecretBuffer& operator=(const SecretBuffer&) = delete;

  // An explicit copy (the only way to duplicate a secret).
  SecretBuffer clone() const { return SecretBuffer(data_, size_); }

  std::uint8_t* data() noexcept { return data_; }
  const std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::span<const std::uint8_t> bytes() const noexcept { return {data_, size_}; }
  std::span<std::uint8_t> bytes() noexcept { return {data_, size_}; }
  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(data_), size_};
  }
  const char* chars() const noexcept { return reinterpret_cast<const char*>(data_); }

  // Constant-time comparison.
  bool equals(const SecretBuffer& o) const noexcept;

  // Wipes and frees now.
  void clear() noexcept;

 private:
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// Wipes a std::string in place (for secrets that arrived as strings, e.g. a
// protobuf map entry) and clears it.
void wipe_string(std::string& s) noexcept;

// Reads a whole file as a secret. Fails with rbdgw::Error naming the path if
// the file is missing or unreadable. With strip_newline, one trailing "\n"
// (or "\r\n") is removed, as people write passphrase files with an editor.
SecretBuffer read_secret_file(const std::string& path, bool strip_newline);

}  // namespace rbdgw
