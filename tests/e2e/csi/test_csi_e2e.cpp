// rbdgw-csi end to end: our own gRPC client (the generated stubs) drives
// the real daemon against the test cluster, through the real attach path.
// Every bad input is checked for its gRPC code. Nothing is left behind:
// TearDownTestSuite stops the daemon, detaches whatever a stash still
// records, unmounts what is left under the temp dir and removes the images.
#include "csi_harness.hpp"

namespace {

// ------------------------------------------------------------- identity

TEST_F(CsiE2E, IdentityInfoCapabilitiesProbe) {
  auto stub = v1::Identity::NewStub(channel);
  {
    v1::GetPluginInfoResponse r;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetPluginInfo(&ctx, {}, &r).ok());
    EXPECT_EQ(r.name(), "rbd.gw.csi.rbdgw.io");
    EXPECT_FALSE(r.vendor_version().empty());
  }
  {
    v1::GetPluginCapabilitiesResponse r;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetPluginCapabilities(&ctx, {}, &r).ok());
    bool controller = false, online = false;
    for (const auto& c : r.capabilities()) {
      controller |= c.service().type() == v1::PluginCapability::Service::CONTROLLER_SERVICE;
      online |= c.volume_expansion().type() == v1::PluginCapability::VolumeExpansion::ONLINE;
    }
    EXPECT_TRUE(controller);
    EXPECT_TRUE(online);
  }
  {
    v1::ProbeResponse r;
    grpc::ClientContext ctx;
    auto s = stub->Probe(&ctx, {}, &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(r.ready().value());
  }
  {
    auto node = v1::Node::NewStub(channel);
    v1::NodeGetInfoResponse r;
    grpc::ClientContext ctx;
    ASSERT_TRUE(node->NodeGetInfo(&ctx, {}, &r).ok());
    EXPECT_EQ(r.node_id(), "e2e-node");
  }
}

// ----------------------------------------------------------- controller

TEST_F(CsiE2E, CreateIsIdempotentByNameAndDeleteRemovesImage) {
  const std::string name = unique("pvc-idem");
  v1::CreateVolumeResponse a, b, c;
  ASSERT_TRUE(create(name, params(), 10 * MiB + 1, &a).ok());
  EXPECT_EQ(a.volume().capacity_bytes(), 11 * MiB);  // rounded up to MiB
  ASSERT_TRUE(create(name, params(), 10 * MiB + 1, &b).ok());
  EXPECT_EQ(a.volume().volume_id(), b.volume().volume_id());
  EXPECT_EQ(a.volume().volume_id().substr(0, 15), "0001-0004-test-");

  // Same name, other parameters or an incompatible size: ALREADY_EXISTS.
  auto other = params();
  other["imageFeatures"] = "layering";
  EXPECT_CODE(create(name, other, 10 * MiB, &c), StatusCode::ALREADY_EXISTS);
  EXPECT_CODE(create(name, params(), 20 * MiB, &c), StatusCode::ALREADY_EXISTS);

  // The image exists with the recorded name.
  const std::string img = a.volume().volume_context().at("imageName");
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    EXPECT_EQ(image.size(), 11 * MiB);
    EXPECT_EQ(image.get_meta("rbdgw.csi/name").value_or(""), name);
  }
  ASSERT_TRUE(del(a.volume().volume_id()).ok());
  ASSERT_TRUE(del(a.volume().volume_id()).ok());  // idempotent
  auto io = connect().open_ioctx("rbd");
  EXPECT_THROW(rbd::Image::open(io, img), Error);
}

