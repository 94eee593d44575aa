#include "kms/config.hpp"

#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "common/log.hpp"
#include "kms/kmip_kms.hpp"
#include "kms/secrets_kms.hpp"

namespace rbdgw::kms {
namespace {

using json = nlohmann::json;

constexpr const char* type_key = "encryptionKMSType";
constexpr const char* legacy_type_key = "KMS_PROVIDER";
constexpr const char* file_key = "passphraseFile";
constexpr const char* secret_name_key = "secretName";
constexpr const char* secret_namespace_key = "secretNamespace";

std::string where(const std::string& id) { return cat("KMS '", id, "'"); }

// The string value of key, or "" when absent; Error when not a string.
std::string string_key(const std::string& id, const json& entry, const char* key) {
  auto it = entry.find(key);
  if (it == entry.end()) return {};
  if (!it->is_string())
    throw Error(EINVAL, cat(where(id), ": key '", key, "' must be a string, not ", it->type_name()));
  return it->get<std::string>();
}

SecretBuffer passphrase_for(const std::string& id, const json& entry, const Secrets& secrets) {
  std::string file = string_key(id, entry, file_key);
  if (!file.empty()) {
    try {
      return read_secret_file(file);  // exact bytes, as a Kubernetes Secret's value
    } catch (const Error& e) {
      throw Error(e.code(), cat(where(id), ": key '", file_key, "': ", e.what()));
    }
  }
  if (auto it = secrets.find(passphrase_secret_key); it != secrets.end())
    return SecretBuffer(it->second);
  std::string secret_name = string_key(id, entry, secret_name_key);
  std::string secret_ns = string_key(id, entry, secret_namespace_key);
  if (!secret_name.empty())
    throw Error(EINVAL, cat(where(id), ": key '", secret_name_key, "' names the Kubernetes Secret ",
                            secret_ns.empty() ? "" : secret_ns + "/", secret_name,
                            ", which rbdgw cannot read (no Kubernetes API): put '",
                            passphrase_secret_key, "' in the request's secrets or set '",
                            file_key, "'"));
  throw Error(EINVAL, cat(where(id), ": missing secret '", passphrase_secret_key,
                          "' (in the request's secrets, or a file named by '", file_key, "')"));
}

// kmip (ceph-csi internal/kms/kmip.go): configuration keys, and the keys
// of its credentials (ceph-csi: the Kubernetes Secret KMIP_SECRET_NAME).
constexpr const char* kmip_endpoint_key = "KMIP_ENDPOINT";
constexpr const char* kmip_secret_name_key = "KMIP_SECRET_NAME";
constexpr const char* kmip_server_name_key = "TLS_SERVER_NAME";
constexpr const char* kmip_read_timeout_key = "READ_TIMEOUT";
constexpr const char* kmip_write_timeout_key = "WRITE_TIMEOUT";
constexpr const char* kmip_secrets_dir_key = "secretsDir";  // rbdgw's own
constexpr const char* kmip_default_secret_name = "ceph-csi-kmip-credentials";

unsigned timeout_key(const std::string& id, const json& entry, const char* key) {
  auto it = entry.find(key);
  if (it == entry.end()) return 10;  // ceph-csi's default
  if (!it->is_number())
    throw Error(EINVAL, cat(where(id), ": key '", key, "' must be a number of seconds, not ",
                            it->type_name()));
  const double v = it->get<double>();
  if (!(v >= 1 && v <= 255))
    throw Error(EINVAL, cat(where(id), ": key '", key, "': ", it->dump(),
                            " seconds is out of range (1 to 255; rbdgw never waits without bound)"));
  return static_cast<unsigned>(v);
}

// The non-secret part of a kmip entry, checked.
KmipSettings kmip_options(const std::string& id, const json& entry) {
  KmipSettings s;
  s.what = where(id);
  s.endpoint = string_key(id, entry, kmip_endpoint_key);
  if (s.endpoint.empty()) throw Error(EINVAL, cat(where(id), ": missing key '", kmip_endpoint_key, "'"));
  s.server_name = string_key(id, entry, kmip_server_name_key);
  s.read_timeout_s = timeout_key(id, entry, kmip_read_timeout_key);
  s.write_timeout_s = timeout_key(id, entry, kmip_write_timeout_key);
  string_key(id, entry, kmip_secret_name_key);
  string_key(id, entry, kmip_secrets_dir_key);
  return s;
}

// One credential of a kmip KMS: the file KEY in secretsDir if there is
// one, else the request's secret KEY.
SecretBuffer kmip_credential(const std::string& id, const json& entry, const Secrets& secrets,
                             const char* key) {
  const std::string dir = string_key(id, entry, kmip_secrets_dir_key);
  if (!dir.empty()) {
    const std::string path = dir + "/" + key;
    if (::access(path.c_str(), F_OK) == 0) {
      try {
        return read_secret_file(path);
      } catch (const Error& e) {
        throw Error(e.code(), cat(where(id), ": key '", kmip_secrets_dir_key, "': ", e.what()));
      }
    }
  }
  if (auto it = secrets.find(key); it != secrets.end()) return SecretBuffer(it->second);
  std::string name = string_key(id, entry, kmip_secret_name_key);
  if (name.empty()) name = kmip_default_secret_name;
  throw Error(EINVAL, cat(where(id), ": missing credential '", key, "' (ceph-csi reads it from the Secret ",
                          name, "; rbdgw takes it from the request's secrets or from the file ",
                          dir.empty() ? std::string("<secretsDir>") : dir, "/", key, ")"));
}

std::shared_ptr<EncryptionKMS> build_kmip(const std::string& id, const json& entry,
                                          const Secrets& secrets) {
  KmipSettings s = kmip_options(id, entry);
  s.ca_cert_pem = std::string(kmip_credential(id, entry, secrets, "CA_CERT").view());
  s.client_cert_pem = std::string(kmip_credential(id, entry, secrets, "CLIENT_CERT").view());
  s.client_key_pem = kmip_credential(id, entry, secrets, "CLIENT_KEY");
  // A key ID is not secret; whitespace around it (a file's newline) is not part of it.
  SecretBuffer uid = trim_whitespace(kmip_credential(id, entry, secrets, "UNIQUE_IDENTIFIER"));
  return make_kmip_kms(id, std::move(s), std::string(uid.view()));
}

struct Entry {
  json body;
  std::string type;  // "metadata" or "default"
};

// A configured entry (decoded from the string form) with its type and key
// types checked; Error naming the KMS ID and the key.
Entry checked_entry(const std::string& id, const json& raw, const std::string& source) {
  Entry e{raw, {}};
  if (e.body.is_string()) {  // csi-kms-connection-details form
    e.body = json::parse(raw.get<std::string>(), nullptr, false);
    if (e.body.is_discarded())
      throw Error(EINVAL, cat(where(id), ": entry in ", source, " is a string but not JSON"));
  }
  if (!e.body.is_object())
    throw Error(EINVAL, cat(where(id), ": entry in ", source, " must be an object, not ",
                            e.body.type_name()));
  e.type = string_key(id, e.body, type_key);
  if (e.type.empty()) e.type = string_key(id, e.body, legacy_type_key);
  if (e.type.empty()) throw Error(EINVAL, cat(where(id), ": missing key '", type_key, "'"));
  if (e.type != "metadata" && e.type != default_kms_id && e.type != "kmip")
    throw Error(EINVAL, cat(where(id), ": key '", type_key, "': unsupported KMS type '", e.type,
                            "' (supported: metadata, default, kmip)"));
  for (const char* key : {file_key, secret_name_key, secret_namespace_key}) string_key(id, e.body, key);
  if (e.type == "kmip") kmip_options(id, e.body);
  return e;
}

}  // namespace

KMSConfig::KMSConfig() : doc_(std::make_shared<const json>(json::object())) {}

KMSConfig KMSConfig::parse(std::string_view text, std::string_view source) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(EINVAL, cat(source, ": not valid JSON: ", e.what()));
  }
  if (!doc.is_object())
    throw Error(EINVAL, cat(source, ": must be a JSON object keyed by KMS ID, not ",
                            doc.type_name()));
  KMSConfig c;
  c.doc_ = std::make_shared<const json>(std::move(doc));
  c.source_ = source;
  return c;
}

