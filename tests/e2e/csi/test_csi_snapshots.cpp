// Snapshots, restores and clones through rbdgw-csi, against the test
// cluster: CreateSnapshot / DeleteSnapshot / ListSnapshots, CreateVolume
// with a volume_content_source (a snapshot or a volume), encrypted sources
// (own DEK per volume, another KMS ID, refused class changes) and the
// source's delete rules. Data is checked on the real attach path (stage,
// write, read) or byte for byte through librbd.
#include <openssl/evp.h>

#include <random>

#include "csi_harness.hpp"

namespace {

constexpr const char* kDekKey = "rbd.csi.ceph.com/dek";

class CsiSnapshots : public CsiE2E {
 protected:
  static inline std::set<std::string> snapshot_ids;  // deleted at the end

  static void SetUpTestSuite() {
    CsiE2E::SetUpTestSuite();
    if (daemon <= 0) return;
    // A second metadata KMS, for restores into another encryptionKMSID.
    stop_daemon(SIGTERM);
    std::ofstream(tmp + "/kms.json")
        << R"({"meta1":{"encryptionKMSType":"metadata"},"meta2":{"encryptionKMSType":"metadata"}})";
    start_daemon();
  }

  static void TearDownTestSuite() {
    if (daemon > 0)
      for (const auto& id : snapshot_ids) {
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

  static grpc::Status list_snapshots(const v1::ListSnapshotsRequest& in,
                                     v1::ListSnapshotsResponse* resp) {
    auto stub = v1::Controller::NewStub(channel);
    v1::ListSnapshotsRequest req = in;
    auto s = secrets();
    req.mutable_secrets()->insert(s.begin(), s.end());
    return call(
        [&](grpc::ClientContext* c, const auto& r, auto* o) { return stub->ListSnapshots(c, r, o); },
        req, resp);
  }

  // CreateVolume with a content source (snapshot_id or volume_id).
  static grpc::Status create_from(const std::string& name, std::map<std::string, std::string> p,
                                  std::int64_t size, bool from_snapshot, const std::string& source,
                                  v1::CreateVolumeResponse* resp) {
    auto stub = v1::Controller::NewStub(channel);
    v1::CreateVolumeRequest req;
    req.set_name(name);
    req.mutable_capacity_range()->set_required_bytes(size);
    *req.add_volume_capabilities() = mount_cap();
    req.mutable_parameters()->insert(p.begin(), p.end());
    auto s = secrets(true);
    req.mutable_secrets()->insert(s.begin(), s.end());
    if (from_snapshot)
      req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(source);
    else
      req.mutable_volume_content_source()->mutable_volume()->set_volume_id(source);
    grpc::Status st = call(
        [&](grpc::ClientContext* c, const auto& r, auto* o) { return stub->CreateVolume(c, r, o); },
        req, resp);
    if (st.ok()) {
      images.insert(resp->volume().volume_context().at("imageName"));
      volume_ids.insert(resp->volume().volume_id());
    }
    return st;
  }

  static std::string image_of(const v1::CreateVolumeResponse& r) {
    return r.volume().volume_context().at("imageName");
  }

  // Stages (encrypted: with the KMS passphrase), publishes, runs fn on the
  // mounted directory, unpublishes and unstages.
  static void with_mounted(const std::string& id, bool encrypted,
                           const std::function<void(const std::string&)>& fn) {
    const std::string name = unique("m");
    const std::string staging = staging_dir(name);
    const std::string target = root + "/pods/" + name + "/mount";
    fs::create_directories(fs::path(target).parent_path());
    grpc::Status s = stage(id, staging, mount_cap(), encrypted);
    ASSERT_TRUE(s.ok()) << s.error_message() << "\n" << read_file(tmp + "/csi.log");
    s = publish(id, staging, target);
    ASSERT_TRUE(s.ok()) << s.error_message();
    fn(target);
    EXPECT_TRUE(unpublish(id, target).ok());
    EXPECT_TRUE(unstage(id, staging).ok());
  }

  // SHA-256 of the whole image (or its first len bytes), read through librbd.
  static std::string digest(const std::string& image, std::uint64_t len = 0) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, image, {}, rbd::Image::Mode::read_only);
    if (len == 0) len = img.size();
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
    std::vector<char> buf(4 * MiB);
    for (std::uint64_t off = 0; off < len; off += buf.size()) {
      const std::size_t n = std::min<std::uint64_t>(buf.size(), len - off);
      img.read(off, buf.data(), n);
      EVP_DigestUpdate(ctx, buf.data(), n);
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    return std::string(reinterpret_cast<char*>(md), mdlen);
  }

  static std::optional<std::string> meta(const std::string& image, const std::string& key) {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    return rbd::Image::open(io, image, {}, rbd::Image::Mode::read_only).get_meta(key);
  }

  static std::vector<std::string> list_images() {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto v = rbd::list_images(io);
    std::sort(v.begin(), v.end());
    return v;
  }
};

TEST_F(CsiSnapshots, RestoreShowsTheSnapshotsDataNotLaterWrites) {
  if (!node_path_available()) GTEST_SKIP() << "needs the node attach path";
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("snap-src"), params(), 64 * MiB, &src).ok());
  const std::string id = src.volume().volume_id();
  with_mounted(id, false, [](const std::string& dir) { write_file(dir + "/a", "before the snapshot"); });
  v1::CreateSnapshotResponse snap;
  grpc::Status s = create_snapshot(unique("snap"), id, &snap);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(snap.snapshot().ready_to_use());
  EXPECT_EQ(snap.snapshot().source_volume_id(), id);
  EXPECT_EQ(snap.snapshot().size_bytes(), src.volume().capacity_bytes());
  EXPECT_GT(snap.snapshot().creation_time().seconds(), 0);
  EXPECT_EQ(snap.snapshot().snapshot_id().find("0001-0004-test-"), 0u) << snap.snapshot().snapshot_id();
  // A snapshot of a volume in use (staged, its gateway holding the lock):
  // what was written and fsync'd before is in it.
  v1::CreateSnapshotResponse live;
  with_mounted(id, false, [&](const std::string& dir) {
    write_file(dir + "/a", "after the snapshot");
    write_file(dir + "/b", "new file");
    ::sync();
    grpc::Status ls = create_snapshot(unique("live"), id, &live);
    ASSERT_TRUE(ls.ok()) << ls.error_message() << "\n" << read_file(tmp + "/csi.log");
  });
  {
    v1::CreateVolumeResponse lr;
    grpc::Status ls = create_from(unique("restore-live"), params(), 64 * MiB, true, live.snapshot().snapshot_id(), &lr);
    ASSERT_TRUE(ls.ok()) << ls.error_message();
    with_mounted(lr.volume().volume_id(), false, [](const std::string& dir) {
      EXPECT_EQ(read_file(dir + "/b"), "new file");
    });
    EXPECT_TRUE(del(lr.volume().volume_id()).ok());
    EXPECT_TRUE(delete_snapshot(live.snapshot().snapshot_id()).ok());
  }

