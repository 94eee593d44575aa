// Internal to lib/luks: RAII and shared helpers over libcryptsetup.
// Not for use outside lib/luks.
//
// Thread safety: a crypt_device is not thread-safe; one owner at a time.
// make_device() may be called from any thread.
#pragma once

#include <libcryptsetup.h>

#include <memory>
#include <string>
#include <string_view>

#include "crypto/secret.hpp"
#include "luks/header.hpp"

namespace rbdgw::luks::detail {

struct CryptFree {
  void operator()(crypt_device* cd) const noexcept { crypt_free(cd); }
};
using CryptPtr = std::unique_ptr<crypt_device, CryptFree>;

// crypt_init on `path` (routes libcryptsetup's log to rbdgw::log first).
CryptPtr init_device(const std::string& path);
// crypt_init_by_name for an active mapping; nullptr if `name` is not active.
CryptPtr init_by_name(const std::string& name);
// crypt_load of a LUKS2 header; LUKS1 and non-LUKS content get clear errors.
void load_luks2(crypt_device* cd, std::string_view object);
// Sets the PBKDF for the keyslots made next on cd.
void set_pbkdf(crypt_device* cd, const Pbkdf& pbkdf, std::string_view object);
// crypt_format (LUKS2, aes-xts-plain64) plus a first keyslot for passphrase.
void format(crypt_device* cd, const SecretBuffer& passphrase, const FormatOptions& opts,
            std::string_view object);

// Throws the project's error for a libcryptsetup return code r < 0 from a
// call that took a passphrase: -EPERM becomes "wrong passphrase" (with
// trailing_newline_hint(*passphrase) when given).
[[noreturn]] void throw_passphrase_error(int r, std::string_view call, std::string_view object,
                                         const SecretBuffer* passphrase = nullptr);

}  // namespace rbdgw::luks::detail
