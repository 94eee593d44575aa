#include "rbd/encryption.hpp"

#include <cerrno>

#include "common/error.hpp"

namespace rbdgw::rbd {

EncryptionFormat parse_encryption_format(std::string_view name) {
  if (name == "luks1") return EncryptionFormat::luks1;
  if (name == "luks2") return EncryptionFormat::luks2;
  throw Error(EINVAL, cat("encryption format '", name, "': unknown (expected luks1 or luks2)"));
}

const char* encryption_format_name(EncryptionFormat f) {
  return f == EncryptionFormat::luks1 ? "luks1" : "luks2";
}

void load_encryption(Image& img, EncryptionFormat f, const SecretBuffer& passphrase) {
  // The LUKS1 and LUKS2 option structs have the same layout; alg is ignored
  // on load (the header names the cipher).
  int r;
  if (f == EncryptionFormat::luks1) {
    rbd_encryption_luks1_format_options_t o{RBD_ENCRYPTION_ALGORITHM_AES256, passphrase.chars(),
                                            passphrase.size()};
    r = rbd_encryption_load(img.handle(), RBD_ENCRYPTION_FORMAT_LUKS1, &o, sizeof o);
  } else {
    rbd_encryption_luks2_format_options_t o{RBD_ENCRYPTION_ALGORITHM_AES256, passphrase.chars(),
                                            passphrase.size()};
    r = rbd_encryption_load(img.handle(), RBD_ENCRYPTION_FORMAT_LUKS2, &o, sizeof o);
  }
  const std::string what = cat(img.spec(), " (", encryption_format_name(f), ")");
  if (r == -EPERM)
    throw Error(EPERM, cat("rbd_encryption_load: ", what,
                           ": wrong passphrase (no keyslot opens with it)",
                           trailing_newline_hint(passphrase)));
  if (r == -EINVAL)
    throw Error(EINVAL, cat("rbd_encryption_load: ", what,
                            ": no valid encryption header of this format on the image"));
  check(r, "rbd_encryption_load", what);
}

}  // namespace rbdgw::rbd
