// VolumeEncryption on real RBD images in the test cluster ($CEPH_CONF):
// each provider's round trip, volumes made by (an independent
// re-implementation of) ceph-csi, legacy metadata keys, wrong secrets,
// corrupt metadata, key rotation, and no secret in the log.
#include <gtest/gtest.h>

#include "error_code.hpp"
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "kms/config.hpp"
#include "kms/secrets_kms.hpp"
#include "kms/volume_encryption.hpp"
#include "kms_test_util.hpp"
#include "rbd/cluster.hpp"
#include "rbd/image.hpp"

namespace rbdgw::kms {
namespace {

const std::string old_pass = "old-kms-secret-passphrase";
const std::string new_pass = "new-kms-secret-passphrase";
const std::string shared_pass = "storageclass-shared-passphrase";

const KMSConfig& config() {
  static const KMSConfig c = KMSConfig::parse(
      R"({"secrets-metadata-test": {"encryptionKMSType": "metadata"}})", "test config");
  return c;
}

std::shared_ptr<EncryptionKMS> metadata_kms(const std::string& pass) {
  return config().build("secrets-metadata-test", {{"encryptionPassphrase", pass}});
}
std::shared_ptr<EncryptionKMS> default_kms() {
  return config().build("", {{"encryptionPassphrase", shared_pass}});
}

class VolumeEncryptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::getenv("CEPH_CONF")) GTEST_SKIP() << "CEPH_CONF not set";
    std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    name_ = "kms-" + std::to_string(::getpid()) + "-" + test;
    volid_ = "0001-0004-test-0000000000000002-" + std::to_string(::getpid()) + "-" + test;
    cluster_.emplace(rbd::Cluster::connect({}));
    io_.emplace(cluster_->open_ioctx("rbd"));
    rbd::CreateOptions co;
    co.size = 4 << 20;
    rbd::create_image(*io_, name_, co);
    image_.emplace(rbd::Image::open(*io_, name_));
  }
  void TearDown() override {
    image_.reset();
    if (io_) rbd::remove_image(*io_, name_);
    log_.expect_none_of({old_pass, new_pass, shared_pass, dek_seen_});
  }
  VolumeEncryption volume(std::shared_ptr<EncryptionKMS> k) {
    return VolumeEncryption(std::move(k), *image_, volid_);
  }
  // The passphrase, remembered so TearDown can check the log for it.
  std::string passphrase(VolumeEncryption& v) {
    dek_seen_ = std::string(v.passphrase().view());
    return dek_seen_;
  }
  std::optional<std::string> meta(const char* key) { return image_->get_meta(key); }
  static int error_code(const std::function<void()>& f, std::string* msg = nullptr) {
    return rbdgw::test::error_code(f, msg);
  }

  kms_test::LogCapture log_;
  std::string name_, volid_, dek_seen_;
  std::optional<rbd::Cluster> cluster_;
  std::optional<rbd::IoCtx> io_;
  std::optional<rbd::Image> image_;
};

TEST_F(VolumeEncryptionTest, MetadataProviderRoundTrip) {
  auto v = volume(metadata_kms(old_pass));
  EXPECT_EQ(v.state(), EncryptionState::none);
  v.create_dek();
  EXPECT_EQ(v.state(), EncryptionState::prepared);
  EXPECT_NE(log_.text().find("new DEK stored"), std::string::npos);  // the capture works
  EXPECT_EQ(meta("rbd.csi.ceph.com/encrypted"), std::optional<std::string>("encryptionPrepared"));
  auto wrapped = meta("rbd.csi.ceph.com/dek");
  ASSERT_TRUE(wrapped);
  std::string p = passphrase(v);
  EXPECT_EQ(p.size(), 28u);
  // What is in the image metadata is what ceph-csi would unwrap.
  auto py = kms_test::python_unwrap(old_pass, volid_, *wrapped);
  EXPECT_EQ(py.status, 0);
  EXPECT_EQ(py.out, p);

  v.set_state(EncryptionState::encrypted);
  EXPECT_EQ(meta("rbd.csi.ceph.com/encrypted"), std::optional<std::string>("encrypted"));
  // Another node, another KMS instance, same secret: same passphrase.
  auto again = volume(metadata_kms(old_pass));
  EXPECT_EQ(passphrase(again), p);
  EXPECT_EQ(error_code([&] { again.create_dek(); }), EEXIST);
  EXPECT_EQ(passphrase(again), p);

  v.remove_dek();
  EXPECT_FALSE(meta("rbd.csi.ceph.com/dek"));
  EXPECT_FALSE(meta("rbd.csi.ceph.com/encrypted"));
  EXPECT_EQ(v.state(), EncryptionState::none);
  std::string msg;
  EXPECT_EQ(error_code([&] { v.passphrase(); }, &msg), ENOENT);
  EXPECT_NE(msg.find(name_), std::string::npos) << msg;
}

