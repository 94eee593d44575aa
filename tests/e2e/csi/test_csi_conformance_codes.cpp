// rbdgw-csi end to end, issue 11 "Conformance" and "Capacity of encrypted
// volumes", pinned beyond csi-sanity (tests/e2e/csi-sanity):
//  - the CSI spec's codes for IDs that name no volume: DeleteVolume and
//    ControllerUnpublishVolume succeed; ValidateVolumeCapabilities,
//    ControllerPublishVolume, ControllerExpandVolume, NodeGetVolumeStats and
//    NodeExpandVolume answer NOT_FOUND (a malformed ID, a well-formed ID of a
//    volume that does not exist); NodeGetVolumeStats for a path where the
//    volume is neither staged nor published answers NOT_FOUND;
//  - an encrypted volume asked for N bytes offers N bytes of plaintext (the
//    image carries the LUKS2 header on top), at create and at expand, and
//    capacity_bytes says so; a volume made the old way (image = N, header
//    inside) still stages, is still found by a repeated CreateVolume, and
//    an expand grows it to required + header.
#include <cstring>

#include "csi_harness.hpp"

namespace {

constexpr std::uint64_t kHeader = 16 * MiB;  // our LUKS2 format's data offset
constexpr const char* kMalformedId = "reallyfakevolumeid";

class CsiConformance : public CsiE2E {
 protected:
  // A well-formed volume ID of this cluster and pool whose image does not exist.
  static std::string unknown_id() {
    return "0001-0004-test-0000000000000001-00000000-0000-5000-8000-000000000001";
  }

  static grpc::Status validate(const std::string& id, v1::ValidateVolumeCapabilitiesResponse* resp) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ValidateVolumeCapabilitiesRequest req;
    req.set_volume_id(id);
    *req.add_volume_capabilities() = mount_cap();
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    grpc::ClientContext ctx;
    return stub->ValidateVolumeCapabilities(&ctx, req, resp);
  }

  static grpc::Status controller_publish(const std::string& id) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerPublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_node_id("e2e-node");
    *req.mutable_volume_capability() = mount_cap();
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ControllerPublishVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->ControllerPublishVolume(&ctx, req, &resp);
  }

  static grpc::Status controller_unpublish(const std::string& id) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerUnpublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_node_id("e2e-node");
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::ControllerUnpublishVolumeResponse resp;
    grpc::ClientContext ctx;
    return stub->ControllerUnpublishVolume(&ctx, req, &resp);
  }

  static grpc::Status controller_expand(const std::string& id, std::int64_t size,
                                        v1::ControllerExpandVolumeResponse* resp) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ControllerExpandVolumeRequest req;
    req.set_volume_id(id);
    req.mutable_capacity_range()->set_required_bytes(size);
    *req.mutable_volume_capability() = mount_cap();
    auto s = secrets(true);
    req.mutable_secrets()->insert(s.begin(), s.end());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    return stub->ControllerExpandVolume(&ctx, req, resp);
  }

  static grpc::Status stats(const std::string& id, const std::string& path,
                            v1::NodeGetVolumeStatsResponse* resp) {
    auto stub = v1::Node::NewStub(channel);
    v1::NodeGetVolumeStatsRequest req;
    req.set_volume_id(id);
    req.set_volume_path(path);
    grpc::ClientContext ctx;
    return stub->NodeGetVolumeStats(&ctx, req, resp);
  }

  static grpc::Status node_expand(const std::string& id, const std::string& path, std::int64_t size,
                                  v1::NodeExpandVolumeResponse* resp,
                                  const v1::VolumeCapability& cap = mount_cap()) {
    auto stub = v1::Node::NewStub(channel);
    v1::NodeExpandVolumeRequest req;
    req.set_volume_id(id);
    req.set_volume_path(path);
    req.mutable_capacity_range()->set_required_bytes(size);
    *req.mutable_volume_capability() = cap;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    return stub->NodeExpandVolume(&ctx, req, resp);
  }

  // The size of the staged volume's device (the plaintext of an encrypted one).
  static std::uint64_t staged_device_size(const std::string& staging) {
    const attach::Stash s = attach::load_stash(staging + ".rbdgw.json");
    return attach::device_size(s.device);
  }

  static v1::VolumeCapability block_cap() {
    v1::VolumeCapability c;
    c.mutable_block();
    c.mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    return c;
  }

  static std::uint64_t image_size(const std::string& image) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    return rbd::Image::open(io, image, {}, rbd::Image::Mode::read_only).size();
  }
};