KMSConfig KMSConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_errno("open KMS config", path, errno);
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

void KMSConfig::validate() const {
  for (auto it = doc_->begin(); it != doc_->end(); ++it) checked_entry(it.key(), *it, source_);
}

std::vector<std::string> KMSConfig::ids() const {
  std::vector<std::string> out;
  for (auto it = doc_->begin(); it != doc_->end(); ++it) out.push_back(it.key());
  return out;
}

std::shared_ptr<EncryptionKMS> KMSConfig::build(const std::string& kms_id,
                                                const Secrets& secrets) const {
  const std::string id = kms_id.empty() ? default_kms_id : kms_id;
  auto it = doc_->find(id);
  if (it == doc_->end()) {
    if (id == default_kms_id) return make_default_kms(id, passphrase_for(id, json::object(), secrets));
    std::string known;
    for (const auto& k : ids()) known += (known.empty() ? "" : ", ") + k;
    throw Error(ENOENT, cat(where(id), ": not in ", source_, " (known: ",
                            known.empty() ? "none" : known, ")"));
  }
  const Entry e = checked_entry(id, *it, source_);
  if (e.type == "kmip") {
    auto kms = build_kmip(id, e.body, secrets);
    log::debug(where(id), ": type 'kmip' ready");
    return kms;
  }
  SecretBuffer passphrase = passphrase_for(id, e.body, secrets);
  auto kms = e.type == "metadata" ? make_metadata_kms(id, std::move(passphrase))
                                  : make_default_kms(id, std::move(passphrase));
  log::debug(where(id), ": type '", e.type, "' ready");
  return kms;
}

}  // namespace rbdgw::kms
