// Unit tests of rbdgw-csi's pure logic.
#include <gtest/gtest.h>

#include <set>

#include "common/error.hpp"
#include "csi/capability.hpp"
#include "csi/config.hpp"
#include "csi/paths.hpp"
#include "csi/status.hpp"
#include "csi/volume_id.hpp"
#include "csi/volume_locks.hpp"

using namespace rbdgw;
using namespace rbdgw::csi;

// Expects fn() to throw rbdgw::Error with errno err and a message holding part.
template <typename Fn>
void expect_error(Fn fn, int err, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected errno " << err << " with '" << part << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), err) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------ volume IDs

TEST(VolumeId, EncodesCephCsiFormat) {
  VolumeId v{"rook-ceph", 2, "92837648-1431-11eb-8990-0242ac110005"};
  // The example from ceph-csi's documentation.
  EXPECT_EQ(v.str(), "0001-0009-rook-ceph-0000000000000002-92837648-1431-11eb-8990-0242ac110005");
  EXPECT_EQ(v.image_name(), "csi-vol-92837648-1431-11eb-8990-0242ac110005");
}

TEST(VolumeId, RoundTripsAndDecodesCephCsiIds) {
  const std::string id =
      "0001-0024-7635de36-ab1f-4a70-98a2-a1bd80ba77c4-0000000000000006-6e696bba-064f-11ec-a251-0242ac110002";
  VolumeId v = VolumeId::parse(id);
  EXPECT_EQ(v.cluster_id, "7635de36-ab1f-4a70-98a2-a1bd80ba77c4");
  EXPECT_EQ(v.pool_id, 6);
  EXPECT_EQ(v.uuid, "6e696bba-064f-11ec-a251-0242ac110002");
  EXPECT_EQ(v.str(), id);
  VolumeId big{"c", 0x7fffffffffffffffLL, uuid_from_name("x")};
  EXPECT_EQ(VolumeId::parse(big.str()), big);
}

TEST(VolumeId, RejectsMalformedIds) {
  const std::string good = "0001-0004-test-0000000000000001-92837648-1431-11eb-8990-0242ac110005";
  ASSERT_NO_THROW(VolumeId::parse(good));
  expect_error([] { VolumeId::parse(""); }, EINVAL, "empty");
  expect_error([] { VolumeId::parse("pvc-123"); }, EINVAL, "'pvc-123'");
  expect_error([&] { VolumeId::parse("0002" + good.substr(4)); }, EINVAL, "encoding version");
  expect_error([&] { VolumeId::parse("0001-0005" + good.substr(9)); }, EINVAL, "length");
  expect_error([&] { VolumeId::parse("0001-zzzz" + good.substr(9)); }, EINVAL, "cluster ID length");
  std::string badpool = good;
  badpool[16] = 'g';
  expect_error([&] { VolumeId::parse(badpool); }, EINVAL, "pool ID");
  std::string baduuid = good;
  baduuid[good.size() - 1] = 'Z';
  expect_error([&] { VolumeId::parse(baduuid); }, EINVAL, "uuid");
  expect_error([&] { VolumeId::parse(good + "0"); }, EINVAL, "length");
  expect_error([] { VolumeId::parse(std::string(129, '0')); }, EINVAL, "128");
  expect_error([] { VolumeId{std::string(70, 'c'), 1, uuid_from_name("a")}.str(); }, EINVAL,
               "too long");
  expect_error([] { VolumeId{"", 1, uuid_from_name("a")}.str(); }, EINVAL, "cluster ID");
}

TEST(VolumeId, NameBasedUuidIsDeterministicAndVersion5) {
  const std::string a = uuid_from_name("pvc-1");
  EXPECT_EQ(a, uuid_from_name("pvc-1"));
  EXPECT_NE(a, uuid_from_name("pvc-2"));
  EXPECT_TRUE(is_uuid(a));
  EXPECT_EQ(a[14], '5');                                    // version
  EXPECT_NE(std::string("89ab").find(a[19]), std::string::npos);  // RFC 4122 variant
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(uuid_from_name("pvc-" + std::to_string(i)));
  EXPECT_EQ(seen.size(), 1000u);
}

// ------------------------------------------------------- cluster config

TEST(ClusterConfig, ParsesCephCsiConfigJson) {
  auto c = ClusterConfig::parse(
      R"([{"clusterID":"c1","monitors":["10.0.0.1:6789","10.0.0.2:6789"]},
          {"clusterID":"c2","monitors":["[v2:127.0.0.1:3300,v1:127.0.0.1:6789]"],
           "rbd":{"radosNamespace":"ns1"},"cephFS":{"subvolumeGroup":"g"}}])",
      "test");
  ASSERT_EQ(c.entries().size(), 2u);
  ASSERT_NE(c.find("c1"), nullptr);
  EXPECT_EQ(c.find("c1")->mon_host(), "10.0.0.1:6789,10.0.0.2:6789");
  EXPECT_EQ(c.find("c1")->rados_namespace, "");
  EXPECT_EQ(c.find("c2")->rados_namespace, "ns1");
  EXPECT_EQ(c.find("c3"), nullptr);
}