  // Smaller than the source: OUT_OF_RANGE; a snapshot that does not exist: NOT_FOUND.
  v1::CreateVolumeResponse r;
  EXPECT_CODE(create_from(unique("restore"), params(), 32 * MiB, true, snap.snapshot().snapshot_id(), &r),
              StatusCode::OUT_OF_RANGE);
  EXPECT_CODE(create_from(unique("restore"), params(), 64 * MiB, true,
                          "0001-0004-test-0000000000000001-00000000-0000-5000-8000-000000000000", &r),
              StatusCode::NOT_FOUND);
  EXPECT_CODE(create_from(unique("restore"), params(), 64 * MiB, true, "no-such-snapshot", &r),
              StatusCode::NOT_FOUND);

  const std::string rname = unique("restore");
  s = create_from(rname, params(), 64 * MiB, true, snap.snapshot().snapshot_id(), &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.volume().content_source().snapshot().snapshot_id(), snap.snapshot().snapshot_id());
  EXPECT_GE(r.volume().capacity_bytes(), src.volume().capacity_bytes());
  // Idempotent: the same request gives the same volume.
  v1::CreateVolumeResponse r2;
  ASSERT_TRUE(create_from(rname, params(), 64 * MiB, true, snap.snapshot().snapshot_id(), &r2).ok());
  EXPECT_EQ(r2.volume().volume_id(), r.volume().volume_id());
  with_mounted(r.volume().volume_id(), false, [](const std::string& dir) {
    EXPECT_EQ(read_file(dir + "/a"), "before the snapshot");
    EXPECT_FALSE(fs::exists(dir + "/b"));
  });
  // A restore is a volume of its own: the snapshot goes, the restore stays.
  ASSERT_TRUE(delete_snapshot(snap.snapshot().snapshot_id()).ok());
  with_mounted(r.volume().volume_id(), false, [](const std::string& dir) {
    EXPECT_EQ(read_file(dir + "/a"), "before the snapshot");
  });
  EXPECT_TRUE(del(r.volume().volume_id()).ok());
  EXPECT_TRUE(del(id).ok());
}

