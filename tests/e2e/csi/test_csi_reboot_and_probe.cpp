// rbdgw-csi across a node reboot, under a monitor that never answers, and
// for read-only raw-block publishes (issue 10 items 2, 3 (Probe), 7):
//   - a volume staged before a (simulated) reboot is staged afresh after it,
//     with its data, instead of failing NodeStageVolume forever (ENOKEY);
//   - Probe answers "ready" within the livenessprobe sidecar's 1 s timeout
//     while the only configured monitor never answers: it reports the
//     plugin's own health, not the cluster's;
//   - a read-only publish of a block volume staged read-write cannot write
//     the volume (its own read-only loop device), a read-write publish of
//     the same volume can, and unpublish leaves no loop device.
// The reboot is simulated: the daemon, gateway and exporter are killed
// (-9), the mounts lazily unmounted and the loop device detached as a
// reboot would, the run dir and the secret store (tmpfs) removed, the stash
// beside the staging path kept, and the machine given a new boot id
// ($RBDGW_BOOT_ID_FILE, common/boot_id.hpp; inherited by every process).
#include "csi_harness.hpp"

#include <linux/fs.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstring>
#include <nlohmann/json.hpp>

namespace {

std::string sys_loop_backing(const std::string& loop_name) {
  std::string s = read_file("/sys/block/" + loop_name + "/loop/backing_file");
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Loop devices whose backing file is `file` (a path or a device node).
std::vector<std::string> loops_backed_by(const std::string& file) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("loop", 0) == 0 && sys_loop_backing(n) == file) out.push_back("/dev/" + n);
  }
  return out;
}

// Loop devices backed by anything under dir.
std::vector<std::string> loops_under(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("loop", 0) == 0 && sys_loop_backing(n).rfind(dir + "/", 0) == 0) out.push_back("/dev/" + n);
  }
  return out;
}

