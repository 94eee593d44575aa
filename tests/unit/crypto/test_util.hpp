// Helpers shared by the crypto and luks unit tests: a private temp dir,
// whole-file I/O, random bytes and running CLI tools. Commands only ever
// carry file paths; secrets go through 0600 files in the 0700 temp dir.
//
// Thread safety: for use from the test's main thread.
#pragma once

#include <openssl/rand.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace rbdgw::test {

// A 0700 directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/rbdgw-test-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::vector<std::uint8_t> random_bytes(std::size_t n) {
  std::vector<std::uint8_t> v(n);
  if (n && RAND_bytes(v.data(), static_cast<int>(n)) != 1) throw std::runtime_error("RAND_bytes");
  return v;
}

inline std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Writes the file with mode 0600 (created before any byte is written).
inline void write_file(const std::string& path, const void* data, std::size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot write " + path);
  ::chmod(path.c_str(), 0600);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) throw std::runtime_error("short write to " + path);
}
inline void write_file(const std::string& path, const std::vector<std::uint8_t>& v) {
  write_file(path, v.data(), v.size());
}
inline void write_file(const std::string& path, const std::string& s) {
  write_file(path, s.data(), s.size());
}

// Runs a shell command (paths only, never a secret); returns its exit status.
inline int run(const std::string& cmd) {
  const int st = std::system(("(" + cmd + ") >/dev/null 2>&1").c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

// Encrypts (or decrypts) in_path into out_path with Python's `cryptography`
// AES-XTS, one data unit per sector, tweak le64(first_tweak + i * sector/512).
// An implementation independent of ours and of OpenSSL's EVP XTS glue.
inline int python_xts(const std::string& key_path, const std::string& in_path,
                      const std::string& out_path, std::uint32_t sector_size,
                      std::uint64_t first_tweak, bool encrypt) {
  const std::string script = std::string(RBDGW_TEST_SOURCE_DIR) + "/../crypto/xts_ref.py";
  return run("python3 " + script + " " + (encrypt ? "enc " : "dec ") + key_path + " " + in_path +
             " " + out_path + " " + std::to_string(sector_size) + " " +
             std::to_string(first_tweak));
}

}  // namespace rbdgw::test
