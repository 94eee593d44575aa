// The CsiE2E fixture shared by the rbdgw-csi end-to-end test programs:
// the real daemon on a unix socket, a client of our own (the generated stubs),
// the test cluster from $CEPH_CONF. Each program that includes it starts
// its own daemon (SetUpTestSuite) and cleans up after itself.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "attach/attach.hpp"
#include "attach/process.hpp"
#include "common/error.hpp"
#include "csi.grpc.pb.h"
#include "rbd/cluster.hpp"
#include "rbd/image.hpp"

namespace fs = std::filesystem;
namespace v1 = ::csi::v1;
using grpc::StatusCode;
using namespace rbdgw;

namespace {

constexpr std::uint64_t MiB = 1024 * 1024;

std::string read_file(const std::string& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

[[maybe_unused]] void write_file(const std::string& p, const std::string& data) {
  std::ofstream(p) << data;
  int fd = ::open(p.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << p;
  ::fsync(fd);
  ::close(fd);
}

// Mount points under dir, deepest first.
std::vector<std::string> mounts_under(const std::string& dir) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string a, b, c, d, mnt;
    ls >> a >> b >> c >> d >> mnt;
    if (mnt.rfind(dir + "/", 0) == 0) out.push_back(mnt);
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

// Test cluster settings, from $CEPH_CONF and its admin keyring.
struct ClusterInfo {
  std::string conf, mon_host, key;
  static ClusterInfo load() {
    ClusterInfo c;
    const char* conf = std::getenv("CEPH_CONF");
    if (!conf) return c;
    c.conf = conf;
    std::smatch m;
    std::string text = read_file(c.conf);
    if (std::regex_search(text, m, std::regex(R"(mon_host\s*=\s*(\S+))"))) c.mon_host = m[1];
    std::string keyring = read_file(fs::path(c.conf).parent_path() / "ceph.client.admin.keyring");
    if (std::regex_search(keyring, m, std::regex(R"(key\s*=\s*(\S+))"))) c.key = m[1];
    return c;
  }
};

class CsiE2E : public ::testing::Test {
 protected:
  static inline ClusterInfo cluster;
  static inline std::string tmp, root, state, sock, csi_bin;
  static inline pid_t daemon = 0;
  static inline std::shared_ptr<grpc::Channel> channel;
  static inline std::set<std::string> images;      // created, removed at the end
  static inline std::set<std::string> volume_ids;  // their IDs
  static inline int counter = 0;

  static void SetUpTestSuite() {
    cluster = ClusterInfo::load();
    if (const char* b = std::getenv("RBDGW_CSI")) csi_bin = b;
    if (cluster.mon_host.empty() || cluster.key.empty() || csi_bin.empty()) return;
    char t[] = "/tmp/rbdgw-csi-e2e.XXXXXX";
    tmp = ::mkdtemp(t);
    root = tmp + "/kubelet";
    state = tmp + "/state";
    sock = tmp + "/csi.sock";
    fs::create_directories(root);
    std::ofstream(tmp + "/clusters.json")
        << R"([{"clusterID":"test","monitors":[")" << cluster.mon_host << R"("]}])";
    std::ofstream(tmp + "/kms.json") << R"({"meta1":{"encryptionKMSType":"metadata"}})";
    start_daemon();
  }

  static void TearDownTestSuite() {
    if (tmp.empty()) return;
    stop_daemon(SIGTERM);
    // Unmount publish targets, detach whatever a stash still records, then
    // unmount any leftovers.
    for (const auto& m : mounts_under(root + "/pods")) ::umount2(m.c_str(), MNT_DETACH);
    std::vector<std::string> stashes;
    std::error_code ec;
    for (const auto& d : fs::directory_iterator(root + "/plugins", ec))
      if (fs::exists(d.path() / "globalmount.rbdgw.json"))
        stashes.push_back(d.path() / "globalmount.rbdgw.json");
    for (const auto& st : stashes) {
      try {
        attach::detach(st);
      } catch (const std::exception& ex) {
        ADD_FAILURE() << "cleanup: " << ex.what();
      }
    }
    for (const auto& m : mounts_under(tmp)) ::umount2(m.c_str(), MNT_DETACH);
    // Processes a stash never recorded (e.g. a gateway spawned just before
    // a kill -9 of the daemon): found by our volumes' run dirs.
    for (const auto& id : volume_ids) {
      const std::string run = std::string(attach::kRunRoot) + "/" + id;
      for (const auto& p : fs::directory_iterator("/proc", ec)) {
        const std::string cmd = read_file(p.path() / "cmdline");
        if (cmd.find(run + "/") != std::string::npos) {
          ADD_FAILURE() << "cleanup: an unrecorded process was left: " << p.path().filename();
          ::kill(std::stoi(p.path().filename()), SIGKILL);
        }
      }
      for (const auto& m : mounts_under(run)) ::umount2(m.c_str(), MNT_DETACH);
      fs::remove_all(run, ec);
    }
    try {
      auto c = connect();
      auto io = c.open_ioctx("rbd");
      for (const auto& img : images) {
        // A killed client's watch lingers until the OSD times it out (30 s).
        for (int i = 0;; ++i) {
          try {
            rbd::remove_image(io, img);
            break;
          } catch (const Error& e) {
            if (e.code() != EBUSY || i == 45) throw;
            std::this_thread::sleep_for(std::chrono::seconds(1));
          }
        }
      }
    } catch (const std::exception& ex) {
      ADD_FAILURE() << "cleanup: " << ex.what();
    }
    fs::remove_all(tmp, ec);
  }

  void SetUp() override {
    if (csi_bin.empty() || cluster.key.empty()) GTEST_SKIP() << "needs RBDGW_CSI and CEPH_CONF";
  }

  static rbd::Cluster connect() {
    rbd::ClusterOptions o;
    o.conf_file = cluster.conf;
    return rbd::Cluster::connect(o);
  }

  // in_child runs in the daemon's process before it executes (a test that
  // puts it into a cgroup, say).
  static void start_daemon(const std::function<void()>& in_child = {}) {
    ::unlink(sock.c_str());  // a stale socket of a killed daemon
    daemon = ::fork();
    if (daemon == 0) {
      if (in_child) in_child();
      std::string log = tmp + "/csi.log";
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<std::string> args = {csi_bin, "--endpoint=unix://" + sock,
                                       "--cluster-config=" + tmp + "/clusters.json",
                                       "--kms-config=" + tmp + "/kms.json",
                                       "--node-id=e2e-node", "--attach=userspace",
                                       "--state-dir=" + state, "--allowed-root=" + root};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 300 && !fs::exists(sock); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(fs::exists(sock)) << read_file(tmp + "/csi.log");
    channel = grpc::CreateChannel("unix:" + sock, grpc::InsecureChannelCredentials());
  }

  static void stop_daemon(int sig) {
    if (daemon <= 0) return;
    ::kill(daemon, sig);
    int st = 0;
    ::waitpid(daemon, &st, 0);
    daemon = 0;
  }

  // ----------------------------------------------------------- helpers

  static std::map<std::string, std::string> secrets(bool with_passphrase = false) {
    std::map<std::string, std::string> s{{"userID", "admin"}, {"userKey", cluster.key}};
    if (with_passphrase) s["encryptionPassphrase"] = "kms-secret-for-e2e";
    return s;
  }

  static v1::VolumeCapability mount_cap(const std::string& fs = "ext4") {
    v1::VolumeCapability c;
    c.mutable_mount()->set_fs_type(fs);
    c.mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    return c;
  }

  static std::string unique(const std::string& p) {
    return p + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  }

  template <typename Req, typename Resp, typename Call>
  static grpc::Status call(Call fn, const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    return fn(&ctx, req, resp);
  }

  static grpc::Status create(const std::string& name, std::map<std::string, std::string> params,
                             std::int64_t size, v1::CreateVolumeResponse* resp,
                             std::map<std::string, std::string> sec = secrets()) {
    auto stub = v1::Controller::NewStub(channel);
    v1::CreateVolumeRequest req;
    req.set_name(name);
    req.mutable_capacity_range()->set_required_bytes(size);
    *req.add_volume_capabilities() = mount_cap();
    req.mutable_parameters()->insert(params.begin(), params.end());
    req.mutable_secrets()->insert(sec.begin(), sec.end());
    grpc::ClientContext ctx;
    grpc::Status s = stub->CreateVolume(&ctx, req, resp);
    if (s.ok()) {
      images.insert(resp->volume().volume_context().at("imageName"));
      volume_ids.insert(resp->volume().volume_id());
    }
    return s;
  }

  static std::map<std::string, std::string> params(bool encrypted = false) {
    std::map<std::string, std::string> p{{"clusterID", "test"}, {"pool", "rbd"},
                                         {"imageFeatures", "layering,exclusive-lock"}};
    if (encrypted) {
      p["encrypted"] = "true";
      p["encryptionKMSID"] = "meta1";
    }
    return p;
  }

  static grpc::Status del(const std::string& id) {
    auto stub = v1::Controller::NewStub(channel);
    v1::DeleteVolumeRequest req;
    req.set_volume_id(id);
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::DeleteVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->DeleteVolume(&ctx, req, &resp);
  }

  static grpc::Status stage(const std::string& id, const std::string& staging,
                            const v1::VolumeCapability& cap = mount_cap(), bool passphrase = false) {
    auto stub = v1::Node::NewStub(channel);
    v1::NodeStageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    *req.mutable_volume_capability() = cap;
    auto s = secrets(passphrase);
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::NodeStageVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->NodeStageVolume(&ctx, req, &resp);
  }

  static grpc::Status unstage(const std::string& id, const std::string& staging) {
    auto stub = v1::Node::NewStub(channel);
    v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    v1::NodeUnstageVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->NodeUnstageVolume(&ctx, req, &resp);
  }

  static grpc::Status publish(const std::string& id, const std::string& staging,
                              const std::string& target, bool ro = false,
                              const v1::VolumeCapability& cap = mount_cap()) {
    auto stub = v1::Node::NewStub(channel);
    v1::NodePublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    req.set_target_path(target);
    req.set_readonly(ro);
    *req.mutable_volume_capability() = cap;
    v1::NodePublishVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->NodePublishVolume(&ctx, req, &resp);
  }

  static grpc::Status unpublish(const std::string& id, const std::string& target) {
    auto stub = v1::Node::NewStub(channel);
    v1::NodeUnpublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_target_path(target);
    v1::NodeUnpublishVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->NodeUnpublishVolume(&ctx, req, &resp);
  }

  static std::string staging_dir(const std::string& name) {
    std::string d = root + "/plugins/" + name + "/globalmount";
    fs::create_directories(d);
    return d;
  }

  static bool node_path_available() {
    const char* plugin = std::getenv("RBDGW_PLUGIN");
    const char* fuse = std::getenv("RBDGW_FUSE_EXPORTER");
    return plugin && fs::exists(plugin) && fuse && fs::exists(fuse) && fs::exists("/dev/fuse");
  }
};

}  // namespace

#define EXPECT_CODE(status, code) \
  EXPECT_EQ((status).error_code(), (code)) << (status).error_message()