std::string new_uuid() {
  std::string s = read_file("/proc/sys/kernel/random/uuid");
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

class CsiReboot : public CsiE2E {
 protected:
  static inline std::string boot_id_file, secret_dir;

  static void SetUpTestSuite() {
    // A boot id and a secret store of this program's own, so that its
    // "reboot" touches nothing of other tests.
    char b[] = "/tmp/rbdgw-csi-reboot.XXXXXX";
    const std::string dir = ::mkdtemp(b);
    boot_id_file = dir + "/boot_id";
    std::ofstream(boot_id_file) << read_file("/proc/sys/kernel/random/boot_id");
    char s[] = "/dev/shm/rbdgw-csi-reboot-secrets.XXXXXX";
    secret_dir = ::mkdtemp(s);
    ::setenv("RBDGW_BOOT_ID_FILE", boot_id_file.c_str(), 1);
    ::setenv("RBDGW_SECRET_DIR", secret_dir.c_str(), 1);
    CsiE2E::SetUpTestSuite();
  }

  static void TearDownTestSuite() {
    CsiE2E::TearDownTestSuite();
    std::error_code ec;
    fs::remove_all(fs::path(boot_id_file).parent_path(), ec);
    fs::remove_all(secret_dir, ec);
  }

  static v1::VolumeCapability block_cap(
      v1::VolumeCapability::AccessMode::Mode mode = v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER) {
    v1::VolumeCapability c;
    c.mutable_block();
    c.mutable_access_mode()->set_mode(mode);
    return c;
  }

  static void wait_dead(const attach::ProcessRef& p) {
    for (int i = 0; i < 100 && attach::alive(p); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_FALSE(attach::alive(p)) << "pid " << p.pid;
  }

  // What a reboot does to a staged volume, but for its stash.
  static void simulate_reboot(const attach::Stash& s) {
    stop_daemon(SIGKILL);
    ::kill(s.gateway.pid, SIGKILL);
    ::kill(s.fuse.pid, SIGKILL);
    wait_dead(s.gateway);
    wait_dead(s.fuse);
    if (!s.target.empty()) ::umount2(s.target.c_str(), MNT_DETACH);
    ::umount2(s.fuse_file.c_str(), MNT_DETACH);
    ASSERT_EQ(attach::run_command({"losetup", "--detach", s.loop_device}).status, 0);
    for (int i = 0; i < 100 && !loops_under(s.run_dir).empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(loops_under(s.run_dir).empty());
    std::error_code ec;
    fs::remove_all(s.run_dir, ec);
    fs::remove_all(secret_dir, ec);  // tmpfs: gone with the boot
    std::ofstream(boot_id_file) << new_uuid() << "\n";
  }
};

TEST_F(CsiReboot, StagedVolumeIsStagedAfreshAfterAReboot) {
  if (!node_path_available()) GTEST_SKIP() << "needs RBDGW_PLUGIN, RBDGW_FUSE_EXPORTER and /dev/fuse";
  v1::CreateVolumeResponse cv;
  ASSERT_TRUE(create(unique("reboot"), params(), 64 * MiB, &cv).ok());
  const std::string id = cv.volume().volume_id();
  const std::string staging = staging_dir(unique("reboot"));
  const std::string stash_path = staging + ".rbdgw.json";
  auto st = stage(id, staging);
  ASSERT_TRUE(st.ok()) << st.error_message() << read_file(tmp + "/csi.log");
  write_file(staging + "/data", "written before the reboot");
  const attach::Stash before = attach::load_stash(stash_path);

  simulate_reboot(before);
  if (HasFatalFailure()) return;
  ASSERT_TRUE(fs::exists(stash_path));
  start_daemon();

  // Re-adoption at start says what it is, not ENOKEY.
  for (int i = 0; i < 50 && read_file(tmp + "/csi.log").find("from an earlier boot") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_NE(read_file(tmp + "/csi.log").find("stale: from an earlier boot"), std::string::npos)
      << read_file(tmp + "/csi.log");

  st = stage(id, staging);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(read_file(staging + "/data"), "written before the reboot");
  const attach::Stash after = attach::load_stash(stash_path);
  EXPECT_EQ(nlohmann::json::parse(read_file(stash_path)).value("boot_id", ""),
            read_file(boot_id_file).substr(0, 36))
      << "the new stash records the new boot";
  EXPECT_TRUE(attach::status(after).healthy());

  st = unstage(id, staging);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(fs::exists(stash_path));
  EXPECT_FALSE(fs::exists(after.run_dir));
  EXPECT_TRUE(loops_under(after.run_dir).empty());
  EXPECT_TRUE(mounts_under(after.run_dir).empty());
  EXPECT_FALSE(attach::alive(after.gateway));
  EXPECT_FALSE(attach::alive(after.fuse));
}

// A stale stash at NodeUnstageVolume (the pod went away during the reboot)
// is forgotten, never acted on: the loop device it names is someone else's.
TEST_F(CsiReboot, UnstageAfterARebootForgetsTheStaleStashOnly) {
  if (!node_path_available()) GTEST_SKIP() << "needs RBDGW_PLUGIN, RBDGW_FUSE_EXPORTER and /dev/fuse";
  v1::CreateVolumeResponse cv;
  ASSERT_TRUE(create(unique("reboot-unstage"), params(), 64 * MiB, &cv).ok());
  const std::string id = cv.volume().volume_id();
  const std::string staging = staging_dir(unique("reboot-unstage"));
  const std::string stash_path = staging + ".rbdgw.json";
  auto st = stage(id, staging, block_cap());
  ASSERT_TRUE(st.ok()) << st.error_message();
  attach::Stash s = attach::load_stash(stash_path);
  simulate_reboot(s);
  if (HasFatalFailure()) return;
  // The loop device number the stash names now belongs to someone else.
  const std::string decoy = tmp + "/decoy.img";
  { std::ofstream(decoy).close(); fs::resize_file(decoy, 8 * MiB); }
  auto r = attach::run_command({"losetup", "--find", "--show", decoy});
  ASSERT_EQ(r.status, 0) << r.err;
  std::string decoy_loop = r.out.substr(0, r.out.find('\n'));
  s = attach::load_stash(stash_path);
  s.loop_device = s.device = decoy_loop;
  attach::save_stash(s, stash_path);
  start_daemon();

  st = unstage(id, staging);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(fs::exists(stash_path));
  EXPECT_EQ(sys_loop_backing(fs::path(decoy_loop).filename().string()), decoy)
      << "the loop device named by the stale stash was detached";
  attach::run_command({"losetup", "--detach", decoy_loop});
}

// A monitor that never answers: a listening socket whose accept queue is
// full, so that a connect() to it waits for a SYN-ACK that never comes.
class SilentMonitor {
 public:
  SilentMonitor() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 0) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return;
    port_ = ntohs(a.sin_port);
    // Fill the accept queue (backlog 0 takes one), then one more in SYN.
    for (int i = 0; i < 3; ++i) {
      int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
      fillers_.push_back(c);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ~SilentMonitor() {
    for (int c : fillers_) ::close(c);
    if (fd_ >= 0) ::close(fd_);
  }
  int port() const { return port_; }
  // Whether a connect() to it is still pending after ms (it never answers).
  bool silent_for(int ms) const {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port_));
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a);
    pollfd p{c, POLLOUT, 0};
    const bool pending = ::poll(&p, 1, ms) == 0;
    ::close(c);
    return pending;
  }

 private:
  int fd_ = -1, port_ = 0;
  std::vector<int> fillers_;
};

TEST_F(CsiReboot, ProbeIsReadyWithinOneSecondWhileTheMonitorNeverAnswers) {
  SilentMonitor mon;
  ASSERT_NE(mon.port(), 0);
  ASSERT_TRUE(mon.silent_for(1500)) << "the silent monitor answered; the test cannot show anything";
  // A second daemon whose only cluster has that monitor.
  const std::string dir = tmp + "/probe";
  fs::create_directories(dir);
  std::ofstream(dir + "/clusters.json")
      << R"([{"clusterID":"silent","monitors":["127.0.0.1:)" << mon.port() << R"("]}])";
  const std::string psock = dir + "/csi.sock";
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open((dir + "/csi.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<std::string> args = {csi_bin, "--endpoint=unix://" + psock,
                                     "--cluster-config=" + dir + "/clusters.json",
                                     "--node-id=probe-node", "--attach=userspace",
                                     "--state-dir=" + dir + "/state", "--allowed-root=" + root};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  struct Reap {
    pid_t p;
    ~Reap() { ::kill(p, SIGKILL); ::waitpid(p, nullptr, 0); }
  } reap{pid};
  for (int i = 0; i < 300 && !fs::exists(psock); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(psock)) << read_file(dir + "/csi.log");
  auto ch = grpc::CreateChannel("unix:" + psock, grpc::InsecureChannelCredentials());
  ASSERT_TRUE(ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
  auto stub = v1::Identity::NewStub(ch);
  for (int i = 0; i < 3; ++i) {  // the sidecar probes again and again
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));  // livenessprobe's default
    v1::ProbeRequest req;
    v1::ProbeResponse resp;
    const auto t0 = std::chrono::steady_clock::now();
    const grpc::Status s = stub->Probe(&ctx, req, &resp);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    ASSERT_TRUE(s.ok()) << "Probe " << i << ": " << s.error_code() << " " << s.error_message() << " after "
                        << ms.count() << " ms";
    EXPECT_TRUE(resp.has_ready() && resp.ready().value());
    EXPECT_LT(ms.count(), 1000);
  }
  EXPECT_TRUE(mon.silent_for(200)) << "the monitor answered meanwhile";
}

TEST_F(CsiReboot, ReadOnlyBlockPublishCannotWriteTheVolume) {
  if (!node_path_available()) GTEST_SKIP() << "needs RBDGW_PLUGIN, RBDGW_FUSE_EXPORTER and /dev/fuse";
  v1::CreateVolumeResponse cv;
  ASSERT_TRUE(create(unique("roblock"), params(), 64 * MiB, &cv).ok());
  const std::string id = cv.volume().volume_id();
  const std::string staging = staging_dir(unique("roblock"));
  auto st = stage(id, staging, block_cap());
  ASSERT_TRUE(st.ok()) << st.error_message();
  const attach::Stash s = attach::load_stash(staging + ".rbdgw.json");
  ASSERT_FALSE(s.read_only);
  const std::string pattern(4096, 'A');
  {
    int fd = ::open(s.device.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0) << s.device;
    void* buf = nullptr;
    ASSERT_EQ(::posix_memalign(&buf, 4096, 4096), 0);
    std::memcpy(buf, pattern.data(), 4096);
    ASSERT_EQ(::pwrite(fd, buf, 4096, 0), 4096);
    ::fsync(fd);
    ::free(buf);
    ::close(fd);
  }
  const auto read_first_block = [](const std::string& dev) {
    std::string out(4096, '\0');
    int fd = ::open(dev.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::string("open failed: ") + std::strerror(errno);
    ::ioctl(fd, BLKFLSBUF, 0);
    if (::pread(fd, out.data(), out.size(), 0) != 4096) out = "short read";
    ::close(fd);
    return out;
  };

  const std::string pod = root + "/pods/" + unique("pod") + "/volumeDevices/publish/" + id;
  const std::string ro_target = pod + "/ro", rw_target = pod + "/rw";
  for (const auto& ro_kind : {"readonly flag", "reader-only access mode"}) {
    SCOPED_TRACE(ro_kind);
    const bool flag = std::string(ro_kind) == "readonly flag";
    st = publish(id, staging, ro_target, flag,
                 flag ? block_cap() : block_cap(v1::VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY));
    ASSERT_TRUE(st.ok()) << st.error_message();
    struct stat tst{};
    ASSERT_EQ(::stat(ro_target.c_str(), &tst), 0);
    EXPECT_TRUE(S_ISBLK(tst.st_mode));
    // The device is read-only: Linux 6.1 still lets root open a read-only
    // block device for writing, but every write through it fails (EPERM).
    errno = 0;
    const int wfd = ::open(ro_target.c_str(), O_WRONLY | O_CLOEXEC);
    if (wfd >= 0) {
      const std::string junk(4096, 'X');
      errno = 0;
      EXPECT_LT(::pwrite(wfd, junk.data(), junk.size(), 0), 0) << "a write into the read-only publish succeeded";
      EXPECT_TRUE(errno == EPERM || errno == EROFS || errno == EIO) << std::strerror(errno);
      ::close(wfd);
    } else {
      EXPECT_TRUE(errno == EROFS || errno == EACCES || errno == EPERM) << std::strerror(errno);
    }
    int ro_flag = 0;
    {
      struct stat rst{};
      ASSERT_EQ(::stat(ro_target.c_str(), &rst), 0);
      const int fd = ::open(ro_target.c_str(), O_RDONLY | O_CLOEXEC);
      ASSERT_GE(fd, 0);
      EXPECT_EQ(::ioctl(fd, BLKROGET, &ro_flag), 0);
      ::close(fd);
    }
    EXPECT_EQ(ro_flag, 1) << "the read-only publish is not a read-only block device";
    auto r = attach::run_command({"dd", "if=/dev/zero", "of=" + ro_target, "bs=4096", "count=1",
                                  "conv=notrunc,fsync", "oflag=direct"});
    EXPECT_NE(r.status, 0) << "dd into the read-only publish succeeded";
    EXPECT_TRUE(read_first_block(ro_target) == pattern) << "reads through the read-only publish differ";
    EXPECT_TRUE(read_first_block(s.device) == pattern) << "the volume changed";

    // A read-write publish of the same volume still writes.
    st = publish(id, staging, rw_target, false, block_cap());
    ASSERT_TRUE(st.ok()) << st.error_message();
    r = attach::run_command({"dd", "if=/dev/zero", "of=" + rw_target, "bs=4096", "count=1", "seek=1",
                             "conv=notrunc,fsync", "oflag=direct"});
    EXPECT_EQ(r.status, 0) << r.err;

    st = unpublish(id, ro_target);
    EXPECT_TRUE(st.ok()) << st.error_message();
    st = unpublish(id, rw_target);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(fs::exists(ro_target));
    EXPECT_TRUE(loops_backed_by(s.device).empty()) << "unpublish left a loop device on " << s.device;
  }
  st = unstage(id, staging);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(loops_under(s.run_dir).empty());
}

}  // namespace
