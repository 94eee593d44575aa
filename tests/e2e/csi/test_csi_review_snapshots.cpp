// Review (R2) of the CSI snapshot work: CreateSnapshot interrupted between
// its steps (the states a kill -9 of rbdgw-csi leaves, made here by hand
// with librbd exactly as Snapshots::create makes them), then retried or
// abandoned; concurrent CreateSnapshot of one name; ListSnapshots tokens.
// Against the test cluster and the real daemon.
#include <rbd/librbd.h>

#include <thread>

#include "csi_harness.hpp"

namespace {

class CsiReviewSnapshots : public CsiE2E {
 protected:
  static inline std::set<std::string> snapshot_ids;

  static void TearDownTestSuite() {
    if (daemon > 0)
      for (const auto& id : std::set<std::string>(snapshot_ids)) {
        grpc::Status s = delete_snapshot(id);
        if (!s.ok()) ADD_FAILURE() << "cleanup: DeleteSnapshot " << id << ": " << s.error_message();
      }
    CsiE2E::TearDownTestSuite();
  }

  static grpc::Status create_snapshot(const std::string& name, const std::string& source,
                                      v1::CreateSnapshotResponse* resp) {
    auto stub = v1::Controller::NewStub(channel);
    v1::CreateSnapshotRequest req;
    req.set_name(name);
    req.set_source_volume_id(source);
    auto s = secrets(true);
    req.mutable_secrets()->insert(s.begin(), s.end());
    grpc::Status st = call(
        [&](grpc::ClientContext* c, const auto& r, auto* o) { return stub->CreateSnapshot(c, r, o); },
        req, resp);
    if (st.ok()) snapshot_ids.insert(resp->snapshot().snapshot_id());
    return st;
  }

  static grpc::Status delete_snapshot(const std::string& id) {
    auto stub = v1::Controller::NewStub(channel);
    v1::DeleteSnapshotRequest req;
    req.set_snapshot_id(id);
    auto s = secrets(true);
    req.mutable_secrets()->insert(s.begin(), s.end());
    v1::DeleteSnapshotResponse resp;
    grpc::Status st = call(
        [&](grpc::ClientContext* c, const auto& r, auto* o) { return stub->DeleteSnapshot(c, r, o); },
        req, &resp);
    if (st.ok()) snapshot_ids.erase(id);
    return st;
  }

  static grpc::Status list_snapshots(const v1::ListSnapshotsRequest& in, v1::ListSnapshotsResponse* resp) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ListSnapshotsRequest req = in;
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    return call(
        [&](grpc::ClientContext* c, const auto& r, auto* o) { return stub->ListSnapshots(c, r, o); },
        req, resp);
  }

  static std::string image_of(const v1::CreateVolumeResponse& r) {
    return r.volume().volume_context().at("imageName");
  }

  // The user-namespace snapshots of an image (not RBD's own in the trash
  // namespace, kept while a clone v2 of them lives).
  static std::vector<std::string> snaps_of(const std::string& image) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, image, {}, rbd::Image::Mode::read_only);
    std::vector<rbd_snap_info_t> snaps(16);
    int max = static_cast<int>(snaps.size());
    int r;
    while ((r = rbd_snap_list(img.handle(), snaps.data(), &max)) == -ERANGE) snaps.resize(max);
    EXPECT_GE(r, 0);
    std::vector<std::string> out;
    for (int i = 0; i < r; i++) {
      rbd_snap_namespace_type_t t = RBD_SNAP_NAMESPACE_TYPE_USER;
      EXPECT_EQ(rbd_snap_get_namespace_type(img.handle(), snaps[i].id, &t), 0);
      if (t == RBD_SNAP_NAMESPACE_TYPE_USER) out.emplace_back(snaps[i].name);
    }
    if (r > 0) rbd_snap_list_end(snaps.data());
    return out;
  }

  static bool image_exists(const std::string& image) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto v = rbd::list_images(io);
    return std::find(v.begin(), v.end(), image) != v.end();
  }

  // Step 1 of CreateSnapshot: the temporary snapshot of the source.
  static void make_tmp_snap(const std::string& src, const std::string& snap) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, src);
    img.create_snap(snap);
  }

  static void remove_snap(const std::string& src, const std::string& snap) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, src);
    ASSERT_EQ(rbd_snap_remove(img.handle(), snap.c_str()), 0) << src << "@" << snap;
  }

  // Step 2: the RBD clone v2 of it (which copies the source's metadata).
  static void make_clone(const std::string& src, const std::string& snap, const std::string& child) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    rbd_image_options_t o;
    rbd_image_options_create(&o);
    rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_CLONE_FORMAT, 2);
    rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FEATURES,
                                 RBD_FEATURE_LAYERING | RBD_FEATURE_EXCLUSIVE_LOCK);
    const int r = rbd_clone3(io.handle(), src.c_str(), snap.c_str(), io.handle(), child.c_str(), o);
    rbd_image_options_destroy(o);
    ASSERT_EQ(r, 0) << src << "@" << snap << " -> " << child;
  }
};

