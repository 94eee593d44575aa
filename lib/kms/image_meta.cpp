#include "kms/image_meta.hpp"

#include <cerrno>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::kms {

const char* state_value(EncryptionState s) {
  switch (s) {
    case EncryptionState::none: return "";
    case EncryptionState::requires_encryption: return "requiresEncryption";
    case EncryptionState::prepared: return "encryptionPrepared";
    case EncryptionState::encrypted: return "encrypted";
  }
  return "";
}

std::optional<std::string> get_meta_migrating(rbd::Image& image, const std::string& key,
                                              const std::string& old_key) {
  if (auto v = image.get_meta(key)) return v;
  auto v = image.get_meta(old_key);
  if (v && !image.read_only()) {
    image.set_meta(key, *v);
    image.remove_meta(old_key);
    log::info(image.spec(), ": moved metadata '", old_key, "' to '", key, "'");
  }
  return v;
}

EncryptionState get_state(rbd::Image& image) {
  auto v = get_meta_migrating(image, meta_state_key, meta_state_key_old);
  std::string s = v.value_or("");
  auto first = s.find_first_not_of(" \t\r\n");
  s = first == std::string::npos ? "" : s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
  for (auto st : {EncryptionState::none, EncryptionState::requires_encryption,
                  EncryptionState::prepared, EncryptionState::encrypted})
    if (s == state_value(st)) return st;
  throw Error(EBADMSG, cat(image.spec(), ": metadata '", meta_state_key,
                           "': unknown encryption state '", s, "'"));
}

void set_state(rbd::Image& image, EncryptionState s) {
  if (s == EncryptionState::none) {
    image.remove_meta(meta_state_key);
    image.remove_meta(meta_state_key_old);
    return;
  }
  image.set_meta(meta_state_key, state_value(s));
}

void ImageDEKStore::check_volume(const std::string& volume_id) const {
  if (volume_id != volume_id_)
    throw Error(EINVAL, cat(describe(), ": holds the DEK of volume ", volume_id_, ", not of ",
                            volume_id));
}

void ImageDEKStore::store_dek(const std::string& volume_id, const std::string& wrapped) {
  check_volume(volume_id);
  image_.set_meta(meta_dek_key, wrapped);
}

std::optional<std::string> ImageDEKStore::fetch_dek(const std::string& volume_id) {
  check_volume(volume_id);
  return get_meta_migrating(image_, meta_dek_key, meta_dek_key_old);
}

void ImageDEKStore::remove_dek(const std::string& volume_id) {
  check_volume(volume_id);
  image_.remove_meta(meta_dek_key);
  image_.remove_meta(meta_dek_key_old);
}

std::string ImageDEKStore::describe() const {
  return cat("image ", image_.spec(), " metadata '", meta_dek_key, "'");
}

}  // namespace rbdgw::kms
