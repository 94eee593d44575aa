// Helpers for the KMS tests: the independent ceph-csi DEK implementation
// (cephcsi_dek.py, secrets on stdin, never argv), a log sink that records
// every message, and a private temporary directory removed on destruction.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/log.hpp"

extern char** environ;

namespace kms_test {

struct Result {
  int status = -1;
  std::string out;
};

// Runs cephcsi_dek.py `mode` with `input` on stdin; returns exit status and stdout.
inline Result run_cephcsi_dek(const std::string& mode, const std::string& input) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) return {};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::string script = KMS_TEST_SCRIPT;
  const char* argv[] = {"python3", script.c_str(), mode.c_str(), nullptr};
  pid_t pid;
  int r = posix_spawnp(&pid, "python3", &fa, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  Result res;
  if (r == 0) {
    // Requests are far below the pipe's capacity, so write-then-read cannot block.
    (void)!write(in[1], input.data(), input.size());
  }
  close(in[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0) res.out.append(buf, n);
  close(out[0]);
  if (r != 0) return res;
  int st = 0;
  waitpid(pid, &st, 0);
  res.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return res;
}

inline std::string python_wrap(const std::string& passphrase, const std::string& volume_id,
                               const std::string& dek) {
  auto r = run_cephcsi_dek(
      "wrap", nlohmann::json{{"passphrase", passphrase}, {"volume_id", volume_id}, {"dek", dek}}.dump());
  EXPECT_EQ(r.status, 0) << "cephcsi_dek.py wrap failed";
  return r.out;
}

inline Result python_unwrap(const std::string& passphrase, const std::string& volume_id,
                            const std::string& wrapped) {
  return run_cephcsi_dek("unwrap", nlohmann::json{{"passphrase", passphrase},
                                                  {"volume_id", volume_id},
                                                  {"wrapped", wrapped}}.dump());
}

// Records all log messages (at debug level) while alive.
class LogCapture {
 public:
  LogCapture() {
    rbdgw::log::set_level(rbdgw::log::Level::debug);
    rbdgw::log::set_sink([this](rbdgw::log::Level, std::string_view m) {
      std::lock_guard g(mu_);
      text_ += m;
      text_ += '\n';
    });
  }
  ~LogCapture() {
    rbdgw::log::set_sink(nullptr);
    rbdgw::log::set_level(rbdgw::log::Level::info);
  }
  std::string text() {
    std::lock_guard g(mu_);
    return text_;
  }
  // Fails the test if any of the secrets appears in the log.
  void expect_none_of(const std::vector<std::string>& secrets) {
    std::string t = text();
    for (const auto& s : secrets) {
      if (!s.empty()) {
        EXPECT_EQ(t.find(s), std::string::npos) << "a secret appeared in the log";
      }
    }
  }

 private:
  std::mutex mu_;
  std::string text_;
};

// A mode-0700 temporary directory, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "rbdgw-kms-XXXXXX").string();
    if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
    path_ = t;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  // Writes a mode-0600 file.
  std::string write(const std::string& name, const std::string& content) const {
    std::string p = (path_ / name).string();
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("open " + p);
    (void)!::write(fd, content.data(), content.size());
    ::close(fd);
    return p;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace kms_test