TEST(ClusterConfig, RejectsBadConfigNamingTheEntry) {
  expect_error([] { ClusterConfig::parse("{", "f.json"); }, EINVAL, "f.json: not valid JSON");
  expect_error([] { ClusterConfig::parse("{}", "f"); }, EINVAL, "array");
  expect_error([] { ClusterConfig::parse(R"([{"monitors":["a"]}])", "f"); }, EINVAL, "clusterID");
  expect_error([] { ClusterConfig::parse(R"([{"clusterID":"x"}])", "f"); }, EINVAL,
               "clusterID 'x'): \"monitors\"");
  expect_error([] { ClusterConfig::parse(R"([{"clusterID":"x","monitors":[1]}])", "f"); }, EINVAL,
               "non-string");
  expect_error(
      [] {
        ClusterConfig::parse(R"([{"clusterID":"x","monitors":["a"]},{"clusterID":"x","monitors":["b"]}])",
                             "f");
      },
      EINVAL, "duplicate");
  expect_error([] { ClusterConfig::load("/nonexistent/config.json"); }, ENOENT,
               "/nonexistent/config.json");
}

// ------------------------------------------------------------- parameters

TEST(VolumeParams, ParsesStorageClassParameters) {
  auto p = VolumeParams::parse({{"clusterID", "c1"},
                                {"pool", "rbd"},
                                {"imageFeatures", "layering,exclusive-lock"},
                                {"encrypted", "true"},
                                {"encryptionKMSID", "kms1"},
                                {"imageFormat", "2"},
                                {"csi.storage.k8s.io/pvc/name", "ignored"}});
  EXPECT_EQ(p.cluster_id, "c1");
  EXPECT_EQ(p.pool, "rbd");
  EXPECT_TRUE(p.encrypted);
  EXPECT_EQ(p.kms_id, "kms1");
  EXPECT_EQ(p.canonical(),
            "clusterID=c1;pool=rbd;dataPool=;imageFeatures=layering,exclusive-lock;encrypted=true;"
            "encryptionKMSID=kms1");
  EXPECT_NE(p.canonical(), VolumeParams::parse({{"clusterID", "c1"}, {"pool", "rbd"}}).canonical());
}

TEST(VolumeParams, RejectsBadParametersNamingTheKey) {
  expect_error([] { VolumeParams::parse({{"pool", "rbd"}}); }, EINVAL, "clusterID");
  expect_error([] { VolumeParams::parse({{"clusterID", "c"}}); }, EINVAL, "'pool'");
  expect_error([] { VolumeParams::parse({{"clusterID", "c"}, {"pool", "p"}, {"colour", "red"}}); },
               EINVAL, "unknown parameter 'colour'");
  expect_error([] { VolumeParams::parse({{"clusterID", "c"}, {"pool", "p"}, {"encrypted", "yes"}}); },
               EINVAL, "'encrypted'");
  expect_error(
      [] { VolumeParams::parse({{"clusterID", "c"}, {"pool", "p"}, {"encryptionKMSID", "k"}}); },
      EINVAL, "needs encrypted");
  expect_error(
      [] { VolumeParams::parse({{"clusterID", "c"}, {"pool", "p"}, {"imageFeatures", "wings"}}); },
      EINVAL, "wings");
  expect_error([] { VolumeParams::parse({{"clusterID", "c"}, {"pool", "p"}, {"imageFormat", "1"}}); },
               EINVAL, "imageFormat");
}

