// A kill of the node plugin's container never breaks I/O (issue 10 item 3):
// the container is simulated by a cgroup v2 group that rbdgw-csi runs in,
// killed the way runc does (cgroup.kill); the gateways and FUSE exporters
// were started by rbdgw-gateway-host, which runs outside that group, so
// they keep serving the mounted filesystems, and the restarted daemon
// re-adopts them. Also: a kill -9 of the gateway host itself during I/O.
#include "csi_harness.hpp"

#include <atomic>

namespace {

class PluginRestart : public CsiE2E {
 protected:
  static inline std::string cgroup, host_bin, host_sock;
  static inline pid_t host = 0;

  // The cgroup v2 hierarchy (hybrid: /sys/fs/cgroup/unified), empty if none.
  static std::string cgroup2_root() {
    for (const char* d : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"})
      if (fs::exists(std::string(d) + "/cgroup.procs") && fs::exists(std::string(d) + "/cgroup.subtree_control"))
        return d;
    return {};
  }

  static void SetUpTestSuite() {
    CsiE2E::SetUpTestSuite();
    if (tmp.empty()) return;
    if (const char* b = std::getenv("RBDGW_GATEWAY_HOST_BIN")) host_bin = b;
    const std::string croot = cgroup2_root();
    if (host_bin.empty() || croot.empty()) return;
    cgroup = croot + "/rbdgw-test-" + std::to_string(::getpid());
    if (::mkdir(cgroup.c_str(), 0755) < 0 || !fs::exists(cgroup + "/cgroup.kill")) {
      ::rmdir(cgroup.c_str());
      cgroup.clear();
      return;
    }
    host_sock = tmp + "/gateway-host.sock";
    start_host();
    // The fixture's daemon again, this time in the "container".
    stop_daemon(SIGTERM);
    start_daemon_in_cgroup();
  }

  static void TearDownTestSuite() {
    CsiE2E::TearDownTestSuite();
    stop_host(SIGTERM);
    if (!cgroup.empty()) {
      kill_cgroup();
      ::rmdir(cgroup.c_str());
    }
  }

  void SetUp() override {
    CsiE2E::SetUp();
    if (IsSkipped()) return;
    if (cgroup.empty()) GTEST_SKIP() << "needs cgroup v2 with cgroup.kill and RBDGW_GATEWAY_HOST_BIN";
    if (!node_path_available() || !std::getenv("RBDGW_FILTER") || !fs::exists(std::getenv("RBDGW_FILTER")))
      GTEST_SKIP() << "needs the rbd plugin, the luks2 filter, rbdgw-fuse and /dev/fuse";
  }

  static void start_host() {
    host = ::fork();
    if (host == 0) {
      const std::string log = tmp + "/gateway-host.log";
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::setpgid(0, 0);
      ::execl(host_bin.c_str(), host_bin.c_str(), "--socket", host_sock.c_str(), nullptr);
      _exit(127);
    }
    ::setpgid(host, host);
    for (int i = 0; i < 100 && !fs::exists(host_sock); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(fs::exists(host_sock)) << read_file(tmp + "/gateway-host.log");
  }

  // sig to the host's process group (supervisor and worker).
  static void stop_host(int sig) {
    if (host <= 0) return;
    ::kill(-host, sig);
    int st = 0;
    ::waitpid(host, &st, 0);
    for (int i = 0; i < 100 && ::kill(-host, 0) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    host = 0;
  }

  // The worker of the host (the supervisor's one child).
  static pid_t host_worker() {
    std::istringstream in(read_file(cat("/proc/", host, "/task/", host, "/children")));
    pid_t w = 0;
    in >> w;
    return w;
  }

  static void start_daemon_in_cgroup() {
    start_daemon([] {
      // Into the "container" first, so that everything it starts itself
      // would be there too.
      int cg = ::open((cgroup + "/cgroup.procs").c_str(), O_WRONLY);
      if (cg < 0 || ::write(cg, "0", 1) != 1) _exit(126);
      ::close(cg);
      ::setenv("RBDGW_GATEWAY_HOST", host_sock.c_str(), 1);
    });
  }

  static std::vector<pid_t> cgroup_pids() {
    std::istringstream in(read_file(cgroup + "/cgroup.procs"));
    std::vector<pid_t> v;
    for (pid_t p; in >> p;) v.push_back(p);
    return v;
  }

  // What runc does when the container's main process dies: every process
  // of the container's cgroup gets SIGKILL.
  static void kill_cgroup() {
    std::ofstream(cgroup + "/cgroup.kill") << "1";
    if (daemon > 0) {
      int st = 0;
      ::waitpid(daemon, &st, 0);
      daemon = 0;
    }
    for (int i = 0; i < 200 && !cgroup_pids().empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
};

// Writes 4 KiB records (record i holds byte 'a' + i % 26, then i) at
// offset i * 4 KiB of one file, each followed by fsync, until stopped.
struct Writer {
  std::string path;
  std::atomic<bool> stop{false};
  std::atomic<long> done{0};
  std::atomic<int> error{0};
  std::string what;  // set before error, read only once error is set
  std::thread t;

  void fail(const std::string& w, int e) {
    what = w;
    error = e;
  }

  static std::string record(long i) {
    std::string r(4096, static_cast<char>('a' + i % 26));
    std::memcpy(r.data(), &i, sizeof i);
    return r;
  }
  void start() {
    t = std::thread([this] {
      // Close-on-exec: a daemon forked meanwhile must not hold the mount.
      int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0) {
        fail("open", errno);
        return;
      }
      for (long i = 0; !stop; ++i) {
        const std::string r = record(i);
        if (::pwrite(fd, r.data(), r.size(), i * 4096) != 4096) {
          fail(cat("pwrite of record ", i), errno ? errno : EIO);
          break;
        }
        if (::fsync(fd) < 0) {
          fail(cat("fsync of record ", i), errno);
          break;
        }
        done = i + 1;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      ::close(fd);
    });
  }
  void finish() {
    stop = true;
    if (t.joinable()) t.join();
  }
  // The file holds exactly the records written.
  ::testing::AssertionResult verify(const std::string& file) const {
    const std::string data = read_file(file);
    if (data.size() != static_cast<std::size_t>(done) * 4096)
      return ::testing::AssertionFailure() << file << ": " << data.size() << " bytes, expected "
                                           << done * 4096;
    for (long i = 0; i < done; ++i)
      if (data.compare(static_cast<std::size_t>(i) * 4096, 4096, record(i)) != 0)
        return ::testing::AssertionFailure() << file << ": record " << i << " differs";
    return ::testing::AssertionSuccess();
  }
};

struct Vol {
  std::string id, staging, target;
  bool encrypted = false;
  Writer w;
};

TEST_F(PluginRestart, GatewaysOutliveAKillOfThePluginsContainerAndAreReadopted) {
  std::vector<std::unique_ptr<Vol>> vols;
  for (bool enc : {false, true}) {
    auto v = std::make_unique<Vol>();
    v->encrypted = enc;
    v1::CreateVolumeResponse a;
    auto st = create(unique(enc ? "pvc-restart-enc" : "pvc-restart"), params(enc), 64 * MiB, &a, secrets(enc));
    ASSERT_TRUE(st.ok()) << st.error_message();
    v->id = a.volume().volume_id();
    v->staging = staging_dir(unique("restart"));
    v->target = root + "/pods/p-restart/volumes/" + unique("t") + "/mount";
    st = stage(v->id, v->staging, mount_cap(), enc);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
    ASSERT_TRUE(publish(v->id, v->staging, v->target).ok());
    vols.push_back(std::move(v));
  }
  // Nothing of the volumes runs in the "container": only the daemon.
  EXPECT_EQ(cgroup_pids(), std::vector<pid_t>{daemon});

  for (auto& v : vols) {
    v->w.path = v->target + "/records";
    v->w.start();
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const long before_kill = vols[0]->w.done + vols[1]->w.done;
  kill_cgroup();
  ASSERT_TRUE(cgroup_pids().empty());
  // The plugin is gone; the volumes keep taking writes and fsyncs.
  std::this_thread::sleep_for(std::chrono::seconds(4));
  for (auto& v : vols) {
    EXPECT_EQ(v->w.error, 0) << v->id << ": " << v->w.what << ": " << std::strerror(v->w.error);
    const attach::Stash st = attach::load_stash(v->staging + ".rbdgw.json");
    EXPECT_TRUE(attach::alive(st.gateway)) << v->id << ": gateway " << st.gateway.pid;
    EXPECT_TRUE(attach::alive(st.fuse)) << v->id << ": FUSE exporter " << st.fuse.pid;
  }
  EXPECT_GT(vols[0]->w.done + vols[1]->w.done, before_kill + 20) << "writes stopped after the kill";

  // The container comes back: re-adoption, writes go on, clean unstage.
  start_daemon_in_cgroup();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (auto& v : vols) {
    v->w.finish();
    EXPECT_EQ(v->w.error, 0) << v->id << ": " << v->w.what << ": " << std::strerror(v->w.error);
    EXPECT_GT(v->w.done, 100);
  }
  EXPECT_EQ(cgroup_pids(), std::vector<pid_t>{daemon});
  for (auto& v : vols) {
    auto st = unpublish(v->id, v->target);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
    st = unstage(v->id, v->staging);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
  }
  EXPECT_TRUE(mounts_under(root).empty());
  // Fresh stages read back every acknowledged record.
  for (auto& v : vols) {
    auto st = stage(v->id, v->staging, mount_cap(), v->encrypted);
    ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
    EXPECT_TRUE(v->w.verify(v->staging + "/records"));
    ASSERT_TRUE(unstage(v->id, v->staging).ok());
    EXPECT_TRUE(del(v->id).ok());
  }
}

TEST_F(PluginRestart, AKillOfTheGatewayHostLeavesIOAloneAndANewHostServes) {
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-hostkill"), params(), 32 * MiB, &a).ok());
  Vol v;
  v.id = a.volume().volume_id();
  v.staging = staging_dir(unique("hostkill"));
  auto st = stage(v.id, v.staging);
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
  v.w.path = v.staging + "/records";
  v.w.start();
  std::this_thread::sleep_for(std::chrono::seconds(1));

  // The worker that serves requests crashes: the supervisor starts another.
  const pid_t worker = host_worker();
  ASSERT_GT(worker, 0);
  ::kill(worker, SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(v.w.error, 0) << v.w.what << ": " << std::strerror(v.w.error);
  const pid_t worker2 = host_worker();
  EXPECT_GT(worker2, 0);
  EXPECT_NE(worker2, worker);
  v1::CreateVolumeResponse b;
  ASSERT_TRUE(create(unique("pvc-hostkill2"), params(), 32 * MiB, &b).ok());
  const std::string staging2 = staging_dir(unique("hostkill2"));
  st = stage(b.volume().volume_id(), staging2);
  EXPECT_TRUE(st.ok()) << "after a worker kill: " << st.error_message();
  EXPECT_TRUE(unstage(b.volume().volume_id(), staging2).ok());

  // The whole host (supervisor and worker) killed: I/O goes on; while no
  // host runs, a stage fails and names the socket (no fallback into the
  // plugin's container); a new host serves.
  stop_host(SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(v.w.error, 0) << v.w.what << ": " << std::strerror(v.w.error);
  const attach::Stash s1 = attach::load_stash(v.staging + ".rbdgw.json");
  EXPECT_TRUE(attach::alive(s1.gateway));
  EXPECT_TRUE(attach::alive(s1.fuse));
  st = stage(b.volume().volume_id(), staging2);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_message().find(host_sock), std::string::npos) << st.error_message();
  EXPECT_EQ(cgroup_pids(), std::vector<pid_t>{daemon}) << "a daemon was started in the container";
  unstage(b.volume().volume_id(), staging2);
  start_host();
  st = stage(b.volume().volume_id(), staging2);
  EXPECT_TRUE(st.ok()) << "with a new host: " << st.error_message();
  EXPECT_TRUE(unstage(b.volume().volume_id(), staging2).ok());
  EXPECT_TRUE(del(b.volume().volume_id()).ok());

  v.w.finish();
  EXPECT_EQ(v.w.error, 0) << v.w.what << ": " << std::strerror(v.w.error);
  st = unstage(v.id, v.staging);
  ASSERT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
  ASSERT_TRUE(stage(v.id, v.staging).ok());
  EXPECT_TRUE(v.w.verify(v.staging + "/records"));
  ASSERT_TRUE(unstage(v.id, v.staging).ok());
  EXPECT_TRUE(del(v.id).ok());
}

}  // namespace
