// rbdgw-csi end to end, issue 10 items 1 (controller side) and 6:
//  - DeleteVolume checks use first, removes the image (through the trash),
//    then the key: a refused delete changes nothing, a retried one finishes;
//  - ControllerPublishVolume refuses a single-writer volume whose exclusive
//    lock an rbdgw gateway on another node holds (naming that node), and
//    ControllerUnpublishVolume fences the gateway of the node it detaches
//    from (librbd blocklists it), so another node can stage.
// A second node is a second daemon (--node-id node-b) in a mount namespace
// of its own with its own /run/rbdgw (run dirs, secret store), as on
// another machine; its mounts are read through /proc/<pid>/root. (Loop
// devices are the one thing the two "nodes" share: node b's unstage also
// lets go of node a's loop device on the same FUSE path, which node a,
// fenced by then, no longer needs.)
#include <sched.h>

#include <rbd/librbd.h>

#include "csi_harness.hpp"

namespace {

constexpr const char* kNodeA = "e2e-node";  // the fixture's daemon
constexpr const char* kNodeB = "node-b";

class CsiDeletePublish : public CsiE2E {
 protected:
  static inline pid_t daemon_b = 0;
  static inline std::shared_ptr<grpc::Channel> channel_b;
  static inline std::string sock_b;

  static void TearDownTestSuite() {
    stop_node_b();
    CsiE2E::TearDownTestSuite();
  }

  // The second node: its own mount namespace, /run/rbdgw and state dir.
  static void start_node_b() {
    sock_b = tmp + "/csi-b.sock";
    ::unlink(sock_b.c_str());
    daemon_b = ::fork();
    if (daemon_b == 0) {
      std::string log = tmp + "/csi-b.log";
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      if (::unshare(CLONE_NEWNS) != 0 ||
          ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
        ::perror("unshare/mount --make-rprivate");
        _exit(126);
      }
      // Node b has no mounts of node a's: drop the copies this namespace got
      // of those under /run/rbdgw (a shadowed copy of a's FUSE mount at the
      // same path would look like b's own to a mountinfo check).
      for (const auto& m : mounts_under(attach::kRunRoot)) ::umount2(m.c_str(), MNT_DETACH);
      ::umount2(attach::kRunRoot, MNT_DETACH);
      ::mkdir(attach::kRunRoot, 0700);
      if (::mount("tmpfs", attach::kRunRoot, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700") != 0) {
        ::perror("mount tmpfs /run/rbdgw");
        _exit(126);
      }
      std::vector<std::string> args = {csi_bin, "--endpoint=unix://" + sock_b,
                                       "--cluster-config=" + tmp + "/clusters.json",
                                       "--kms-config=" + tmp + "/kms.json",
                                       std::string("--node-id=") + kNodeB, "--attach=userspace",
                                       "--state-dir=" + tmp + "/state-b", "--allowed-root=" + root};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 300 && !fs::exists(sock_b); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(fs::exists(sock_b)) << read_file(tmp + "/csi-b.log");
    channel_b = grpc::CreateChannel("unix:" + sock_b, grpc::InsecureChannelCredentials());
  }

  static void stop_node_b() {
    if (daemon_b <= 0) return;
    ::kill(daemon_b, SIGTERM);
    int st = 0;
    ::waitpid(daemon_b, &st, 0);
    daemon_b = 0;
  }

  // A path as node b sees it (its mounts are in its own namespace).
  static std::string on_b(const std::string& path) {
    return "/proc/" + std::to_string(daemon_b) + "/root" + path;
  }

  // Runs fn with the harness's helpers talking to node b.
  template <typename Fn>
  static auto as_node_b(Fn fn) {
    auto saved = channel;
    channel = channel_b;
    struct Restore {
      std::shared_ptr<grpc::Channel> c;
      ~Restore() { channel = c; }
    } restore{saved};
    return fn();
  }

  static grpc::Status del_with_passphrase(const std::string& id) {
    auto stub = v1::Controller::NewStub(channel);
    v1::DeleteVolumeRequest req;
    req.set_volume_id(id);
    auto s = secrets(true);
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::DeleteVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->DeleteVolume(&ctx, req, &resp);
  }

  static grpc::Status controller_publish(const std::string& id, const std::string& node,
                                         bool ro = false, v1::VolumeCapability cap = mount_cap(),
                                         bool with_secrets = true) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerPublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_node_id(node);
    req.set_readonly(ro);
    *req.mutable_volume_capability() = cap;
    auto s = secrets();
    if (with_secrets) req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ControllerPublishVolumeResponse resp;
    return call(
        [&](grpc::ClientContext* c, const auto& r, auto* p) {
          return stub->ControllerPublishVolume(c, r, p);
        },
        req, &resp);
  }

  static grpc::Status controller_unpublish(const std::string& id, const std::string& node,
                                           bool with_secrets = true) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerUnpublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_node_id(node);
    auto s = secrets();
    if (with_secrets) req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ControllerUnpublishVolumeResponse resp;
    return call(
        [&](grpc::ClientContext* c, const auto& r, auto* p) {
          return stub->ControllerUnpublishVolume(c, r, p);
        },
        req, &resp);
  }

