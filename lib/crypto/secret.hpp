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
#include <optional>
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

// Passphrases and keys are exact bytes, as `cryptsetup --key-file` reads
// them: a trailing newline, trailing spaces and NUL bytes are part of the
// secret. Nothing here strips anything (see trim_whitespace for the one
// kind of secret where whitespace carries no meaning).

// The largest secret read from a file or a file descriptor: 64 KiB, what a
// pipe holds (lib/attach hands secrets to the gateway through one).
// cryptsetup itself reads key files up to 8 MiB (--keyfile-size); a larger
// file is refused (EFBIG), never cut short.
inline constexpr std::size_t max_secret_size = 64 * 1024;

// Reads a whole file as a secret, byte for byte. Fails with rbdgw::Error
// naming the path if the file is missing, unreadable or larger than
// max_secret_size.
SecretBuffer read_secret_file(const std::string& path);

// Reads fd to its end as a secret, byte for byte (the fd is not closed);
// what names it in errors.
SecretBuffer read_secret_fd(int fd, const std::string& what);

// A secret given as an nbdkit parameter value: "+FILE" (the whole file) or
// "-FD" (file descriptor FD >= 3, read to its end and closed, as nbdkit
// does), exact bytes both. nullopt for "-" alone (typed at a terminal: the
// caller prompts, e.g. with nbdkit_read_password). Anything else is refused
// with EINVAL: a secret is never taken from the command line. key names the
// parameter in errors.
std::optional<SecretBuffer> read_secret_parameter(std::string_view value, std::string_view key);

// s without leading and trailing ASCII whitespace: for a cephx key (base64,
// where whitespace is never part of the key), not for passphrases.
SecretBuffer trim_whitespace(const SecretBuffer& s);

// For a "wrong passphrase" error: when the passphrase ends in a newline, a
// sentence (starting with "; ") saying that the newline counts and that
// rbdgw 0.1.0 and earlier stripped it from passphrase files; "" otherwise.
// Only a hint: nothing ever retries with other bytes.
std::string trailing_newline_hint(const SecretBuffer& passphrase);

}  // namespace rbdgw