TEST_F(CsiSnapshots, CloneOfAVolumeIsByteIdenticalAndLargerOnRequest) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("clone-src"), params(), 32 * MiB, &src).ok());
  {
    auto c = connect();
    auto io = c.open_ioctx("rbd");
    auto img = rbd::Image::open(io, image_of(src));
    std::mt19937_64 rng(7);
    std::vector<std::uint64_t> data(MiB / 8);
    for (std::uint64_t off : {std::uint64_t{0}, 5 * MiB + 4096, 31 * MiB}) {
      for (auto& w : data) w = rng();
      img.write(off, data.data(), MiB);
    }
  }
  v1::CreateVolumeResponse r;
  grpc::Status s = create_from(unique("clone"), params(), 48 * MiB, false, src.volume().volume_id(), &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(r.volume().content_source().volume().volume_id(), src.volume().volume_id());
  EXPECT_EQ(r.volume().capacity_bytes(), static_cast<std::int64_t>(48 * MiB));
  EXPECT_EQ(digest(image_of(r), 32 * MiB), digest(image_of(src)));
  // The clone does not hold on to its source: both delete on their own.
  EXPECT_TRUE(del(src.volume().volume_id()).ok());
  EXPECT_TRUE(del(r.volume().volume_id()).ok());
}

TEST_F(CsiSnapshots, EncryptedCloneOpensWithItsOwnDekAfterTheSourceIsGone) {
  if (!node_path_available()) GTEST_SKIP() << "needs the node attach path";
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("enc-src"), params(true), 64 * MiB, &src, secrets(true)).ok());
  const std::string id = src.volume().volume_id();
  with_mounted(id, true, [](const std::string& dir) { write_file(dir + "/secret", "encrypted data"); });
  const auto src_dek = meta(image_of(src), kDekKey);
  ASSERT_TRUE(src_dek);

  // Clone into the same KMS and into another KMS ID; a restore via a snapshot too.
  v1::CreateVolumeResponse same, other, restored;
  grpc::Status s = create_from(unique("enc-clone"), params(true), 64 * MiB, false, id, &same);
  ASSERT_TRUE(s.ok()) << s.error_message();
  auto p2 = params(true);
  p2["encryptionKMSID"] = "meta2";
  s = create_from(unique("enc-clone2"), p2, 64 * MiB, false, id, &other);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(other.volume().volume_context().at("encryptionKMSID"), "meta2");
  v1::CreateSnapshotResponse snap;
  s = create_snapshot(unique("enc-snap"), id, &snap);
  ASSERT_TRUE(s.ok()) << s.error_message();
  s = create_from(unique("enc-restore"), p2, 64 * MiB, true, snap.snapshot().snapshot_id(), &restored);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_TRUE(delete_snapshot(snap.snapshot().snapshot_id()).ok());

  // Each has a DEK of its own (wrapped under its own volume ID), never the source's.
  for (const auto* v : {&same, &other, &restored}) {
    auto dek = meta(image_of(*v), kDekKey);
    ASSERT_TRUE(dek) << image_of(*v);
    EXPECT_NE(*dek, *src_dek) << image_of(*v);
    EXPECT_EQ(meta(image_of(*v), "rbdgw.csi/encryptionKMSID"),
              v == &same ? std::optional<std::string>("meta1") : std::optional<std::string>("meta2"));
  }
  // The source and its DEK go; every copy still opens with its own.
  ASSERT_TRUE(del(id).ok());
  for (const auto* v : {&same, &other, &restored}) {
    with_mounted(v->volume().volume_id(), true, [](const std::string& dir) {
      EXPECT_EQ(read_file(dir + "/secret"), "encrypted data");
    });
    EXPECT_TRUE(del(v->volume().volume_id()).ok());
  }
}