TEST_F(CsiConformance, DeleteAndUnpublishOfAnIdThatIsNoVolumeIdSucceed) {
  EXPECT_CODE(del(kMalformedId), StatusCode::OK);
  EXPECT_CODE(del(unknown_id()), StatusCode::OK);
  EXPECT_CODE(del(""), StatusCode::INVALID_ARGUMENT);  // missing is still an error
  EXPECT_CODE(controller_unpublish(kMalformedId), StatusCode::OK);
}

TEST_F(CsiConformance, ControllerCallsOnAnUnknownOrMalformedIdAreNotFound) {
  for (const std::string& id : {std::string(kMalformedId), unknown_id()}) {
    SCOPED_TRACE(id);
    v1::ValidateVolumeCapabilitiesResponse vr;
    const grpc::Status v = validate(id, &vr);
    EXPECT_CODE(v, StatusCode::NOT_FOUND);
    EXPECT_NE(v.error_message().find(id), std::string::npos) << v.error_message();
    EXPECT_CODE(controller_publish(id), StatusCode::NOT_FOUND);
    v1::ControllerExpandVolumeResponse er;
    const grpc::Status e = controller_expand(id, 128 * MiB, &er);
    EXPECT_CODE(e, StatusCode::NOT_FOUND);
    EXPECT_NE(e.error_message().find(id), std::string::npos) << e.error_message();
  }
  v1::ValidateVolumeCapabilitiesResponse vr;
  EXPECT_CODE(validate("", &vr), StatusCode::INVALID_ARGUMENT);
}

