// lib/attach/secret_store against the real kernel and filesystems: where
// re-adoption secrets live. Each test gets its own store on tmpfs
// (/dev/shm); the non-tmpfs case uses a directory next to the test binary.
#include "attach/secret_store.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/log.hpp"
#include "error_code.hpp"

namespace fs = std::filesystem;
using namespace rbdgw;
using namespace rbdgw::attach;
using rbdgw::test::error_code;

namespace {

const std::string kSecret("s3cret\npass\0phrase-with-bytes\n", 30);  // exact bytes: NUL, newlines

SecretBuffer secret(std::string_view s) { return SecretBuffer(s); }

bool on_tmpfs(const std::string& p) {
  struct statfs sf;
  return ::statfs(p.c_str(), &sf) == 0 &&
         (static_cast<unsigned long>(sf.f_type) == TMPFS_MAGIC ||
          static_cast<unsigned long>(sf.f_type) == RAMFS_MAGIC);
}

unsigned mode_of(const std::string& p) {
  struct stat st;
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Captures every log line (debug included) for the test's lifetime.
class LogCapture {
 public:
  LogCapture() {
    log::set_level(log::Level::debug);
    log::set_sink([this](log::Level, std::string_view m) { text_ += std::string(m) + "\n"; });
  }
  ~LogCapture() {
    log::set_sink(nullptr);
    log::set_level(log::Level::info);
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

class SecretStore : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root";
    if (!on_tmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not tmpfs";
    char tmpl[] = "/dev/shm/rbdgw-secret-store-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    root_ = base_ + "/@secrets";
    vol_ = "rbd.unit-" + std::to_string(::getpid());
  }
  void TearDown() override {
    if (base_.empty()) return;
    std::error_code ec;
    fs::permissions(root_, fs::perms::owner_all, ec);
    fs::remove_all(base_, ec);
  }
  std::string file(const std::string& name) const { return root_ + "/" + vol_ + "." + name; }

  std::string base_, root_, vol_;
};

TEST_F(SecretStore, StoresLoadsReplacesAndRemovesExactBytes) {
  EXPECT_FALSE(load_secret(vol_, "passphrase", root_).has_value());  // no store yet
  EXPECT_FALSE(fs::exists(root_)) << "load created the store";
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  auto got = load_secret(vol_, "passphrase", root_);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->view(), kSecret);
  store_secret(vol_, "passphrase", secret("second"), root_);
  EXPECT_EQ(load_secret(vol_, "passphrase", root_)->view(), "second");
  EXPECT_FALSE(load_secret(vol_, "cephx", root_).has_value());
  EXPECT_FALSE(load_secret("rbd.other", "passphrase", root_).has_value());
  remove_secret(vol_, "passphrase", root_);
  EXPECT_FALSE(load_secret(vol_, "passphrase", root_).has_value());
  remove_secret(vol_, "passphrase", root_);  // absent: fine
  // An empty secret is a secret.
  store_secret(vol_, "cephx", secret(""), root_);
  ASSERT_TRUE(load_secret(vol_, "cephx", root_).has_value());
  EXPECT_TRUE(load_secret(vol_, "cephx", root_)->empty());
}

TEST_F(SecretStore, CreatesTheStore0700AndFiles0600WhateverTheUmask) {
  const mode_t old = ::umask(0);
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  ::umask(0077);
  store_secret(vol_, "cephx", secret("key"), root_);
  ::umask(old);
  EXPECT_EQ(mode_of(root_), 0700u);
  EXPECT_EQ(mode_of(file("passphrase")), 0600u);
  EXPECT_EQ(mode_of(file("cephx")), 0600u);
  EXPECT_EQ(mode_of(root_ + "/boot_id"), 0600u);
  struct stat st;
  ASSERT_EQ(::stat(file("passphrase").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(slurp(file("passphrase")), kSecret);
  // Nothing but the two secrets and the boot id: no temporary file left.
  EXPECT_EQ(entries(root_), (std::vector<std::string>{"boot_id", vol_ + ".cephx", vol_ + ".passphrase"}));
}

TEST_F(SecretStore, RefusesAStoreWithGroupOrOtherPermissions) {
  ASSERT_EQ(::mkdir(root_.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(root_.c_str(), 0755), 0);
  std::string msg;
  EXPECT_EQ(error_code([&] { store_secret(vol_, "passphrase", secret(kSecret), root_); }, &msg), EACCES);
  EXPECT_NE(msg.find(root_), std::string::npos) << msg;
  EXPECT_NE(msg.find("mode 0755"), std::string::npos) << msg;
  EXPECT_EQ(error_code([&] { load_secret(vol_, "passphrase", root_); }), EACCES);
  EXPECT_TRUE(entries(root_).empty()) << "wrote into a refused store";
}

TEST_F(SecretStore, RefusesAStoreOwnedBySomeoneElse) {
  ASSERT_EQ(::mkdir(root_.c_str(), 0700), 0);
  ASSERT_EQ(::chown(root_.c_str(), 65534, 65534), 0);
  std::string msg;
  EXPECT_EQ(error_code([&] { store_secret(vol_, "passphrase", secret(kSecret), root_); }, &msg), EACCES);
  EXPECT_NE(msg.find("owned by uid 65534"), std::string::npos) << msg;
  EXPECT_EQ(error_code([&] { load_secret(vol_, "passphrase", root_); }), EACCES);
  EXPECT_TRUE(entries(root_).empty());
}

TEST_F(SecretStore, RefusesAStoreThatIsASymlink) {
  const std::string real = base_ + "/real";
  ASSERT_EQ(::mkdir(real.c_str(), 0700), 0);
  ASSERT_EQ(::symlink(real.c_str(), root_.c_str()), 0);
  std::string msg;
  EXPECT_EQ(error_code([&] { store_secret(vol_, "passphrase", secret(kSecret), root_); }, &msg), ELOOP);
  EXPECT_NE(msg.find("symbolic link"), std::string::npos) << msg;
  EXPECT_EQ(error_code([&] { load_secret(vol_, "passphrase", root_); }), ELOOP);
  EXPECT_TRUE(entries(real).empty()) << "wrote through the symlink";
  remove_secret(vol_, "passphrase", root_);  // left alone, no error
}

TEST_F(SecretStore, NeverPutsASecretOnAPersistentFilesystem) {
  // Next to the test binary: the build tree, on disk. An empty store there
  // gets a private tmpfs mounted on it; one already holding a file is refused.
  const std::string dir = fs::absolute("secret-store-not-tmpfs-" + std::to_string(::getpid())).string();
  fs::remove_all(dir);
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  if (on_tmpfs(dir)) {
    fs::remove_all(dir);
    GTEST_SKIP() << "the build tree is on tmpfs";
  }
  store_secret(vol_, "passphrase", secret(kSecret), dir);
  const bool covered = on_tmpfs(dir);
  const auto got = load_secret(vol_, "passphrase", dir);
  ::umount2(dir.c_str(), MNT_DETACH);
  const std::vector<std::string> on_disk = entries(dir);
  EXPECT_TRUE(covered) << "the store on disk got no tmpfs of its own";
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->view(), kSecret);
  EXPECT_TRUE(on_disk.empty()) << "a secret reached the disk";

  // A file already there (on disk): refused, nothing covered up or written.
  ASSERT_TRUE(std::ofstream(dir + "/stray").good());
  std::string msg;
  const int e = error_code([&] { store_secret(vol_, "passphrase", secret(kSecret), dir); }, &msg);
  const bool covered2 = on_tmpfs(dir);
  if (covered2) ::umount2(dir.c_str(), MNT_DETACH);
  const std::vector<std::string> left = entries(dir);
  fs::remove_all(dir);
  EXPECT_EQ(e, ENOTSUP);
  EXPECT_FALSE(covered2);
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_NE(msg.find("not on tmpfs or ramfs"), std::string::npos) << msg;
  EXPECT_EQ(left, (std::vector<std::string>{"stray"})) << "a secret reached the disk";
}

TEST_F(SecretStore, APrivateTmpfsHoldsTheSecretsOfAThousandVolumes) {
  // Where the store gets a tmpfs of its own (/run on disk), it must hold a
  // node's many volumes (issue 13): a passphrase and a cephx key for each
  // of 1000 (a file is at least one page of tmpfs).
  const std::string dir = fs::absolute("secret-store-many-" + std::to_string(::getpid())).string();
  fs::remove_all(dir);
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  if (on_tmpfs(dir)) {
    fs::remove_all(dir);
    GTEST_SKIP() << "the build tree is on tmpfs";
  }
  int stored = 0;
  std::string msg;
  for (int i = 0; i < 1000; ++i) {
    const std::string vol = "rbd.many-" + std::to_string(i);
    const int e = error_code([&] {
      store_secret(vol, "passphrase", secret(kSecret), dir);
      store_secret(vol, "cephx", secret(kSecret), dir);
    }, &msg);
    if (e != 0) break;
    ++stored;
  }
  const bool covered = on_tmpfs(dir);
  ::umount2(dir.c_str(), MNT_DETACH);
  fs::remove_all(dir);
  EXPECT_TRUE(covered);
  EXPECT_EQ(stored, 1000) << "the private tmpfs took the secrets of " << stored
                          << " volumes only: " << msg;
}

TEST_F(SecretStore, AnEarlierRbdgwsOneMebibyteTmpfsIsEnlargedInPlace) {
  // An earlier rbdgw mounted 1 MiB (127 volumes); a node not rebooted since
  // still has it: it is enlarged, and what it holds stays.
  const std::string dir = fs::absolute("secret-store-old-" + std::to_string(::getpid())).string();
  fs::remove_all(dir);
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    "mode=0700,size=1m"), 0);
  store_secret("rbd.old-0", "passphrase", secret(kSecret), dir);
  int stored = 0;
  std::string msg;
  for (int i = 1; i < 1000; ++i) {
    const std::string vol = "rbd.old-" + std::to_string(i);
    if (error_code([&] {
          store_secret(vol, "passphrase", secret(kSecret), dir);
          store_secret(vol, "cephx", secret(kSecret), dir);
        }, &msg) != 0)
      break;
    ++stored;
  }
  const auto first = load_secret("rbd.old-0", "passphrase", dir);
  ::umount2(dir.c_str(), MNT_DETACH);
  fs::remove_all(dir);
  EXPECT_EQ(stored, 999) << "the old 1 MiB tmpfs took " << stored << " more volumes only: " << msg;
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->view(), kSecret);
}

TEST_F(SecretStore, RefusesASecretFileOthersCouldRead) {
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  ASSERT_EQ(::chmod(file("passphrase").c_str(), 0644), 0);
  std::string msg;
  EXPECT_EQ(error_code([&] { load_secret(vol_, "passphrase", root_); }, &msg), EACCES);
  EXPECT_NE(msg.find(file("passphrase")), std::string::npos) << msg;
  ASSERT_EQ(::unlink(file("passphrase").c_str()), 0);
  ASSERT_EQ(::symlink("/etc/hostname", file("passphrase").c_str()), 0);
  EXPECT_EQ(error_code([&] { load_secret(vol_, "passphrase", root_); }), ELOOP);
}

TEST_F(SecretStore, RemovalOverwritesAndLeavesNothing) {
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  store_secret(vol_, "cephx", secret("AQBcephxkey=="), root_);
  // Hold the files open: after removal their (unlinked) pages must be zeros.
  const int fp = ::open(file("passphrase").c_str(), O_RDONLY | O_CLOEXEC);
  const int fc = ::open(file("cephx").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fp, 0);
  ASSERT_GE(fc, 0);
  remove_secret(vol_, "passphrase", root_);
  remove_secret(vol_, "cephx", root_);
  EXPECT_EQ(entries(root_), std::vector<std::string>{"boot_id"});
  for (int fd : {fp, fc}) {
    char buf[256];
    const ssize_t n = ::pread(fd, buf, sizeof buf, 0);
    ::close(fd);
    ASSERT_GT(n, 0);
    EXPECT_EQ(std::string(buf, n), std::string(n, '\0')) << "removed secret not overwritten";
  }
}

TEST_F(SecretStore, ReplacingOverwritesTheOldSecret) {
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  const int fd = ::open(file("passphrase").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  store_secret(vol_, "passphrase", secret("new"), root_);
  char buf[256];
  const ssize_t n = ::pread(fd, buf, sizeof buf, 0);
  ::close(fd);
  ASSERT_EQ(n, static_cast<ssize_t>(kSecret.size()));
  EXPECT_EQ(std::string(buf, n), std::string(n, '\0'));
  EXPECT_EQ(load_secret(vol_, "passphrase", root_)->view(), "new");
}

TEST_F(SecretStore, AStoreFromAnotherBootIsIgnoredWithAClearMessage) {
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  store_secret("rbd.other", "cephx", secret("AQBotherkey=="), root_);
  const std::string now = slurp("/proc/sys/kernel/random/boot_id");
  ASSERT_EQ(slurp(root_ + "/boot_id"), now);
  const std::string earlier = "00000000-1111-2222-3333-444444444444";
  std::ofstream(root_ + "/boot_id", std::ios::trunc) << earlier << "\n";
  LogCapture log;
  EXPECT_FALSE(load_secret(vol_, "passphrase", root_).has_value());
  EXPECT_NE(log.text().find(root_), std::string::npos) << log.text();
  EXPECT_NE(log.text().find("earlier boot (boot id " + earlier), std::string::npos) << log.text();
  EXPECT_NE(log.text().find("not trusting its secrets"), std::string::npos) << log.text();
  // No boot id at all: not trusted either.
  ::unlink((root_ + "/boot_id").c_str());
  EXPECT_FALSE(load_secret(vol_, "passphrase", root_).has_value());
  EXPECT_NE(log.text().find("records no boot id"), std::string::npos) << log.text();
  // The next store starts afresh: the stale secrets are gone, this boot recorded.
  std::ofstream(root_ + "/boot_id", std::ios::trunc) << earlier << "\n";
  store_secret(vol_, "cephx", secret("AQBnewkey=="), root_);
  EXPECT_NE(log.text().find("wiping its secrets"), std::string::npos) << log.text();
  EXPECT_EQ(entries(root_), (std::vector<std::string>{"boot_id", vol_ + ".cephx"}));
  EXPECT_EQ(slurp(root_ + "/boot_id"), now);
  EXPECT_FALSE(load_secret(vol_, "passphrase", root_).has_value());
  EXPECT_EQ(load_secret(vol_, "cephx", root_)->view(), "AQBnewkey==");
  EXPECT_EQ(log.text().find("s3cret"), std::string::npos) << "a secret in the log";
  EXPECT_EQ(log.text().find("AQB"), std::string::npos) << "a secret in the log";
}

TEST_F(SecretStore, NoSecretInAnyLogOrError) {
  LogCapture log;
  std::string errors;
  store_secret(vol_, "passphrase", secret(kSecret), root_);
  load_secret(vol_, "passphrase", root_);
  ::chmod(file("passphrase").c_str(), 0640);
  std::string msg;
  error_code([&] { load_secret(vol_, "passphrase", root_); }, &msg);
  errors += msg + "\n";
  ::chmod(file("passphrase").c_str(), 0600);
  ::chmod(root_.c_str(), 0750);
  error_code([&] { store_secret(vol_, "passphrase", secret(kSecret), root_); }, &msg);
  errors += msg + "\n";
  error_code([&] { load_secret(vol_, "passphrase", root_); }, &msg);
  errors += msg + "\n";
  ::chmod(root_.c_str(), 0700);
  error_code([&] { store_secret(vol_, "passphrase", SecretBuffer(std::size_t{70000}), root_); }, &msg);
  errors += msg + "\n";
  remove_secret(vol_, "passphrase", root_);
  const std::string all = log.text() + errors;
  EXPECT_NE(errors.find("0750"), std::string::npos) << errors;  // the errors did happen
  EXPECT_EQ(all.find("s3cret"), std::string::npos) << all;
  EXPECT_EQ(all.find("phrase-with-bytes"), std::string::npos) << all;
}

TEST_F(SecretStore, RefusesNamesThatCouldEscapeTheStore) {
  for (const std::string v : {"../x", "a/b", "", ".", ".."})
    EXPECT_EQ(error_code([&] { store_secret(v, "passphrase", secret(kSecret), root_); }), EINVAL) << v;
  for (const std::string n : {"a/b", "a.b", "", "../x", "UPPER"})
    EXPECT_EQ(error_code([&] { store_secret(vol_, n, secret(kSecret), root_); }), EINVAL) << n;
  EXPECT_EQ(error_code([&] { store_secret(vol_, "passphrase", secret(kSecret), "relative/dir"); }), EINVAL);
  EXPECT_FALSE(fs::exists(root_));
}

TEST(SecretStoreRoot, DefaultAndEnvironment) {
  const char* saved = std::getenv("RBDGW_SECRET_DIR");
  const std::string keep = saved ? saved : "";
  ::unsetenv("RBDGW_SECRET_DIR");
  EXPECT_EQ(secret_root(), "/run/rbdgw/@secrets");
  ::setenv("RBDGW_SECRET_DIR", "/dev/shm/x", 1);
  EXPECT_EQ(secret_root(), "/dev/shm/x");
  ::setenv("RBDGW_SECRET_DIR", "rel", 1);
  EXPECT_EQ(error_code([] { secret_root(); }), EINVAL);
  if (saved) ::setenv("RBDGW_SECRET_DIR", keep.c_str(), 1);
  else ::unsetenv("RBDGW_SECRET_DIR");
}

}  // namespace
