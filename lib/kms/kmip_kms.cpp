#include "kms/kmip_kms.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>

#include "common/base64.hpp"
#include "common/error.hpp"
#include "crypto/random.hpp"
#include "kms/wrapped_dek.hpp"

namespace rbdgw::kms {
namespace {

using json = nlohmann::json;
using namespace kmip;

Item crypto_parameters() {
  // Field order of KMIP 1.4 section 2.1.5.
  return structure(tag::cryptographic_parameters,
                   {enumeration(tag::block_cipher_mode, block_cipher_mode_cbc),
                    enumeration(tag::padding_method, padding_pkcs5),
                    enumeration(tag::cryptographic_algorithm, algorithm_aes)});
}

class KmipKMS final : public EncryptionKMS {
 public:
  KmipKMS(std::string id, KmipSettings s, std::string uid)
      : id_(std::move(id)), client_(std::move(s)), uid_(std::move(uid)) {}

  const std::string& id() const override { return id_; }
  DEKStoreType requires_dek_store() const override { return DEKStoreType::metadata; }

  std::string encrypt_dek(const std::string& volume_id, const SecretBuffer& plain_dek) override {
    std::vector<std::uint8_t> nonce(kmip_nonce_size);
    crypto::random_fill(nonce);
    Item reply = call(op::encrypt, volume_id,
                      structure(tag::request_payload,
                                {text_string(tag::unique_identifier, uid_), crypto_parameters(),
                                 byte_string(tag::data, plain_dek.bytes()),
                                 byte_string(tag::iv_counter_nonce, nonce)}));
    const Item& data = reply.need(tag::data, Type::byte_string,
                                  cat(where(volume_id), ": KMIP Encrypt reply"));
    if (data.bytes.empty() || data.bytes.size() % 16)
      throw Error(EBADMSG, cat(where(volume_id), ": KMIP Encrypt returned ", data.bytes.size(),
                               " bytes, not whole AES blocks"));
    return encode_wrapped_dek(data.bytes, nonce);
  }

  SecretBuffer decrypt_dek(const std::string& volume_id, const std::string& wrapped) override {
    const std::string w = cat(where(volume_id), ": wrapped DEK");
    auto [sealed, nonce] = decode_wrapped_dek(wrapped, w);
    if (nonce.size() != kmip_nonce_size)
      throw Error(EBADMSG, cat(w, ": nonce is ", nonce.size(), " bytes, not ", kmip_nonce_size));
    if (sealed.empty() || sealed.size() % 16)
      throw Error(EBADMSG, cat(w, ": \"dek\" is ", sealed.size(), " bytes, not whole AES blocks"));
    Item reply = call(op::decrypt, volume_id,
                      structure(tag::request_payload,
                                {text_string(tag::unique_identifier, uid_), crypto_parameters(),
                                 byte_string(tag::data, sealed),
                                 byte_string(tag::iv_counter_nonce, nonce)}));
    const Item& data = reply.need(tag::data, Type::byte_string,
                                  cat(where(volume_id), ": KMIP Decrypt reply"));
    return SecretBuffer(data.bytes.data(), data.bytes.size());
  }

 private:
  std::string where(const std::string& volume_id) const {
    return cat("KMS '", id_, "': volume ", volume_id);
  }

  Item call(std::uint32_t operation, const std::string& volume_id, Item payload) {
    try {
      return client_.call(operation, std::move(payload));
    } catch (const Error& e) {
      // A Decrypt that an existing key fails (pykmip: General Failure when
      // the PKCS5 padding does not check out): most likely the DEK was
      // wrapped by another key. Said, not assumed: the errno stays.
      const bool hint = operation == op::decrypt && (e.code() == EIO || e.code() == EPERM) &&
                        std::string_view(e.what()).find(" failed: ") != std::string_view::npos;
      throw Error(e.code(), cat(e.what(), " (key '", uid_, "', volume ", volume_id, ")",
                                hint ? "; the stored DEK may have been wrapped by another key" : ""));
    }
  }

  std::string id_;
  KmipClient client_;
  std::string uid_;
};

}  // namespace

std::shared_ptr<EncryptionKMS> make_kmip_kms(std::string id, KmipSettings settings,
                                             std::string unique_identifier) {
  if (unique_identifier.empty())
    throw Error(EINVAL, cat("KMS '", id, "': secret 'UNIQUE_IDENTIFIER' is empty"));
  return std::make_shared<KmipKMS>(std::move(id), std::move(settings), std::move(unique_identifier));
}

}  // namespace rbdgw::kms