TEST(Secrets, CephxCredentialsFromSecrets) {
  ClusterEntry c{"c1", {"m1:6789", "m2:6789"}, ""};
  auto o = cluster_options(c, {{"userID", "csi"}, {"userKey", "AQAAAA=="}});
  EXPECT_EQ(o.id, "csi");
  EXPECT_EQ(o.key.view(), "AQAAAA==");
  EXPECT_EQ(o.mon_host, "m1:6789,m2:6789");
  expect_error([&] { cluster_options(c, {{"userKey", "k"}}); }, EINVAL, "userID");
  expect_error([&] { cluster_options(c, {{"userID", "u"}}); }, EINVAL, "userKey");
}

TEST(Capacity, RoundsUpToMiBWithinLimit) {
  EXPECT_EQ(size_for_range(0, 0), kDefaultVolumeSize);
  EXPECT_EQ(size_for_range(1, 0), kMiB);
  EXPECT_EQ(size_for_range(kMiB, 0), kMiB);
  EXPECT_EQ(size_for_range(kMiB + 1, 0), 2 * kMiB);
  EXPECT_EQ(size_for_range(0, 8 * kMiB), 8 * kMiB);
  EXPECT_EQ(size_for_range(kMiB + 1, 2 * kMiB), 2 * kMiB);
  expect_error([] { size_for_range(kMiB + 1, kMiB + 2); }, ERANGE, "exceeds limit_bytes");
  expect_error([] { size_for_range(-1, 0); }, ERANGE, "negative");
  expect_error([] { size_for_range(2 * kMiB, kMiB); }, EINVAL, "limit_bytes");
}

// ------------------------------------------------------------------ options

TEST(Options, ParsesFlagsAndRejectsUnknown) {
  bool help = false;
  const char* argv[] = {"rbdgw-csi", "--endpoint=unix:///tmp/x.sock", "--cluster-config", "/c.json",
                        "--attach=userspace", "--allowed-root=/tmp/root"};
  Options o = Options::parse(6, argv, help);
  EXPECT_FALSE(help);
  EXPECT_EQ(o.socket_path(), "/tmp/x.sock");
  EXPECT_EQ(o.cluster_config, "/c.json");
  EXPECT_EQ(o.attach, "userspace");
  EXPECT_EQ(o.allowed_root, "/tmp/root");
  EXPECT_EQ(o.driver_name, "rbd.gw.csi.rbdgw.io");
  const char* bad[] = {"rbdgw-csi", "--endpoint=unix:///x", "--cluster-config=/c", "--colour=red"};
  expect_error([&] { Options::parse(4, bad, help); }, EINVAL, "unknown option '--colour'");
  const char* tcp[] = {"rbdgw-csi", "--endpoint=tcp://1.2.3.4:5", "--cluster-config=/c"};
  expect_error([&] { Options::parse(3, tcp, help); }, EINVAL, "unix:///");
  const char* none[] = {"rbdgw-csi", "--endpoint=unix:///x"};
  expect_error([&] { Options::parse(2, none, help); }, EINVAL, "--cluster-config");
}

// -------------------------------------------------------------------- paths

TEST(Paths, AcceptsPathsBelowTheRoot) {
  EXPECT_EQ(check_path("p", "/var/lib/kubelet/pods/x/mount", "/var/lib/kubelet"),
            "/var/lib/kubelet/pods/x/mount");
  EXPECT_EQ(check_path("p", "/var/lib/kubelet/a/", "/var/lib/kubelet/"), "/var/lib/kubelet/a");
  EXPECT_EQ(check_path("p", "/a", "/"), "/a");
}

TEST(Paths, RejectsEscapesAndOutsiders) {
  const std::string root = "/var/lib/kubelet";
  expect_error([&] { check_path("target_path", "", root); }, EINVAL, "target_path '': missing");
  expect_error([&] { check_path("p", "relative/x", root); }, EINVAL, "absolute");
  expect_error([&] { check_path("p", "/etc/passwd", root); }, EINVAL, "allowed root");
  expect_error([&] { check_path("p", "/var/lib/kubelet", root); }, EINVAL, "allowed root");
  expect_error([&] { check_path("p", "/var/lib/kubeletX/a", root); }, EINVAL, "allowed root");
  expect_error([&] { check_path("p", "/var/lib/kubelet/../../etc", root); }, EINVAL, "\"..\"");
  expect_error([&] { check_path("p", "/var/lib/kubelet/a/..", root); }, EINVAL, "\"..\"");
  expect_error([&] { check_path("p", "/var/lib/kubelet/./a", root); }, EINVAL, "\".\"");
  expect_error([&] { check_path("p", "/var/lib/kubelet//a", root); }, EINVAL, "empty component");
  expect_error([&] { check_path("p", std::string("/var/lib/kubelet/a\0b", 20), root); }, EINVAL,
               "NUL");
}