// Each state an interrupted CreateSnapshot can leave is finished by the
// retry: ready, the same ID, the source carries no temporary snapshot, and
// the source can be deleted once the snapshot is.
TEST_F(CsiReviewSnapshots, RetriedCreateSnapshotFinishesEveryInterruptedState) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-src"), params(), 32 * MiB, &src).ok());
  const std::string src_id = src.volume().volume_id();
  const std::string name = unique("rv-snap");
  v1::CreateSnapshotResponse first;
  ASSERT_TRUE(create_snapshot(name, src_id, &first).ok());
  const std::string sid = first.snapshot().snapshot_id();
  const std::string uuid = sid.substr(sid.size() - 36);
  const std::string tmp_snap = "csi-snap-tmp-" + uuid, snap_image = "csi-snap-" + uuid;
  ASSERT_TRUE(delete_snapshot(sid).ok());
  ASSERT_FALSE(image_exists(snap_image));

  for (int state = 1; state <= 3; ++state) {
    SCOPED_TRACE("interrupted after step " + std::to_string(state));
    make_tmp_snap(image_of(src), tmp_snap);                                  // 1
    if (state >= 2) make_clone(image_of(src), tmp_snap, snap_image);         // 2
    if (state >= 3) remove_snap(image_of(src), tmp_snap);                    // 3 (to the trash namespace)
    v1::CreateSnapshotResponse r;
    grpc::Status s = create_snapshot(name, src_id, &r);
    ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
    EXPECT_EQ(r.snapshot().snapshot_id(), sid);
    EXPECT_TRUE(r.snapshot().ready_to_use());
    EXPECT_EQ(r.snapshot().source_volume_id(), src_id);
    EXPECT_TRUE(snaps_of(image_of(src)).empty());
    v1::ListSnapshotsRequest by_src;
    by_src.set_source_volume_id(src_id);
    v1::ListSnapshotsResponse l;
    ASSERT_TRUE(list_snapshots(by_src, &l).ok());
    ASSERT_EQ(l.entries_size(), 1);
    EXPECT_EQ(l.entries(0).snapshot().snapshot_id(), sid);
    ASSERT_TRUE(delete_snapshot(sid).ok());
    EXPECT_FALSE(image_exists(snap_image));
  }
  grpc::Status s = del(src_id);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(image_exists(image_of(src)));
}

// A CreateSnapshot (or a clone's CreateVolume) interrupted after its first
// step and never retried (the CO gave up: the VolumeSnapshot or PVC was
// deleted meanwhile; it never learnt an ID to delete) leaves only our own
// temporary snapshot on the source, which nothing depends on. Deleting
// the source must not be refused forever because of it.
TEST_F(CsiReviewSnapshots, AbandonedTemporarySnapshotsDoNotBlockDeletingTheSource) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-aband"), params(), 32 * MiB, &src).ok());
  make_tmp_snap(image_of(src), "csi-snap-tmp-00000000-0000-5000-8000-000000000001");
  make_tmp_snap(image_of(src), "csi-clone-tmp-00000000-0000-5000-8000-000000000002");
  grpc::Status s = del(src.volume().volume_id());
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(image_exists(image_of(src)));
}

// A user's own RBD snapshot of a volume is not ours to remove: the delete
// is refused naming it, nothing is lost.
TEST_F(CsiReviewSnapshots, AUsersOwnSnapshotStillRefusesTheDeleteNamingIt) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-user"), params(), 32 * MiB, &src).ok());
  make_tmp_snap(image_of(src), "backup-by-hand");
  grpc::Status s = del(src.volume().volume_id());
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("backup-by-hand"), std::string::npos) << s.error_message();
  EXPECT_TRUE(image_exists(image_of(src)));
  remove_snap(image_of(src), "backup-by-hand");
  EXPECT_TRUE(del(src.volume().volume_id()).ok());
}

