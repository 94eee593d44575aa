// librbd's client-side encryption (LUKS1/LUKS2, as `rbd encryption format`
// writes it): naming the formats and loading a passphrase into an open image.
//
// Thread safety: load_encryption must run before any I/O on the image;
// the rest are pure functions.
#pragma once

#include <string_view>

#include "crypto/secret.hpp"
#include "rbd/image.hpp"

namespace rbdgw::rbd {

enum class EncryptionFormat { luks1, luks2 };

// "luks1" / "luks2" -> format; throws Error(EINVAL) naming the value.
EncryptionFormat parse_encryption_format(std::string_view name);
const char* encryption_format_name(EncryptionFormat f);

// Loads the image's encryption header with passphrase; from then on reads
// and writes on img are decrypted/encrypted and the reported size excludes
// the header. Throws Error(EPERM) "wrong passphrase" for a passphrase that
// opens no keyslot, Error(EINVAL) for an image without such a header.
void load_encryption(Image& img, EncryptionFormat f, const SecretBuffer& passphrase);

}  // namespace rbdgw::rbd
