#include "rbd/export_config.hpp"

#include <cerrno>
#include <charconv>

#include "common/error.hpp"
#include "rbd/io.hpp"

namespace rbdgw::rbd {
namespace {

[[noreturn]] void bad(std::string_view key, std::string_view why) {
  throw Error(EINVAL, cat("parameter '", key, "': ", why));
}

// Stores value into an empty field; a second occurrence is an error.
void set_once(std::string& field, std::string_view key, std::string_view value) {
  if (value.empty()) bad(key, "empty value");
  if (!field.empty()) bad(key, "given more than once");
  field = value;
}

constexpr std::string_view ceph_prefix = "ceph.";
// What durable-writes=true sets.
const std::pair<std::string, std::string> kNoCache{"rbd_cache", "false"};

}  // namespace

bool ExportConfig::is_secret_key(std::string_view key) {
  return key == "key" || key == "encryption-passphrase";
}

void ExportConfig::set(std::string_view key, std::string_view value) {
  if (is_secret_key(key)) bad(key, "is a secret: pass it as +FILE, -FD or - (prompt)");
  if (key == "image") {
    if (spec) bad(key, "given more than once");
    spec = ImageSpec::parse(value);
  } else if (key == "conf") {
    set_once(cluster.conf_file, key, value);
  } else if (key == "id") {
    if (value.starts_with("client.")) value.remove_prefix(7);
    set_once(cluster.id, key, value);
  } else if (key == "keyring") {
    set_once(cluster.keyring, key, value);
  } else if (key == "mon_host") {
    set_once(cluster.mon_host, key, value);
  } else if (key == "timeout") {
    unsigned s = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), s);
    if (ec != std::errc() || p != value.data() + value.size() || s == 0)
      bad(key, cat("'", value, "' is not a positive number of seconds"));
    cluster.connect_timeout = std::chrono::seconds(s);
  } else if (key == "encryption-format") {
    if (encryption) bad(key, "given more than once");
    encryption = parse_encryption_format(value);
  } else if (key == "durable-writes") {
    if (value != "true" && value != "false") bad(key, cat("'", value, "': expected true or false"));
    if (durable_writes) bad(key, "given more than once");
    durable_writes = value == "true";
    if (durable_writes) cluster.config.emplace_back(kNoCache.first, kNoCache.second);
  } else if (key == "exclusive") {
    if (value != "true" && value != "false") bad(key, cat("'", value, "': expected true or false"));
    if (exclusive) bad(key, "given more than once");
    exclusive = value == "true";
  } else if (key == "node") {
    set_once(node, key, value);
  } else if (key.starts_with(ceph_prefix) && key.size() > ceph_prefix.size()) {
    std::string opt(key.substr(ceph_prefix.size()));
    if (opt == "key") bad(key, "is a secret: use key=+FILE");
    cluster.config.emplace_back(std::move(opt), std::string(value));
  } else {
    throw Error(EINVAL, cat("unknown parameter '", key, "'"));
  }
}

void ExportConfig::set_secret(std::string_view key, SecretBuffer value) {
  SecretBuffer* field = key == "key" ? &cluster.key
                        : key == "encryption-passphrase" ? &passphrase
                                                         : nullptr;
  if (!field) throw Error(EINVAL, cat("parameter '", key, "' is not a secret"));
  if (!field->empty()) bad(key, "given more than once");
  if (value.empty()) bad(key, "empty secret");
  *field = std::move(value);
}

void ExportConfig::validate() const {
  if (durable_writes)
    for (const auto& kv : cluster.config)
      if (kv.first.starts_with("rbd_cache") && kv != kNoCache)
        throw Error(EINVAL, cat("parameters 'durable-writes' and 'ceph.", kv.first,
                                "' exclude each other"));
  if (!spec)
    throw Error(EINVAL, "no image given: pass [image=]pool[/namespace]/image[@snap]");
  if (!cluster.keyring.empty() && !cluster.key.empty())
    throw Error(EINVAL, "parameters 'keyring' and 'key' exclude each other");
  if (exclusive && !spec->snap.empty())
    throw Error(EINVAL, "parameter 'exclusive': a snapshot is read-only and takes no lock");
  if (!node.empty() && !exclusive) throw Error(EINVAL, "parameter 'node' needs 'exclusive=true'");
  if (encryption && passphrase.empty())
    throw Error(EINVAL, "parameter 'encryption-format' needs 'encryption-passphrase'");
  if (!encryption && !passphrase.empty())
    throw Error(EINVAL, "parameter 'encryption-passphrase' needs 'encryption-format'");
}

Image open_export(const ExportConfig& c, bool read_only) {
  c.validate();
  const Cluster cluster = Cluster::connect(c.cluster);
  Image img = Image::open(cluster, *c.spec, read_only ? Image::Mode::read_only : Image::Mode::read_write);
  if (c.durable_writes && !cache_mode(img).writes_durable)
    throw Error(EINVAL, cat(img.spec(), ": its own configuration (rbd config image/pool: rbd_cache, "
                            "rbd_cache_policy) acknowledges writes before they are on the OSDs; "
                            "durable-writes=true refuses to serve it (see `rbd config image list ",
                            img.spec(), "`)"));
  if (c.encryption) load_encryption(img, *c.encryption, c.passphrase);
  return img;
}

}  // namespace rbdgw::rbd