TEST_F(CsiE2E, ControllerExpandGrowsTheImage) {
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-grow"), params(), 8 * MiB, &a).ok());
  auto stub = v1::Controller::NewStub(channel);
  v1::ControllerExpandVolumeRequest req;
  req.set_volume_id(a.volume().volume_id());
  req.mutable_capacity_range()->set_required_bytes(16 * MiB);
  auto s = secrets();
  req.mutable_secrets()->insert(s.begin(), s.end());
  v1::ControllerExpandVolumeResponse r;
  {
    grpc::ClientContext ctx;
    auto st = stub->ControllerExpandVolume(&ctx, req, &r);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(r.capacity_bytes(), 16 * MiB);
  EXPECT_TRUE(r.node_expansion_required());
  {  // smaller: no-op, reports the current size
    req.mutable_capacity_range()->set_required_bytes(4 * MiB);
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ControllerExpandVolume(&ctx, req, &r).ok());
    EXPECT_EQ(r.capacity_bytes(), 16 * MiB);
  }
  {
    req.mutable_capacity_range()->set_required_bytes(32 * MiB + 1);
    req.mutable_capacity_range()->set_limit_bytes(32 * MiB + 2);
    grpc::ClientContext ctx;
    EXPECT_CODE(stub->ControllerExpandVolume(&ctx, req, &r), StatusCode::OUT_OF_RANGE);
  }
  EXPECT_TRUE(del(a.volume().volume_id()).ok());
}