  // The image's metadata, or nullopt when it does not exist under its name.
  static std::optional<std::map<std::string, std::string>> image_meta(const std::string& img) {
    auto io = connect().open_ioctx("rbd");
    try {
      return rbd::Image::open(io, img, {}, rbd::Image::Mode::read_only).list_meta();
    } catch (const Error& e) {
      if (e.code() == ENOENT) return std::nullopt;
      throw;
    }
  }

  // Trash entries (id) of the pool whose name is img.
  static std::vector<std::string> trash_ids(const std::string& img) {
    auto io = connect().open_ioctx("rbd");
    std::vector<rbd_trash_image_info_t> e(64);
    size_t n = e.size();
    int r;
    while ((r = rbd_trash_list(io.handle(), e.data(), &n)) == -ERANGE) e.resize(n);
    EXPECT_GE(r, 0) << "rbd_trash_list";
    std::vector<std::string> out;
    for (size_t i = 0; i < n && r >= 0; ++i)
      if (img == e[i].name) out.push_back(e[i].id);
    if (r >= 0) rbd_trash_list_cleanup(e.data(), n);
    return out;
  }

  // write + fsync of path: 0 or the errno of the first failing call, within
  // 60 s (-1 when it hangs longer).
  static int write_and_fsync(const std::string& path, const std::string& data) {
    auto f = std::async(std::launch::async, [=] {
      int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) return errno;
      int err = 0;
      if (::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) err = errno;
      if (!err && ::fsync(fd) != 0) err = errno;
      ::close(fd);
      return err;
    });
    if (f.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      f.wait();  // std::async's future joins anyway; say that it hung
      return -1;
    }
    return f.get();
  }

  static bool filter_available() {
    const char* f = std::getenv("RBDGW_FILTER");
    return node_path_available() && f && fs::exists(f);
  }
};

// ------------------------------------------------------------ item 6

TEST_F(CsiDeletePublish, DeleteOfAnEncryptedVolumeInUseChangesNothingAndARetryFinishes) {
  if (!filter_available()) GTEST_SKIP() << "needs the rbd plugin, the luks2 filter, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-del-busy"), params(true), 64 * MiB, &a, secrets(true));
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  const std::string staging = staging_dir(unique("del-busy"));
  auto s = stage(id, staging, mount_cap(), true);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  write_file(staging + "/data.txt", "acked before the delete\n");
  const auto before = image_meta(img);
  ASSERT_TRUE(before);
  ASSERT_EQ(before->at("rbd.csi.ceph.com/encrypted"), "encrypted");
  ASSERT_TRUE(before->count("rbd.csi.ceph.com/dek"));

  // In use (staged: the gateway watches the image): FAILED_PRECONDITION,
  // naming who holds it, and nothing changed.
  s = del_with_passphrase(id);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("in use"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find(kNodeA), std::string::npos)
      << "the refusal does not name the node whose gateway holds the volume: " << s.error_message();
  const auto after = image_meta(img);
  ASSERT_TRUE(after) << "the image of a volume in use was removed";
  EXPECT_EQ(*after, *before) << "a refused DeleteVolume changed the image's metadata (DEK, state)";
  EXPECT_TRUE(trash_ids(img).empty()) << "a refused DeleteVolume left the image in the trash";

  // The volume still works: unstage, stage again, the data is there.
  ASSERT_TRUE(unstage(id, staging).ok());
  s = stage(id, staging, mount_cap(), true);
  ASSERT_TRUE(s.ok()) << "the volume no longer stages after a refused delete: " << s.error_message();
  EXPECT_EQ(read_file(staging + "/data.txt"), "acked before the delete\n");
  ASSERT_TRUE(unstage(id, staging).ok());

  // Not in use: the delete removes everything; a second one is OK too.
  s = del_with_passphrase(id);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  EXPECT_FALSE(image_meta(img)) << "the image is still there";
  EXPECT_TRUE(trash_ids(img).empty()) << "the image was left in the trash";
  s = del_with_passphrase(id);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