TEST_F(CsiSnapshots, EncryptionMismatchIsRefusedAndCreatesNothing) {
  v1::CreateVolumeResponse plain, enc;
  ASSERT_TRUE(create(unique("mm-plain"), params(), 32 * MiB, &plain).ok());
  ASSERT_TRUE(create(unique("mm-enc"), params(true), 32 * MiB, &enc, secrets(true)).ok());
  v1::CreateSnapshotResponse snap;
  ASSERT_TRUE(create_snapshot(unique("mm-snap"), plain.volume().volume_id(), &snap).ok());
  const auto before = list_images();
  v1::CreateVolumeResponse r;
  grpc::Status s = create_from(unique("mm1"), params(true), 32 * MiB, true, snap.snapshot().snapshot_id(), &r);
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find(snap.snapshot().snapshot_id()), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("encrypt"), std::string::npos) << s.error_message();
  s = create_from(unique("mm2"), params(true), 32 * MiB, false, plain.volume().volume_id(), &r);
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  s = create_from(unique("mm3"), params(false), 32 * MiB, false, enc.volume().volume_id(), &r);
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find(enc.volume().volume_id()), std::string::npos) << s.error_message();
  EXPECT_EQ(list_images(), before);
  EXPECT_TRUE(delete_snapshot(snap.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(del(plain.volume().volume_id()).ok());
  EXPECT_TRUE(del(enc.volume().volume_id()).ok());
}

TEST_F(CsiSnapshots, CreateSnapshotIsIdempotentByNameAndDeleteToleratesUnknownIds) {
  v1::CreateVolumeResponse a, b;
  const std::string a_name = unique("idem-a");
  ASSERT_TRUE(create(a_name, params(), 32 * MiB, &a).ok());
  ASSERT_TRUE(create(unique("idem-b"), params(), 32 * MiB, &b).ok());
  const std::string name = unique("idem-snap");
  v1::CreateSnapshotResponse s1, s2, s3;
  ASSERT_TRUE(create_snapshot(name, a.volume().volume_id(), &s1).ok());
  ASSERT_TRUE(create_snapshot(name, a.volume().volume_id(), &s2).ok());
  EXPECT_EQ(s1.snapshot().snapshot_id(), s2.snapshot().snapshot_id());
  EXPECT_EQ(s1.snapshot().creation_time().seconds(), s2.snapshot().creation_time().seconds());
  EXPECT_CODE(create_snapshot(name, b.volume().volume_id(), &s3), StatusCode::ALREADY_EXISTS);
  EXPECT_CODE(create_snapshot(unique("x"), "0001-0004-test-0000000000000001-00000000-0000-5000-8000-000000000000", &s3),
              StatusCode::NOT_FOUND);
  // A volume name stands for one content source: none, or this snapshot.
  v1::CreateVolumeResponse v, x;
  const std::string restored = unique("idem-restore");
  ASSERT_TRUE(create_from(restored, params(), 32 * MiB, true, s1.snapshot().snapshot_id(), &v).ok());
  EXPECT_CODE(create(restored, params(), 32 * MiB, &x), StatusCode::ALREADY_EXISTS);
  EXPECT_CODE(create_from(restored, params(), 32 * MiB, false, a.volume().volume_id(), &x),
              StatusCode::ALREADY_EXISTS);
  EXPECT_CODE(create_from(a_name, params(), 32 * MiB, true, s1.snapshot().snapshot_id(), &x),
              StatusCode::ALREADY_EXISTS);
  EXPECT_TRUE(del(v.volume().volume_id()).ok());
  EXPECT_TRUE(delete_snapshot(s1.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(delete_snapshot(s1.snapshot().snapshot_id()).ok());  // again: gone is deleted
  EXPECT_TRUE(delete_snapshot("not-a-snapshot-id").ok());
  EXPECT_TRUE(del(a.volume().volume_id()).ok());
  EXPECT_TRUE(del(b.volume().volume_id()).ok());
}

TEST_F(CsiSnapshots, ListSnapshotsFiltersAndPaginates) {
  v1::CreateVolumeResponse a, b;
  ASSERT_TRUE(create(unique("list-a"), params(), 32 * MiB, &a).ok());
  ASSERT_TRUE(create(unique("list-b"), params(), 32 * MiB, &b).ok());
  std::set<std::string> of_a;
  for (int i = 0; i < 3; ++i) {
    v1::CreateSnapshotResponse r;
    ASSERT_TRUE(create_snapshot(unique("list-snap"), a.volume().volume_id(), &r).ok());
    of_a.insert(r.snapshot().snapshot_id());
  }
  v1::CreateSnapshotResponse of_b;
  ASSERT_TRUE(create_snapshot(unique("list-snap"), b.volume().volume_id(), &of_b).ok());

  // By source, two pages.
  v1::ListSnapshotsRequest req;
  req.set_source_volume_id(a.volume().volume_id());
  req.set_max_entries(2);
  v1::ListSnapshotsResponse p1, p2;
  grpc::Status s = list_snapshots(req, &p1);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(p1.entries_size(), 2);
  ASSERT_FALSE(p1.next_token().empty());
  req.set_starting_token(p1.next_token());
  ASSERT_TRUE(list_snapshots(req, &p2).ok());
  ASSERT_EQ(p2.entries_size(), 1);
  EXPECT_TRUE(p2.next_token().empty());
  std::set<std::string> got;
  for (const auto* p : {&p1, &p2})
    for (const auto& e : p->entries()) {
      got.insert(e.snapshot().snapshot_id());
      EXPECT_EQ(e.snapshot().source_volume_id(), a.volume().volume_id());
      EXPECT_TRUE(e.snapshot().ready_to_use());
    }
  EXPECT_EQ(got, of_a);

  // By ID; an unknown ID is an empty list; all lists every one.
  v1::ListSnapshotsRequest by_id;
  by_id.set_snapshot_id(of_b.snapshot().snapshot_id());
  v1::ListSnapshotsResponse one, none, all;
  ASSERT_TRUE(list_snapshots(by_id, &one).ok());
  ASSERT_EQ(one.entries_size(), 1);
  EXPECT_EQ(one.entries(0).snapshot().source_volume_id(), b.volume().volume_id());
  by_id.set_snapshot_id("no-such-snapshot");
  ASSERT_TRUE(list_snapshots(by_id, &none).ok());
  EXPECT_EQ(none.entries_size(), 0);
  ASSERT_TRUE(list_snapshots(v1::ListSnapshotsRequest(), &all).ok());
  std::set<std::string> all_ids;
  for (const auto& e : all.entries()) all_ids.insert(e.snapshot().snapshot_id());
  for (const auto& i : of_a) EXPECT_TRUE(all_ids.count(i)) << i;
  EXPECT_TRUE(all_ids.count(of_b.snapshot().snapshot_id()));

  // A token we never handed out: ABORTED.
  v1::ListSnapshotsRequest bad;
  bad.set_starting_token("not-a-token");
  v1::ListSnapshotsResponse br;
  EXPECT_CODE(list_snapshots(bad, &br), StatusCode::ABORTED);

  for (const auto& i : of_a) EXPECT_TRUE(delete_snapshot(i).ok());
  EXPECT_TRUE(delete_snapshot(of_b.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(del(a.volume().volume_id()).ok());
  EXPECT_TRUE(del(b.volume().volume_id()).ok());
}

TEST_F(CsiSnapshots, DeletingASourceWithSnapshotsIsRefusedUntilTheyAreGone) {
  v1::CreateVolumeResponse src;
  ASSERT_TRUE(create(unique("del-src"), params(), 32 * MiB, &src).ok());
  v1::CreateSnapshotResponse snap;
  ASSERT_TRUE(create_snapshot(unique("del-snap"), src.volume().volume_id(), &snap).ok());
  grpc::Status s = del(src.volume().volume_id());
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  // Names the snapshot's image (csi-snap-<uuid>).
  const std::string sid = snap.snapshot().snapshot_id();
  EXPECT_NE(s.error_message().find("csi-snap-" + sid.substr(sid.size() - 36)), std::string::npos)
      << s.error_message();
  // Nothing was lost: the source is still there under its name.
  EXPECT_TRUE(meta(image_of(src), "rbdgw.csi/name"));
  ASSERT_TRUE(delete_snapshot(sid).ok());
  s = del(src.volume().volume_id());
  EXPECT_TRUE(s.ok()) << s.error_message();
  const auto left = list_images();
  EXPECT_EQ(std::count(left.begin(), left.end(), image_of(src)), 0);
}

}  // namespace