TEST_F(VolumeEncryptionTest, VolumeMadeByCephCsiOpensIncludingLegacyKeys) {
  const std::string csi_dek = "Zm9vYmFyYmF6cXV4cXV1eHh4eHg=";
  // ceph-csi before v3.4 wrote both keys with a leading dot.
  image_->set_meta(".rbd.csi.ceph.com/dek", kms_test::python_wrap(old_pass, volid_, csi_dek));
  image_->set_meta(".rbd.csi.ceph.com/encrypted", "encrypted");
  auto v = volume(metadata_kms(old_pass));
  EXPECT_EQ(v.state(), EncryptionState::encrypted);
  EXPECT_EQ(passphrase(v), csi_dek);
  // Migrated to the current keys, as ceph-csi's MigrateMetadata does.
  EXPECT_EQ(meta("rbd.csi.ceph.com/encrypted"), std::optional<std::string>("encrypted"));
  EXPECT_TRUE(meta("rbd.csi.ceph.com/dek"));
  EXPECT_FALSE(meta(".rbd.csi.ceph.com/dek"));
  EXPECT_FALSE(meta(".rbd.csi.ceph.com/encrypted"));
  // The deprecated state of pre-v3.3 provisioners is understood.
  image_->set_meta("rbd.csi.ceph.com/encrypted", " requiresEncryption\n");
  EXPECT_EQ(v.state(), EncryptionState::requires_encryption);
}

TEST_F(VolumeEncryptionTest, WrongPassphraseIsAClearError) {
  volume(metadata_kms(old_pass)).create_dek();
  auto v = volume(metadata_kms(new_pass));
  std::string msg;
  EXPECT_EQ(error_code([&] { v.passphrase(); }, &msg), EPERM);
  for (const std::string& part : {volid_, name_, std::string("rbd.csi.ceph.com/dek"),
                                  std::string("KMS 'secrets-metadata-test'"),
                                  std::string("wrong passphrase")})
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
}

TEST_F(VolumeEncryptionTest, CorruptMetadataIsAClearError) {
  auto v = volume(metadata_kms(old_pass));
  v.create_dek();
  auto good = *meta("rbd.csi.ceph.com/dek");
  image_->set_meta("rbd.csi.ceph.com/dek", good.substr(0, good.size() / 2));
  std::string msg;
  EXPECT_EQ(error_code([&] { v.passphrase(); }, &msg), EBADMSG);
  EXPECT_NE(msg.find(name_), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a JSON object"), std::string::npos) << msg;

  image_->set_meta("rbd.csi.ceph.com/encrypted", "halfEncrypted");
  EXPECT_EQ(error_code([&] { v.state(); }, &msg), EBADMSG);
  EXPECT_NE(msg.find("unknown encryption state 'halfEncrypted'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(name_), std::string::npos) << msg;
}

TEST_F(VolumeEncryptionTest, DefaultProviderRoundTrip) {
  auto v = volume(default_kms());
  v.create_dek();
  EXPECT_EQ(v.state(), EncryptionState::prepared);
  // ceph-csi stores nothing for the default KMS: the secret is the passphrase.
  EXPECT_FALSE(meta("rbd.csi.ceph.com/dek"));
  EXPECT_EQ(passphrase(v), shared_pass);
  v.remove_dek();
  EXPECT_EQ(v.state(), EncryptionState::none);
}

TEST_F(VolumeEncryptionTest, RewrapNewSecretOpensOldDoesNot) {
  auto v = volume(metadata_kms(old_pass));
  v.create_dek();
  v.set_state(EncryptionState::encrypted);
  std::string p = passphrase(v);
  std::string before = *meta("rbd.csi.ceph.com/dek");

  v.rewrap(metadata_kms(new_pass));
  EXPECT_EQ(passphrase(v), p);
  EXPECT_NE(*meta("rbd.csi.ceph.com/dek"), before);
  EXPECT_EQ(v.state(), EncryptionState::encrypted);
  auto with_new = volume(metadata_kms(new_pass));
  EXPECT_EQ(passphrase(with_new), p);
  auto with_old = volume(metadata_kms(old_pass));
  EXPECT_EQ(error_code([&] { with_old.passphrase(); }), EPERM);
  EXPECT_EQ(kms_test::python_unwrap(new_pass, volid_, *meta("rbd.csi.ceph.com/dek")).out, p);

  // The default KMS cannot carry a per-volume passphrase: refused, unchanged.
  std::string after = *meta("rbd.csi.ceph.com/dek");
  std::string msg;
  EXPECT_EQ(error_code([&] { v.rewrap(default_kms()); }, &msg), ENOTSUP);
  EXPECT_NE(msg.find("LUKS keyslot"), std::string::npos) << msg;
  EXPECT_EQ(*meta("rbd.csi.ceph.com/dek"), after);
  EXPECT_EQ(passphrase(v), p);
}

TEST_F(VolumeEncryptionTest, ImageStoreRefusesAnotherVolumesDek) {
  ImageDEKStore store(*image_, volid_);
  std::string msg;
  EXPECT_EQ(error_code([&] { store.store_dek("other-volume", "{}"); }, &msg), EINVAL);
  EXPECT_NE(msg.find("other-volume"), std::string::npos) << msg;
  EXPECT_NE(msg.find(name_), std::string::npos) << msg;
  EXPECT_FALSE(meta("rbd.csi.ceph.com/dek"));
  EXPECT_EQ(store.fetch_dek(volid_), std::nullopt);
  store.store_dek(volid_, "{}");
  EXPECT_EQ(store.fetch_dek(volid_), std::optional<std::string>("{}"));
}

TEST_F(VolumeEncryptionTest, RewrapFromDefaultToMetadataKeepsThePassphrase) {
  auto v = volume(default_kms());
  v.create_dek();
  v.rewrap(metadata_kms(new_pass));
  EXPECT_TRUE(meta("rbd.csi.ceph.com/dek"));
  EXPECT_EQ(passphrase(v), shared_pass);
  auto fresh = volume(metadata_kms(new_pass));
  EXPECT_EQ(passphrase(fresh), shared_pass);
}

}  // namespace
}  // namespace rbdgw::kms