// A delete interrupted after the image went to the trash (before the key
// and the image were removed for good): the retry finishes it.
TEST_F(CsiDeletePublish, DeleteInterruptedAfterTheImageWentToTheTrashIsFinishedByTheRetry) {
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-del-trash"), params(true), 16 * MiB, &a, secrets(true));
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  {
    auto io = connect().open_ioctx("rbd");
    ASSERT_EQ(rbd_trash_move(io.handle(), img.c_str(), 0), 0);  // where the delete stopped
  }
  ASSERT_EQ(trash_ids(img).size(), 1u);
  auto s = del_with_passphrase(id);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(trash_ids(img).empty()) << "the retried delete left the image in the trash";
  EXPECT_FALSE(image_meta(img));
  EXPECT_TRUE(del(id).ok());  // and without the KMS secret: still OK
}

// Held open by a client that is not ours (no stage): refused the same way.
TEST_F(CsiDeletePublish, DeleteOfAVolumeAnotherClientHoldsOpenIsRefused) {
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-del-watch"), params(true), 16 * MiB, &a, secrets(true));
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  const auto before = image_meta(img);
  ASSERT_TRUE(before);
  {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto holder = rbd::Image::open(io, img);  // a watcher of another client
    auto s = del_with_passphrase(id);
    EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(image_meta(img), before);
    EXPECT_TRUE(trash_ids(img).empty());
  }
  EXPECT_TRUE(del_with_passphrase(id).ok());
  EXPECT_FALSE(image_meta(img));
}

// ------------------------------------------------- item 1, controller

