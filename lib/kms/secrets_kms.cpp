#include "kms/secrets_kms.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>

#include "common/base64.hpp"
#include "common/error.hpp"
#include "crypto/aead.hpp"
#include "crypto/kdf.hpp"
#include "crypto/random.hpp"
#include "kms/wrapped_dek.hpp"

namespace rbdgw::kms {
namespace {

using json = nlohmann::json;

void require_passphrase(const std::string& id, const SecretBuffer& passphrase) {
  if (passphrase.empty())
    throw Error(EINVAL, cat("KMS '", id, "': the passphrase ('", passphrase_secret_key,
                            "') is empty"));
}

class DefaultKMS final : public EncryptionKMS, public DEKStore {
 public:
  DefaultKMS(std::string id, SecretBuffer passphrase)
      : id_(std::move(id)), passphrase_(std::move(passphrase)) {}

  const std::string& id() const override { return id_; }
  DEKStoreType requires_dek_store() const override { return DEKStoreType::integrated; }
  DEKStore* integrated_store() override { return this; }
  // The passphrase replaces any DEK: nothing to wrap or store.
  std::string encrypt_dek(const std::string&, const SecretBuffer&) override { return {}; }
  SecretBuffer decrypt_dek(const std::string&, const std::string&) override {
    return passphrase_.clone();
  }

  void store_dek(const std::string&, const std::string&) override {}
  std::optional<std::string> fetch_dek(const std::string&) override { return std::string(); }
  void remove_dek(const std::string&) override {}
  std::string describe() const override {
    return cat("KMS '", id_, "' (one passphrase for every volume)");
  }

 private:
  std::string id_;
  SecretBuffer passphrase_;
};

class MetadataKMS final : public EncryptionKMS {
 public:
  MetadataKMS(std::string id, SecretBuffer passphrase)
      : id_(std::move(id)), passphrase_(std::move(passphrase)) {}

  const std::string& id() const override { return id_; }
  DEKStoreType requires_dek_store() const override { return DEKStoreType::metadata; }

  std::string encrypt_dek(const std::string& volume_id, const SecretBuffer& plain_dek) override {
    SecretBuffer kek = derive_kek(volume_id);
    std::vector<std::uint8_t> nonce(crypto::gcm_nonce_size);
    crypto::random_fill(nonce);
    auto sealed = crypto::gcm_seal(kek, nonce, plain_dek.bytes());
    return encode_wrapped_dek(sealed, nonce);
  }

  SecretBuffer decrypt_dek(const std::string& volume_id, const std::string& wrapped) override {
    const std::string where = cat("KMS '", id_, "': volume ", volume_id, ": wrapped DEK");
    auto [sealed, nonce] = decode_wrapped_dek(wrapped, where);
    if (nonce.size() != crypto::gcm_nonce_size)
      throw Error(EBADMSG, cat(where, ": nonce is ", nonce.size(), " bytes, not ",
                               crypto::gcm_nonce_size));
    if (sealed.size() < crypto::gcm_tag_size)
      throw Error(EBADMSG, cat(where, ": \"dek\" is ", sealed.size(),
                               " bytes, shorter than the AES-GCM tag"));
    SecretBuffer kek = derive_kek(volume_id);
    try {
      return crypto::gcm_open(kek, nonce, sealed);
    } catch (const Error& e) {
      if (e.code() != EBADMSG) throw;
      throw Error(EPERM, cat(where, ": cannot unwrap: wrong passphrase for this KMS, "
                                    "or the stored DEK was altered",
                             trailing_newline_hint(passphrase_)));
    }
  }

 private:
  SecretBuffer derive_kek(const std::string& volume_id) const {
    return crypto::scrypt(passphrase_.view(),
                          {reinterpret_cast<const std::uint8_t*>(volume_id.data()),
                           volume_id.size()},
                          crypto::ceph_csi_scrypt, crypto::gcm_key_size);
  }

  std::string id_;
  SecretBuffer passphrase_;
};

}  // namespace

std::shared_ptr<EncryptionKMS> make_default_kms(std::string id, SecretBuffer passphrase) {
  require_passphrase(id, passphrase);
  return std::make_shared<DefaultKMS>(std::move(id), std::move(passphrase));
}

std::shared_ptr<EncryptionKMS> make_metadata_kms(std::string id, SecretBuffer passphrase) {
  require_passphrase(id, passphrase);
  return std::make_shared<MetadataKMS>(std::move(id), std::move(passphrase));
}

}  // namespace rbdgw::kms
