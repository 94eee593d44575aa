#include "luks/cryptsetup.hpp"

#include <cerrno>
#include <cstring>
#include <mutex>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::luks::detail {
namespace {

// libcryptsetup's log: its messages are context for our own errors, which
// carry the cause; they never contain passphrases or keys.
void log_callback(int level, const char* msg, void*) noexcept {
  try {
    std::string_view m = msg ? msg : "";
    while (!m.empty() && (m.back() == '\n' || m.back() == '\r')) m.remove_suffix(1);
    if (m.empty()) return;
    const auto l = level == CRYPT_LOG_ERROR ? log::Level::warn : log::Level::debug;
    if (log::enabled(l)) log::write(l, cat("libcryptsetup: ", m));
  } catch (...) {
    // Nothing may escape into C; a lost log line is acceptable.
  }
}

void route_log() {
  static std::once_flag once;
  std::call_once(once, [] { crypt_set_log_callback(nullptr, log_callback, nullptr); });
}

}  // namespace

CryptPtr init_device(const std::string& path) {
  route_log();
  crypt_device* cd = nullptr;
  check(crypt_init(&cd, path.c_str()), "crypt_init", path);
  return CryptPtr(cd);
}

CryptPtr init_by_name(const std::string& name) {
  route_log();
  crypt_device* cd = nullptr;
  const int r = crypt_init_by_name(&cd, name.c_str());
  if (r == -ENODEV) return nullptr;
  check(r, "crypt_init_by_name", name);
  return CryptPtr(cd);
}

void load_luks2(crypt_device* cd, std::string_view object) {
  const int r = crypt_load(cd, CRYPT_LUKS2, nullptr);
  if (r >= 0) return;
  if (crypt_load(cd, CRYPT_LUKS1, nullptr) >= 0)
    throw Error(ENOTSUP, cat(object, ": LUKS1 is not supported by the luks2 code; only LUKS2 "
                                     "(convert with `cryptsetup convert --type luks2`)"));
  if (r == -EINVAL)
    throw Error(EINVAL, cat(object, ": no valid LUKS2 header (crypt_load: ", std::strerror(-r), ")"));
  throw_errno("crypt_load", object, r);
}

void set_pbkdf(crypt_device* cd, const Pbkdf& p, std::string_view object) {
  const bool argon = p.type == Pbkdf::Type::argon2id;
  crypt_pbkdf_type t{};
  t.type = argon ? CRYPT_KDF_ARGON2ID : CRYPT_KDF_PBKDF2;
  t.hash = "sha256";
  t.time_ms = p.time_ms;
  t.iterations = p.iterations;
  if (argon) {
    t.max_memory_kb = p.max_memory_kib;
    t.parallel_threads = p.parallel_threads;
    if (!t.parallel_threads) t.parallel_threads = crypt_get_pbkdf_default(CRYPT_LUKS2)->parallel_threads;
  }
  if (p.iterations) t.flags = CRYPT_PBKDF_NO_BENCHMARK;
  check(crypt_set_pbkdf_type(cd, &t), "crypt_set_pbkdf_type", object);
}

void format(crypt_device* cd, const SecretBuffer& passphrase, const FormatOptions& o,
            std::string_view object) {
  const std::uint32_t ss = o.sector_size;
  if (ss < 512 || ss > 4096 || (ss & (ss - 1)) != 0)
    throw Error(EINVAL, cat("LuksFormat: ", object, ": sector size ", ss,
                            " is not a power of two in 512..4096"));
  if (o.key_bits != 256 && o.key_bits != 512)
    throw Error(EINVAL, cat("LuksFormat: ", object, ": key size ", o.key_bits,
                            " bits; aes-xts-plain64 takes 256 or 512"));
  if (passphrase.empty()) throw Error(EINVAL, cat("LuksFormat: ", object, ": empty passphrase"));
  set_pbkdf(cd, o.pbkdf, object);
  crypt_params_luks2 params{};
  params.sector_size = ss;
  params.label = o.label.empty() ? nullptr : o.label.c_str();
  check(crypt_format(cd, CRYPT_LUKS2, "aes", "xts-plain64", o.uuid.empty() ? nullptr : o.uuid.c_str(),
                     nullptr, o.key_bits / 8, &params),
        "crypt_format", object);
  check(crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, nullptr, o.key_bits / 8, passphrase.chars(),
                                        passphrase.size()),
        "crypt_keyslot_add_by_volume_key", object);
}

void throw_passphrase_error(int r, std::string_view call, std::string_view object,
                            const SecretBuffer* passphrase) {
  if (r == -EPERM || r == -ENOENT)
    throw Error(EPERM, cat(object, ": wrong passphrase (no keyslot matched)",
                           passphrase ? trailing_newline_hint(*passphrase) : std::string()));
  throw_errno(call, object, r);
}

}  // namespace rbdgw::luks::detail