// ------------------------------------------------------------ capabilities

TEST(Capability, AcceptsSingleNodeMountAndBlock) {
  ::csi::v1::VolumeCapability c;
  c.mutable_mount()->set_fs_type("xfs");
  c.mutable_mount()->add_mount_flags("noatime");
  c.mutable_access_mode()->set_mode(::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  Capability cap = parse_capability(c, "cap");
  EXPECT_FALSE(cap.block);
  EXPECT_EQ(cap.fs_type, "xfs");
  EXPECT_EQ(cap.mount_options(), "noatime");
  c.mutable_mount()->set_fs_type("");
  EXPECT_EQ(parse_capability(c, "cap").fs_type, "ext4");
  c.mutable_block();
  c.mutable_access_mode()->set_mode(::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY);
  cap = parse_capability(c, "cap");
  EXPECT_TRUE(cap.block);
  EXPECT_TRUE(cap.read_only);
}

TEST(Capability, RejectsUnsupported) {
  ::csi::v1::VolumeCapability c;
  expect_error([&] { parse_capability(c, "cap"); }, EINVAL, "access_type");
  c.mutable_mount()->set_fs_type("btrfs");
  c.mutable_access_mode()->set_mode(::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  expect_error([&] { parse_capability(c, "cap"); }, EINVAL, "btrfs");
  c.mutable_mount()->set_fs_type("ext4");
  c.mutable_access_mode()->set_mode(::csi::v1::VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
  expect_error([&] { parse_capability(c, "cap"); }, EINVAL, "MULTI_NODE_MULTI_WRITER");
  c.clear_access_mode();
  expect_error([&] { parse_capability(c, "cap"); }, EINVAL, "access_mode is missing");
  google::protobuf::RepeatedPtrField<::csi::v1::VolumeCapability> caps;
  *caps.Add() = c;
  EXPECT_NE(unsupported_reason(caps).find("access_mode"), std::string::npos);
}

// ----------------------------------------------------------- error mapping

TEST(Status, MapsErrnoToCsiCodes) {
  using C = grpc::StatusCode;
  EXPECT_EQ(status_code(EINVAL), C::INVALID_ARGUMENT);
  EXPECT_EQ(status_code(ENOENT), C::NOT_FOUND);
  EXPECT_EQ(status_code(EEXIST), C::ALREADY_EXISTS);
  EXPECT_EQ(status_code(EAGAIN), C::ABORTED);
  EXPECT_EQ(status_code(EBUSY), C::FAILED_PRECONDITION);
  EXPECT_EQ(status_code(ERANGE), C::OUT_OF_RANGE);
  EXPECT_EQ(status_code(EACCES), C::PERMISSION_DENIED);
  EXPECT_EQ(status_code(ETIMEDOUT), C::UNAVAILABLE);
  EXPECT_EQ(status_code(ENOSPC), C::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status_code(EIO), C::INTERNAL);
  grpc::Status s = to_status(Error(ENOENT, "image 'rbd/x' does not exist"));
  EXPECT_EQ(s.error_code(), C::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "image 'rbd/x' does not exist");
}

TEST(Status, GuardCatchesEverything) {
  EXPECT_TRUE(guard("t", [] {}).ok());
  EXPECT_EQ(guard("t", [] { throw Error(EEXIST, "x"); }).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(guard("t", [] { throw std::runtime_error("boom"); }).error_code(),
            grpc::StatusCode::INTERNAL);
  EXPECT_EQ(guard("t", [] { throw 42; }).error_code(), grpc::StatusCode::INTERNAL);
}

TEST(VolumeLocks, SecondCallerIsAbortedUntilRelease) {
  VolumeLocks locks;
  {
    auto g = locks.try_acquire("v1");
    expect_error([&] { locks.try_acquire("v1"); }, EAGAIN, "'v1'");
    EXPECT_NO_THROW(locks.try_acquire("v2"));
  }
  EXPECT_NO_THROW(locks.try_acquire("v1"));
}