TEST_F(CsiE2E, ControllerBadInputGetsTheSpecCodes) {
  v1::CreateVolumeResponse r;
  auto p = params();
  EXPECT_CODE(create("", p, MiB, &r), StatusCode::INVALID_ARGUMENT);
  p["clusterID"] = "nope";
  EXPECT_CODE(create(unique("bad"), p, MiB, &r), StatusCode::INVALID_ARGUMENT);
  p = params();
  p["pool"] = "no-such-pool";
  EXPECT_CODE(create(unique("bad"), p, MiB, &r), StatusCode::NOT_FOUND);
  p = params();
  p["colour"] = "red";
  EXPECT_CODE(create(unique("bad"), p, MiB, &r), StatusCode::INVALID_ARGUMENT);
  p = params(true);
  p["encryptionKMSID"] = "no-such-kms";
  EXPECT_CODE(create(unique("bad"), p, MiB, &r, secrets(true)), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(create(unique("bad"), params(), -1, &r), StatusCode::OUT_OF_RANGE);
  EXPECT_CODE(create(unique("bad"), params(), MiB, &r, {{"userID", "admin"}}),
              StatusCode::INVALID_ARGUMENT);
  auto wrong = secrets();
  wrong["userKey"] = "AQBvaXvaGQAAAAAAAAAAAAAAAAAAAAAAAAAAAA==";
  EXPECT_CODE(create(unique("bad"), params(), MiB, &r, wrong), StatusCode::PERMISSION_DENIED);

  // Capabilities: missing, multi-node.
  auto stub = v1::Controller::NewStub(channel);
  {
    v1::CreateVolumeRequest req;
    req.set_name(unique("bad"));
    req.mutable_parameters()->insert({{"clusterID", "test"}, {"pool", "rbd"}});
    grpc::ClientContext ctx;
    EXPECT_CODE(stub->CreateVolume(&ctx, req, &r), StatusCode::INVALID_ARGUMENT);
    auto* c = req.add_volume_capabilities();
    *c = mount_cap();
    c->mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
    grpc::ClientContext ctx2;
    EXPECT_CODE(stub->CreateVolume(&ctx2, req, &r), StatusCode::INVALID_ARGUMENT);
  }
  // IDs: missing -> INVALID_ARGUMENT; malformed or unknown names no volume
  // -> NOT_FOUND / OK (test_csi_conformance_codes.cpp has the rest).
  EXPECT_CODE(del(""), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(del("pvc-123"), StatusCode::OK);
  const std::string unknown = "0001-0004-test-0000000000000001-" + std::string("00000000-0000-5000-8000-000000000000");
  EXPECT_TRUE(del(unknown).ok());
  {
    v1::ValidateVolumeCapabilitiesRequest req;
    req.set_volume_id(unknown);
    *req.add_volume_capabilities() = mount_cap();
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ValidateVolumeCapabilitiesResponse resp;
    grpc::ClientContext ctx;
    EXPECT_CODE(stub->ValidateVolumeCapabilities(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }
  {
    v1::ControllerExpandVolumeRequest req;
    req.set_volume_id(unknown);
    req.mutable_capacity_range()->set_required_bytes(MiB);
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ControllerExpandVolumeResponse resp;
    grpc::ClientContext ctx;
    EXPECT_CODE(stub->ControllerExpandVolume(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }
}

// ---------------------------------------------------------------- node

TEST_F(CsiE2E, NodeBadInputGetsTheSpecCodes) {
  const std::string id = "0001-0004-test-0000000000000001-00000000-0000-5000-8000-000000000000";
  const std::string staging = staging_dir(unique("bad"));
  EXPECT_CODE(stage("", staging), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stage("garbage", staging), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stage(id, ""), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stage(id, "/etc"), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stage(id, root + "/../etc"), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stage(id, staging, v1::VolumeCapability()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stage(id, staging), StatusCode::NOT_FOUND);  // no such image
  EXPECT_CODE(publish(id, staging, root + "/pods/x/mount"), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(publish(id, staging, "/tmp/x"), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(unpublish(id, ""), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(unpublish(id, root + "/pods/never/mount").ok());
  EXPECT_TRUE(unstage(id, staging).ok());  // not staged: OK
  EXPECT_FALSE(fs::exists(state + "/volumes/" + id));
}

TEST_F(CsiE2E, StagePublishWriteUnstageRestage) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-fs"), params(), 64 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string staging = staging_dir(unique("fs"));
  const std::string target = root + "/pods/p1/volumes/" + unique("t") + "/mount";

  auto s = stage(id, staging);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  ASSERT_TRUE(stage(id, staging).ok());  // idempotent
  EXPECT_CODE(stage(id, staging_dir(unique("other"))), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(stage(id, staging, mount_cap("xfs")), StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(publish(id, staging, target).ok());
  ASSERT_TRUE(publish(id, staging, target).ok());  // idempotent
  EXPECT_CODE(publish(id, staging, target, true), StatusCode::ALREADY_EXISTS);
  write_file(target + "/hello.txt", "hello from rbdgw-csi\n");
  fs::create_directories(target + "/dir");
  write_file(target + "/dir/b.bin", std::string(300000, 'x'));

  {  // stats
    auto node = v1::Node::NewStub(channel);
    v1::NodeGetVolumeStatsRequest req;
    req.set_volume_id(id);
    req.set_volume_path(target);
    v1::NodeGetVolumeStatsResponse r;
    grpc::ClientContext ctx;
    auto st = node->NodeGetVolumeStats(&ctx, req, &r);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_GE(r.usage_size(), 1);
    EXPECT_GT(r.usage(0).total(), 40 * (std::int64_t)MiB);
    EXPECT_GT(r.usage(0).used(), 0);
    EXPECT_FALSE(r.volume_condition().abnormal()) << r.volume_condition().message();
  }
  // Unstage while published: refused, nothing changed.
  EXPECT_CODE(unstage(id, staging), StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(unpublish(id, target).ok());
  EXPECT_FALSE(fs::exists(target));
  ASSERT_TRUE(unstage(id, staging).ok());
  ASSERT_TRUE(unstage(id, staging).ok());  // idempotent
  EXPECT_TRUE(mounts_under(root).empty());
  EXPECT_FALSE(fs::exists(staging + ".rbdgw.json"));

  ASSERT_TRUE(stage(id, staging).ok());
  EXPECT_EQ(read_file(staging + "/hello.txt"), "hello from rbdgw-csi\n");
  EXPECT_EQ(read_file(staging + "/dir/b.bin"), std::string(300000, 'x'));
  // Read-only publish.
  const std::string ro = root + "/pods/p2/volumes/" + unique("t") + "/mount";
  ASSERT_TRUE(publish(id, staging, ro, true).ok());
  EXPECT_EQ(read_file(ro + "/hello.txt"), "hello from rbdgw-csi\n");
  EXPECT_FALSE(std::ofstream(ro + "/new.txt").good());
  ASSERT_TRUE(unpublish(id, ro).ok());
  ASSERT_TRUE(unstage(id, staging).ok());
  EXPECT_TRUE(del(id).ok());
}

TEST_F(CsiE2E, EncryptedVolumeHoldsLuks2AndNoPlaintext) {
  if (!node_path_available() || !std::getenv("RBDGW_FILTER") || !fs::exists(std::getenv("RBDGW_FILTER")))
    GTEST_SKIP() << "needs the rbd plugin, the luks2 filter, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-enc"), params(true), 64 * MiB, &a, secrets(true));
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    EXPECT_EQ(image.get_meta("rbd.csi.ceph.com/encrypted").value_or(""), "encryptionPrepared");
    EXPECT_TRUE(image.get_meta("rbd.csi.ceph.com/dek").has_value());
  }
  const std::string staging = staging_dir(unique("enc"));
  EXPECT_CODE(stage(id, staging, mount_cap(), false), StatusCode::INVALID_ARGUMENT);  // no KMS secret
  auto s = stage(id, staging, mount_cap(), true);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  const std::string marker = "PLAINTEXT-MARKER-rbdgw-e2e-0123456789";
  std::string data;
  for (int i = 0; i < 2000; ++i) data += marker;
  write_file(staging + "/secret.txt", data);
  ASSERT_TRUE(unstage(id, staging).ok());
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    EXPECT_EQ(image.get_meta("rbd.csi.ceph.com/encrypted").value_or(""), "encrypted");
    std::string raw(image.size(), '\0');
    image.read(0, raw.data(), raw.size());
    EXPECT_EQ(raw.substr(0, 6), std::string("LUKS\xba\xbe", 6));
    EXPECT_EQ(raw.find(marker), std::string::npos) << "plaintext found in the raw image";
  }
  ASSERT_TRUE(stage(id, staging, mount_cap(), true).ok());
  EXPECT_EQ(read_file(staging + "/secret.txt"), data);
  ASSERT_TRUE(unstage(id, staging).ok());
  ASSERT_TRUE(del(id).ok());
  auto io = connect().open_ioctx("rbd");
  EXPECT_THROW(rbd::Image::open(io, img), Error);  // image and its DEK gone
}

TEST_F(CsiE2E, EncryptedStageNeverFormatsAVolumeHoldingData) {
  if (!node_path_available() || !std::getenv("RBDGW_FILTER") || !fs::exists(std::getenv("RBDGW_FILTER")))
    GTEST_SKIP() << "needs the rbd plugin, the luks2 filter, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-data"), params(true), 128 * MiB, &a, secrets(true));
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  // 1 MiB of data at 40 MiB, the first 16 MiB zero (e.g. written by hand).
  std::string data(MiB, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 1);
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    image.write(40 * MiB, data.data(), data.size());
  }
  const std::string staging = staging_dir(unique("data"));
  auto s = stage(id, staging, mount_cap(), true);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("holds data at offset 41943040"), std::string::npos) << s.error_message();
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, img);
    std::string back(data.size(), '\0');
    image.read(40 * MiB, back.data(), back.size());
    EXPECT_EQ(back, data) << "the data at 40 MiB changed";
    std::string head(4096, '\0');
    image.read(0, head.data(), head.size());
    EXPECT_EQ(head, std::string(4096, '\0')) << "a LUKS2 header was written";
    EXPECT_EQ(image.get_meta("rbd.csi.ceph.com/encrypted").value_or(""), "encryptionPrepared");
  }
  EXPECT_FALSE(fs::exists(staging + ".rbdgw.json")) << "a refused stage left its stash";
  ASSERT_TRUE(del(id).ok());
}

TEST_F(CsiE2E, UnstageOfADeadUnrestartableVolumeForcesAndSaysWhatWasLost) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  auto st = create(unique("pvc-dead"), params(), 64 * MiB, &a);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string id = a.volume().volume_id();
  const std::string img = a.volume().volume_context().at("imageName");
  const std::string staging = staging_dir(unique("dead"));
  ASSERT_TRUE(stage(id, staging).ok());
  write_file(staging + "/unflushed", std::string(8 * MiB, 'x'));  // no sync
  const attach::Stash stash = attach::load_stash(staging + ".rbdgw.json");
  ASSERT_EQ(::kill(stash.gateway.pid, SIGKILL), 0);
  // The gateway cannot come back: its image is renamed away.
  auto io = connect().open_ioctx("rbd");
  ASSERT_EQ(rbd_rename(io.handle(), img.c_str(), (img + "-away").c_str()), 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto s = unstage(id, staging);
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_CODE(s, StatusCode::DATA_LOSS);
  EXPECT_NE(s.error_message().find("by force"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("lost"), std::string::npos) << s.error_message();
  EXPECT_LT(took, std::chrono::seconds(60));
  EXPECT_FALSE(fs::exists(staging + ".rbdgw.json"));
  std::ifstream mi("/proc/self/mountinfo");
  std::stringstream all;
  all << mi.rdbuf();
  EXPECT_EQ(all.str().find(staging), std::string::npos) << "still mounted";
  EXPECT_TRUE(unstage(id, staging).ok()) << "the kubelet's retry must succeed";
  ASSERT_EQ(rbd_rename(io.handle(), (img + "-away").c_str(), img.c_str()), 0);
  ASSERT_TRUE(del(id).ok());
}

TEST_F(CsiE2E, TwoVolumesAtOnceAndExpand) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a, b;
  ASSERT_TRUE(create(unique("pvc-two-a"), params(), 320 * MiB, &a).ok());
  ASSERT_TRUE(create(unique("pvc-two-b"), params(), 32 * MiB, &b).ok());
  const std::string sa = staging_dir(unique("a")), sb = staging_dir(unique("b"));
  // xfs for a: growing a mounted ext4 needs CAP_SYS_RESOURCE, which this
  // machine withholds even from root; xfs_growfs needs only CAP_SYS_ADMIN.
  auto fa = std::async(std::launch::async,
                       [&] { return stage(a.volume().volume_id(), sa, mount_cap("xfs")); });
  auto fb = std::async(std::launch::async, [&] { return stage(b.volume().volume_id(), sb); });
  auto ra = fa.get(), rb = fb.get();
  ASSERT_TRUE(ra.ok()) << ra.error_message();
  ASSERT_TRUE(rb.ok()) << rb.error_message();
  write_file(sa + "/a", "A");
  write_file(sb + "/b", "B");
  EXPECT_FALSE(fs::exists(sa + "/b"));

  // Expand a: controller grows the image, node grows the filesystem.
  struct statvfs before{}, after{};
  ::statvfs(sa.c_str(), &before);
  const attach::ProcessRef gateway = attach::load_stash(sa + ".rbdgw.json").gateway;
  {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerExpandVolumeRequest req;
    req.set_volume_id(a.volume().volume_id());
    req.mutable_capacity_range()->set_required_bytes(512 * MiB);
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ControllerExpandVolumeResponse r;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ControllerExpandVolume(&ctx, req, &r).ok());
  }
  {
    auto node = v1::Node::NewStub(channel);
    v1::NodeExpandVolumeRequest req;
    req.set_volume_id(a.volume().volume_id());
    req.set_volume_path(sa);
    req.set_staging_target_path(sa);
    req.mutable_capacity_range()->set_required_bytes(512 * MiB);
    v1::NodeExpandVolumeResponse r;
    grpc::ClientContext ctx;
    auto st = node->NodeExpandVolume(&ctx, req, &r);
    EXPECT_TRUE(st.ok()) << st.error_message() << "\n" << read_file(tmp + "/csi.log");
    EXPECT_EQ(r.capacity_bytes(), 512 * MiB);
  }
  ::statvfs(sa.c_str(), &after);
  EXPECT_GT(after.f_blocks * after.f_frsize, before.f_blocks * before.f_frsize + 128 * MiB);
  // The size was refreshed in place: the same gateway serves on.
  EXPECT_EQ(attach::load_stash(sa + ".rbdgw.json").gateway, gateway);
  EXPECT_TRUE(attach::alive(gateway));
  EXPECT_EQ(read_file(sa + "/a"), "A");
  ASSERT_TRUE(unstage(a.volume().volume_id(), sa).ok());
  ASSERT_TRUE(unstage(b.volume().volume_id(), sb).ok());
  EXPECT_TRUE(del(a.volume().volume_id()).ok());
  EXPECT_TRUE(del(b.volume().volume_id()).ok());
}

TEST_F(CsiE2E, KillDuringStageAndGatewayKillThenRestart) {
  if (!node_path_available()) GTEST_SKIP() << "needs the rbd plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse a;
  ASSERT_TRUE(create(unique("pvc-kill"), params(), 32 * MiB, &a).ok());
  const std::string id = a.volume().volume_id();
  const std::string staging = staging_dir(unique("kill"));
  const std::string run = std::string(attach::kRunRoot) + "/" + id;
  // kill -9 the daemon at three points of a stage: once the stash shows it
  // under way, once the gateway was spawned, once the FUSE exporter was
  // (each daemon writes its pid file before it runs, so the last two land
  // while it starts, possibly before the stash records it). The retried
  // call succeeds with exactly one gateway and one exporter for the volume.
  grpc::Status s;
  for (const std::string& marker : {staging + ".rbdgw.json", run + "/gateway.pid", run + "/fuse.pid"}) {
    auto f = std::async(std::launch::async, [&] { return stage(id, staging); });
    for (int i = 0; i < 3000 && !fs::exists(marker); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    stop_daemon(SIGKILL);
    f.get();  // fails (or finished just before the kill): both are fine
    start_daemon();
    s = stage(id, staging);
    ASSERT_TRUE(s.ok()) << marker << ": " << s.error_message() << "\n" << read_file(tmp + "/csi.log");
    int processes = 0;
    std::error_code ec;
    for (const auto& p : fs::directory_iterator("/proc", ec))
      processes += read_file(p.path() / "cmdline").find(run + "/") != std::string::npos;
    EXPECT_EQ(processes, 2) << "after a kill once " << marker << " existed";
    if (marker != run + "/fuse.pid") {
      ASSERT_TRUE(unstage(id, staging).ok());
    }
  }
  write_file(staging + "/after-restart", "ok");
  // A restart of a healthy daemon keeps the mount (re-adoption, no unmount).
  stop_daemon(SIGKILL);
  start_daemon();
  EXPECT_EQ(read_file(staging + "/after-restart"), "ok");

  // kill -9 of the gateway under the mounted filesystem, and of the daemon:
  // the restarted daemon re-attaches it; the data is intact and fsck clean.
  const attach::Stash st = attach::load_stash(staging + ".rbdgw.json");
  ASSERT_GT(st.gateway.pid, 0);
  stop_daemon(SIGKILL);
  ::kill(st.gateway.pid, SIGKILL);
  for (int i = 0; i < 100 && ::kill(st.gateway.pid, 0) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  start_daemon();
  EXPECT_EQ(read_file(staging + "/after-restart"), "ok");
  write_file(staging + "/after-gateway-kill", std::string(100000, 'g'));
  EXPECT_EQ(read_file(staging + "/after-gateway-kill"), std::string(100000, 'g'));
  s = unstage(id, staging);
  ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
  EXPECT_TRUE(mounts_under(root).empty());
  {
    auto io = connect().open_ioctx("rbd");
    auto image = rbd::Image::open(io, a.volume().volume_context().at("imageName"));
    std::string raw(image.size(), '\0');
    image.read(0, raw.data(), raw.size());
    std::ofstream(tmp + "/fsck.img", std::ios::binary) << raw;
  }
  const std::string fsck = "e2fsck -fn " + tmp + "/fsck.img >" + tmp + "/fsck.log 2>&1";
  EXPECT_EQ(std::system(fsck.c_str()), 0) << read_file(tmp + "/fsck.log");
  fs::remove(tmp + "/fsck.img");
  EXPECT_TRUE(del(id).ok());
}

}  // namespace