// Two CreateSnapshot of one name at once: each is OK or ABORTED (retry),
// and all that succeed answer the one snapshot; a retry then finishes.
TEST_F(CsiReviewSnapshots, ConcurrentCreateSnapshotOfOneNameMakesOneSnapshot) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-conc"), params(), 32 * MiB, &src).ok());
  const std::string name = unique("rv-conc-snap");
  v1::CreateSnapshotResponse r[4];
  grpc::Status st[4];
  std::vector<std::thread> t;
  for (int i = 0; i < 4; ++i)
    t.emplace_back([&, i] { st[i] = create_snapshot(name, src.volume().volume_id(), &r[i]); });
  for (auto& x : t) x.join();
  std::set<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    if (st[i].ok()) ids.insert(r[i].snapshot().snapshot_id());
    else EXPECT_CODE(st[i], StatusCode::ABORTED);
  }
  v1::CreateSnapshotResponse again;
  ASSERT_TRUE(create_snapshot(name, src.volume().volume_id(), &again).ok());
  ids.insert(again.snapshot().snapshot_id());
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_TRUE(snaps_of(image_of(src)).empty());
  EXPECT_TRUE(delete_snapshot(again.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(del(src.volume().volume_id()).ok());
}

// Tokens ListSnapshots never handed out are ABORTED, a negative
// max_entries INVALID_ARGUMENT, 0 and huge mean "all".
TEST_F(CsiReviewSnapshots, ListSnapshotsRefusesForgedTokensAndTakesAnyMaxEntries) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-list"), params(), 32 * MiB, &src).ok());
  v1::CreateSnapshotResponse a, b;
  ASSERT_TRUE(create_snapshot(unique("rv-list-s"), src.volume().volume_id(), &a).ok());
  ASSERT_TRUE(create_snapshot(unique("rv-list-s"), src.volume().volume_id(), &b).ok());
  v1::ListSnapshotsRequest req;
  req.set_source_volume_id(src.volume().volume_id());
  for (const char* tok : {"-1", "+1", "3", "99999999999999999999999", "1x", " 1", "\xc3\xa9"}) {
    req.set_starting_token(tok);
    v1::ListSnapshotsResponse resp;
    EXPECT_CODE(list_snapshots(req, &resp), StatusCode::ABORTED) << "token '" << tok << "'";
  }
  req.set_starting_token("2");  // the end: an empty last page
  v1::ListSnapshotsResponse end;
  ASSERT_TRUE(list_snapshots(req, &end).ok());
  EXPECT_EQ(end.entries_size(), 0);
  EXPECT_TRUE(end.next_token().empty());
  req.clear_starting_token();
  for (int m : {0, 2, 1 << 30}) {
    req.set_max_entries(m);
    v1::ListSnapshotsResponse resp;
    ASSERT_TRUE(list_snapshots(req, &resp).ok()) << m;
    EXPECT_EQ(resp.entries_size(), 2) << m;
    EXPECT_TRUE(resp.next_token().empty()) << m;
  }
  req.set_max_entries(-1);
  v1::ListSnapshotsResponse neg;
  EXPECT_CODE(list_snapshots(req, &neg), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(delete_snapshot(a.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(delete_snapshot(b.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(del(src.volume().volume_id()).ok());
}

// A restore interrupted after its clone and never retried (the PVC was
// deleted while it was being provisioned: the CO never learnt its ID)
// leaves a half-made volume that is a clone of the snapshot. DeleteSnapshot
// must not refuse forever because of it (and with it the source's
// DeleteVolume): the half-made volume is made independent (flattened, its
// data intact) and the snapshot goes.
TEST_F(CsiReviewSnapshots, AnAbandonedRestoreDoesNotKeepTheSnapshotForever) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-restore-src"), params(), 32 * MiB, &src).ok());
  {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, image_of(src));
    const std::string data = "written before the snapshot";
    img.write(0, data.data(), data.size());
  }
  v1::CreateSnapshotResponse snap;
  ASSERT_TRUE(create_snapshot(unique("rv-restore-snap"), src.volume().volume_id(), &snap).ok());
  const std::string sid = snap.snapshot().snapshot_id();
  const std::string snap_image = "csi-snap-" + sid.substr(sid.size() - 36);
  const std::string orphan = "csi-vol-00000000-0000-5000-8000-0000000000ab";
  make_clone(snap_image, "csi-snap", orphan);  // step 1 of CreateVolume from the snapshot
  images.insert(orphan);                        // the harness removes it at the end
  grpc::Status s = delete_snapshot(sid);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(image_exists(snap_image));
  {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, orphan, {}, rbd::Image::Mode::read_only);
    std::string got(27, '\0');
    img.read(0, got.data(), got.size());
    EXPECT_EQ(got, "written before the snapshot");
  }
  s = del(src.volume().volume_id());
  EXPECT_TRUE(s.ok()) << s.error_message();
}

}  // namespace

// An encrypted volume whose image records no encryptionKMSID (ceph-csi
// keeps the KMS ID in its omap journal, not in the image): a snapshot could
// not re-wrap its key under its own ID, and one that kept the source's
// wrapped DEK would not open when restored. Refused before anything is
// made, naming the volume and what is missing.
TEST_F(CsiReviewSnapshots, EncryptedSourceWithoutAKmsIdIsRefusedAndNothingIsMade) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("rv-nokms"), params(true), 32 * MiB, &src, secrets(true)).ok());
  {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, image_of(src));
    img.remove_meta("rbdgw.csi/encryptionKMSID");
  }
  auto snap_images = [] {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    std::set<std::string> out;
    for (const auto& i : rbd::list_images(io))
      if (i.rfind("csi-snap-", 0) == 0) out.insert(i);
    return out;
  };
  const auto before = snap_images();
  v1::CreateSnapshotResponse r;
  const std::string name = unique("rv-nokms-snap");
  grpc::Status s = create_snapshot(name, src.volume().volume_id(), &r);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("encryptionKMSID"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find(image_of(src)), std::string::npos) << s.error_message();
  EXPECT_TRUE(snaps_of(image_of(src)).empty());
  EXPECT_EQ(snap_images(), before);
  EXPECT_TRUE(del(src.volume().volume_id()).ok());
}