TEST_F(CsiDeletePublish, ControllerAdvertisesPublishAndChecksItsArguments) {
  {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerGetCapabilitiesResponse r;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ControllerGetCapabilities(&ctx, {}, &r).ok());
    bool publish = false;
    for (const auto& c : r.capabilities())
      publish |= c.rpc().type() == v1::ControllerServiceCapability::RPC::PUBLISH_UNPUBLISH_VOLUME;
    EXPECT_TRUE(publish) << "PUBLISH_UNPUBLISH_VOLUME not advertised";
  }
  const std::string unknown =
      "0001-0004-test-0000000000000001-00000000-0000-5000-8000-000000000000";
  EXPECT_CODE(controller_publish(unknown, kNodeB), StatusCode::NOT_FOUND);
  EXPECT_CODE(controller_publish("", kNodeB), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(controller_publish("pvc-123", kNodeB), StatusCode::NOT_FOUND);  // names no volume
  EXPECT_CODE(controller_publish(unknown, ""), StatusCode::INVALID_ARGUMENT);
  {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerPublishVolumeRequest req;  // no capability
    req.set_volume_id(unknown);
    req.set_node_id(kNodeB);
    v1::ControllerPublishVolumeResponse resp;
    grpc::ClientContext ctx;
    const auto s = stub->ControllerPublishVolume(&ctx, req, &resp);  // EXPECT_CODE evaluates twice
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  }
  auto multi = mount_cap();
  multi.mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
  EXPECT_CODE(controller_publish(unknown, kNodeB, false, multi), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(controller_unpublish("", kNodeB), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(controller_unpublish(unknown, kNodeB).ok()) << "a gone volume is unpublished";

  // A volume nobody holds publishes to any node, and unpublishes.
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-pub-free"), params(), 16 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  auto s = controller_publish(id, kNodeB);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(controller_publish(id, kNodeB).ok());  // idempotent
  EXPECT_TRUE(controller_unpublish(id, kNodeB).ok());
  EXPECT_TRUE(controller_unpublish(id, kNodeB).ok());
  EXPECT_TRUE(del(id).ok());
  EXPECT_TRUE(controller_unpublish(id, kNodeB).ok()) << "a deleted volume is unpublished";
}

// Node a stages read-write; publishing to node b is refused naming node a;
// node a is cut off (its gateway stopped, alive); the unpublish from node a
// fences its gateway: its writes fail, node b stages and sees node a's
// acknowledged data.
TEST_F(CsiDeletePublish, PublishToASecondNodeIsRefusedAndUnpublishFencesTheFirst) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-fence"), params(), 64 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");

  ASSERT_TRUE(controller_publish(id, kNodeA).ok());
  const std::string staging_a = staging_dir(unique("fence-a"));
  auto s = stage(id, staging_a);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  ASSERT_EQ(write_and_fsync(staging_a + "/acked.txt", "acked on node a before the fence\n"), 0);

  // The lock is node a's: publishing read-write to node b is refused, naming it.
  s = controller_publish(id, kNodeB);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find(kNodeA), std::string::npos)
      << "the refusal does not name the node holding the volume: " << s.error_message();
  EXPECT_TRUE(controller_publish(id, kNodeA).ok()) << "publish to the holder's own node";
  // Unpublish from a node that does not hold it fences nobody.
  EXPECT_TRUE(controller_unpublish(id, kNodeB).ok());
  ASSERT_EQ(write_and_fsync(staging_a + "/still.txt", "node a still writes\n"), 0);

  // Node a is cut off: its gateway is alive but stopped. Kubernetes declares
  // the node gone and detaches: ControllerUnpublish(node a) fences it.
  const attach::Stash st_a = attach::load_stash(staging_a + ".rbdgw.json");
  ASSERT_GT(st_a.gateway.pid, 0);
  ASSERT_EQ(::kill(st_a.gateway.pid, SIGSTOP), 0);
  s = controller_unpublish(id, kNodeA);
  ::kill(st_a.gateway.pid, SIGCONT);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  EXPECT_NE(write_and_fsync(staging_a + "/after-fence.txt", std::string(1 << 20, 'f')), 0)
      << "node a's fenced gateway still acknowledges writes";

  // Node b: publish and stage now work, and see node a's acknowledged data.
  start_node_b();
  s = controller_publish(id, kNodeB);
  EXPECT_TRUE(s.ok()) << s.error_message();
  const std::string staging_b = staging_dir(unique("fence-b"));
  for (int i = 0; i < 60; ++i) {  // the fenced client's watch goes with the next osdmap
    s = as_node_b([&] { return stage(id, staging_b); });
    if (s.ok() || s.error_code() != StatusCode::FAILED_PRECONDITION) break;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (!s.ok()) {
    const std::string diag = "(losetup -l; grep rbdgw /proc/" + std::to_string(daemon_b) +
                             "/mountinfo; ls -la /proc/" + std::to_string(daemon_b) + "/root/run/rbdgw/*/; cat /proc/" + std::to_string(daemon_b) + "/root/run/rbdgw/*/*.log) >" +
                             tmp + "/diag.txt 2>&1";
    std::system(diag.c_str());
  }
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi-b.log") << "\n"
                      << read_file(tmp + "/diag.txt");
  EXPECT_EQ(read_file(on_b(staging_b) + "/acked.txt"), "acked on node a before the fence\n");
  EXPECT_EQ(read_file(on_b(staging_b) + "/still.txt"), "node a still writes\n");
  // Now node a is refused.
  s = controller_publish(id, kNodeA);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find(kNodeB), std::string::npos) << s.error_message();

  s = as_node_b([&] { return unstage(id, staging_b); });
  EXPECT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi-b.log");
  stop_node_b();
  // Node a comes back: its unstage tears the fenced volume down.
  s = unstage(id, staging_a);
  EXPECT_TRUE(s.ok() || s.error_code() == StatusCode::DATA_LOSS) << s.error_message();
  if (!s.ok()) {
    EXPECT_TRUE(unstage(id, staging_a).ok());
  }
  EXPECT_TRUE(mounts_under(root).empty());
  for (int i = 0; i < 45 && !del(id).ok(); ++i)  // the fenced watch may linger
    std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_FALSE(image_meta(img));
}

// A PersistentVolume made before attachRequired was true (or a StorageClass
// without a controller-publish secret) reaches the controller without cephx
// credentials: its pod must still get the volume, and nobody is fenced.
TEST_F(CsiDeletePublish, WithoutCredentialsPublishAndUnpublishSucceedAndFenceNobody) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-nosecret"), params(), 64 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string staging = staging_dir(unique("nosecret"));
  auto s = controller_publish(id, kNodeA, false, mount_cap(), false);
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = stage(id, staging);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  s = controller_publish(id, kNodeB, false, mount_cap(), false);
  EXPECT_TRUE(s.ok()) << "not checked without credentials (the node's stage still refuses): "
                      << s.error_message();
  s = controller_unpublish(id, kNodeA, false);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_NE(read_file(tmp + "/csi.log").find("cannot be fenced"), std::string::npos)
      << "the log does not say that nothing was fenced";
  EXPECT_EQ(write_and_fsync(staging + "/after.txt", "node a still writes\n"), 0)
      << "node a's gateway was fenced without credentials";
  EXPECT_TRUE(unstage(id, staging).ok());
  EXPECT_TRUE(del(id).ok());
}

}  // namespace