TEST_F(CsiConformance, NodeCallsOnAnUnknownOrMalformedIdAreNotFound) {
  for (const std::string& id : {std::string(kMalformedId), unknown_id()}) {
    SCOPED_TRACE(id);
    v1::NodeGetVolumeStatsResponse sr;
    const grpc::Status s = stats(id, "some/path", &sr);
    EXPECT_CODE(s, StatusCode::NOT_FOUND);
    EXPECT_NE(s.error_message().find(id), std::string::npos) << s.error_message();
    EXPECT_CODE(stats(id, root + "/pods/x/mount", &sr), StatusCode::NOT_FOUND);
    v1::NodeExpandVolumeResponse er;
    EXPECT_CODE(node_expand(id, "some/path", 128 * MiB, &er), StatusCode::NOT_FOUND);
    EXPECT_CODE(node_expand(id, root + "/pods/x/mount", 128 * MiB, &er), StatusCode::NOT_FOUND);
  }
  // Missing fields stay INVALID_ARGUMENT.
  v1::NodeGetVolumeStatsResponse sr;
  EXPECT_CODE(stats("", "some/path", &sr), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(stats(unknown_id(), "", &sr), StatusCode::INVALID_ARGUMENT);
  v1::NodeExpandVolumeResponse er;
  EXPECT_CODE(node_expand(unknown_id(), "", 0, &er), StatusCode::INVALID_ARGUMENT);
}

TEST_F(CsiConformance, StatsOfAPathWhereTheVolumeIsNotIsNotFound) {
  if (!node_path_available()) GTEST_SKIP() << "needs the plugin, rbdgw-fuse and /dev/fuse";
  v1::CreateVolumeResponse cr;
  ASSERT_TRUE(create(unique("codes-stats"), params(), 64 * MiB, &cr).ok());
  const std::string id = cr.volume().volume_id();
  const std::string staging = staging_dir(unique("codes-stats"));
  const std::string target = root + "/pods/" + unique("codes-stats") + "/mount";
  {
    const grpc::Status s = stage(id, staging);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const grpc::Status p = publish(id, staging, target);
    ASSERT_TRUE(p.ok()) << p.error_message();
  }
  v1::NodeGetVolumeStatsResponse sr;
  // Where it is: the staging path and the publish target.
  EXPECT_CODE(stats(id, staging, &sr), StatusCode::OK);
  EXPECT_CODE(stats(id, target, &sr), StatusCode::OK);
  // Where it is not: a relative path, a directory under the root that is no
  // mount of it, a path that does not exist, a mount of something else.
  const grpc::Status rel = stats(id, "some/path", &sr);
  EXPECT_CODE(rel, StatusCode::NOT_FOUND);
  EXPECT_NE(rel.error_message().find("some/path"), std::string::npos) << rel.error_message();
  const std::string other = root + "/pods/" + unique("codes-other");
  fs::create_directories(other);
  EXPECT_CODE(stats(id, other, &sr), StatusCode::NOT_FOUND);
  EXPECT_CODE(stats(id, other + "/missing", &sr), StatusCode::NOT_FOUND);
  ASSERT_EQ(::mount("tmpfs", other.c_str(), "tmpfs", 0, "size=1m"), 0) << std::strerror(errno);
  const grpc::Status tm = stats(id, other, &sr);
  EXPECT_CODE(tm, StatusCode::NOT_FOUND);
  ::umount2(other.c_str(), MNT_DETACH);
  fs::remove(other);

  EXPECT_TRUE(unpublish(id, target).ok());
  EXPECT_TRUE(unstage(id, staging).ok());
  // Unstaged: nowhere on this node.
  EXPECT_CODE(stats(id, staging, &sr), StatusCode::NOT_FOUND);
  EXPECT_TRUE(del(id).ok());
}

TEST_F(CsiConformance, EncryptedVolumeOffersWhatWasAskedForAtCreateAndExpand) {
  if (!node_path_available()) GTEST_SKIP() << "needs the plugin, rbdgw-fuse and /dev/fuse";
  const std::string name = unique("codes-enc");
  v1::CreateVolumeResponse cr;
  const grpc::Status c = create(name, params(true), 128 * MiB, &cr, secrets(true));
  ASSERT_TRUE(c.ok()) << c.error_message();
  const std::string id = cr.volume().volume_id();
  const std::string image = cr.volume().volume_context().at("imageName");
  EXPECT_EQ(cr.volume().capacity_bytes(), static_cast<std::int64_t>(128 * MiB));
  EXPECT_EQ(image_size(image), 128 * MiB + kHeader) << "the LUKS2 header goes on top";

  // A repeated create is the same volume; one with another size is not.
  v1::CreateVolumeResponse again;
  ASSERT_TRUE(create(name, params(true), 128 * MiB, &again, secrets(true)).ok());
  EXPECT_EQ(again.volume().capacity_bytes(), static_cast<std::int64_t>(128 * MiB));
  EXPECT_CODE(create(name, params(true), 256 * MiB, &again, secrets(true)),
              StatusCode::ALREADY_EXISTS);

  // Raw block: the device is the plaintext, nothing of it taken by a
  // filesystem. (A mounted ext4 cannot grow here: online resize needs
  // CAP_SYS_RESOURCE, which this machine withholds; the old-style test below
  // grows a mounted xfs.)
  const std::string staging = staging_dir(unique("codes-enc"));
  const grpc::Status s = stage(id, staging, block_cap(), true);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GE(staged_device_size(staging), 128 * MiB) << "plaintext offered after staging";

  v1::ControllerExpandVolumeResponse er;
  const grpc::Status e = controller_expand(id, 256 * MiB, &er);
  ASSERT_TRUE(e.ok()) << e.error_message();
  EXPECT_EQ(er.capacity_bytes(), static_cast<std::int64_t>(256 * MiB));
  EXPECT_TRUE(er.node_expansion_required());
  EXPECT_EQ(image_size(image), 256 * MiB + kHeader);

  v1::NodeExpandVolumeResponse ne;
  const grpc::Status n = node_expand(id, staging, 256 * MiB, &ne, block_cap());
  EXPECT_TRUE(n.ok()) << n.error_message();
  EXPECT_GE(ne.capacity_bytes(), static_cast<std::int64_t>(256 * MiB));
  EXPECT_GE(staged_device_size(staging), 256 * MiB);

  // A repeated expand changes nothing and says the same.
  ASSERT_TRUE(controller_expand(id, 256 * MiB, &er).ok());
  EXPECT_EQ(er.capacity_bytes(), static_cast<std::int64_t>(256 * MiB));
  EXPECT_EQ(image_size(image), 256 * MiB + kHeader);

  EXPECT_TRUE(unstage(id, staging).ok());
  EXPECT_TRUE(del(id).ok());
}

// A volume as the previous rbdgw-csi made it (and ceph-csi makes them): the
// image is the requested size with the LUKS2 header inside it. xfs: it
// grows mounted here (and needs 300 MB at least).
TEST_F(CsiConformance, OldStyleEncryptedVolumeStagesAndExpandsToRequiredPlusHeader) {
  if (!node_path_available()) GTEST_SKIP() << "needs the plugin, rbdgw-fuse and /dev/fuse";
  const std::string name = unique("codes-old");
  v1::CreateVolumeResponse cr;
  ASSERT_TRUE(create(name, params(true), 320 * MiB, &cr, secrets(true)).ok());
  const std::string id = cr.volume().volume_id();
  const std::string image = cr.volume().volume_context().at("imageName");
  {
    // Made the old way: image = requested size, no mark of the header on top.
    auto cl = connect();
    auto io = cl.open_ioctx("rbd");
    auto img = rbd::Image::open(io, image);
    img.resize(320 * MiB);
    img.remove_meta("rbdgw.csi/luksHeaderOnTop");
  }
  // Still the same volume for a repeated create.
  v1::CreateVolumeResponse again;
  const grpc::Status a = create(name, params(true), 320 * MiB, &again, secrets(true));
  EXPECT_TRUE(a.ok()) << a.error_message();
  EXPECT_EQ(again.volume().volume_id(), id);

  const std::string staging = staging_dir(unique("codes-old"));
  const grpc::Status s = stage(id, staging, mount_cap("xfs"), true);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(staged_device_size(staging), 320 * MiB - kHeader) << "header inside: what it offers";
  struct statvfs before{};
  ASSERT_EQ(::statvfs(staging.c_str(), &before), 0);
  write_file(staging + "/kept", "written before the expand");

  v1::ControllerExpandVolumeResponse er;
  const grpc::Status e = controller_expand(id, 448 * MiB, &er);
  ASSERT_TRUE(e.ok()) << e.error_message();
  EXPECT_EQ(er.capacity_bytes(), static_cast<std::int64_t>(448 * MiB));
  EXPECT_EQ(image_size(image), 448 * MiB + kHeader) << "grown to required + header";

  v1::NodeExpandVolumeResponse ne;
  const grpc::Status n = node_expand(id, staging, 448 * MiB, &ne, mount_cap("xfs"));
  EXPECT_TRUE(n.ok()) << n.error_message();
  EXPECT_GE(staged_device_size(staging), 448 * MiB);
  EXPECT_EQ(read_file(staging + "/kept"), "written before the expand");
  struct statvfs v{};
  ASSERT_EQ(::statvfs(staging.c_str(), &v), 0);
  EXPECT_GE(v.f_blocks * v.f_frsize, before.f_blocks * before.f_frsize + 128 * MiB)
      << "the filesystem grew with it";

  // From now on it is a volume with the header on top.
  ASSERT_TRUE(create(name, params(true), 448 * MiB, &again, secrets(true)).ok());
  EXPECT_EQ(again.volume().capacity_bytes(), static_cast<std::int64_t>(448 * MiB));

  EXPECT_TRUE(unstage(id, staging).ok());
  EXPECT_TRUE(del(id).ok());
}

}  // namespace
