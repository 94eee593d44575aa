// rbdgw serve's configuration file (lib/serve/config.hpp).
#include "serve/config.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.hpp"

namespace rbdgw::serve {

const char* to_string(Encryption e) {
  switch (e) {
    case Encryption::none: return "none";
    case Encryption::decrypted: return "decrypted";
    case Encryption::ciphertext: return "ciphertext";
  }
  return "?";
}

bool Export::allows(const std::string& identity) const {
  return std::find(allow.begin(), allow.end(), identity) != allow.end();
}

const Export* Config::find(const std::string& name) const {
  for (const Export& e : exports)
    if (e.name == name) return &e;
  return nullptr;
}

Listen parse_listen(const std::string& s) {
  Listen l;
  l.text = s;
  if (s.starts_with("unix:")) {
    l.unix_socket = true;
    l.path = s.substr(5);
    if (l.path.empty() || l.path[0] != '/')
      throw Error(EINVAL, cat("listen '", s, "': unix socket path must be absolute"));
    return l;
  }
  std::size_t colon;
  if (s.starts_with("[")) {
    const std::size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      throw Error(EINVAL, cat("listen '", s, "': expected [ADDR]:PORT"));
    l.host = s.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = s.rfind(':');
    if (colon == std::string::npos)
      throw Error(EINVAL, cat("listen '", s, "': expected HOST:PORT or unix:/PATH"));
    l.host = s.substr(0, colon);
  }
  l.port = s.substr(colon + 1);
  if (l.port.empty() || !std::all_of(l.port.begin(), l.port.end(), ::isdigit))
    throw Error(EINVAL, cat("listen '", s, "': port must be a number"));
  return l;
}

namespace {

std::string str(const nlohmann::json& j, const char* key, const std::string& where,
                bool required = false) {
  if (!j.contains(key)) {
    if (required) throw Error(EINVAL, cat(where, ": '", key, "' is required"));
    return {};
  }
  if (!j[key].is_string()) throw Error(EINVAL, cat(where, ": '", key, "' must be a string"));
  return j[key].get<std::string>();
}

bool name_ok(const std::string& n) {
  if (n.empty() || n.size() > 4096) return false;
  return std::all_of(n.begin(), n.end(), [](unsigned char c) { return c >= 0x20 && c != 0x7f; });
}

}  // namespace

Config parse_config(const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(EINVAL, cat(origin, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) throw Error(EINVAL, cat(origin, ": must be a JSON object"));
  static const std::set<std::string> top = {"listen", "tls", "insecure_plain", "cluster", "run_dir",
                                            "exports", "negotiation_timeout"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!top.count(it.key())) throw Error(EINVAL, cat(origin, ": unknown key '", it.key(), "'"));
  Config c;
  if (!j.contains("listen") || !j["listen"].is_array() || j["listen"].empty())
    throw Error(EINVAL, cat(origin, ": 'listen' must be a non-empty list of addresses"));
  for (const auto& l : j["listen"]) {
    if (!l.is_string()) throw Error(EINVAL, cat(origin, ": 'listen' entries must be strings"));
    c.listen.push_back(parse_listen(l.get<std::string>()));
  }
  if (j.contains("tls")) {
    const auto& t = j["tls"];
    if (!t.is_object()) throw Error(EINVAL, cat(origin, ": 'tls' must be an object"));
    for (auto it = t.begin(); it != t.end(); ++it)
      if (it.key() != "psk_file" && it.key() != "certificates")
        throw Error(EINVAL, cat(origin, ": tls: unknown key '", it.key(), "'"));
    c.psk_file = str(t, "psk_file", origin + ": tls");
    c.certificates = str(t, "certificates", origin + ": tls");
  }
  if (j.contains("insecure_plain")) {
    if (!j["insecure_plain"].is_boolean())
      throw Error(EINVAL, cat(origin, ": 'insecure_plain' must be true or false"));
    c.insecure_plain = j["insecure_plain"].get<bool>();
  }
  if (c.tls() && c.insecure_plain)
    throw Error(EINVAL, cat(origin, ": 'insecure_plain' and 'tls' exclude each other"));
  if (!c.tls() && !c.insecure_plain)
    throw Error(EINVAL, cat(origin, ": TLS is required: give tls.psk_file and/or tls.certificates "
                                    "(or \"insecure_plain\": true for plain NBD)"));
  if (j.contains("cluster")) {
    const auto& k = j["cluster"];
    if (!k.is_object()) throw Error(EINVAL, cat(origin, ": 'cluster' must be an object"));
    for (auto it = k.begin(); it != k.end(); ++it)
      if (it.key() != "conf" && it.key() != "id" && it.key() != "keyring" && it.key() != "mon_host")
        throw Error(EINVAL, cat(origin, ": cluster: unknown key '", it.key(), "'"));
    c.cluster.conf = str(k, "conf", origin + ": cluster");
    c.cluster.id = str(k, "id", origin + ": cluster");
    c.cluster.keyring = str(k, "keyring", origin + ": cluster");
    c.cluster.mon_host = str(k, "mon_host", origin + ": cluster");
  }
  if (j.contains("run_dir")) c.run_dir = str(j, "run_dir", origin);
  if (j.contains("negotiation_timeout")) {
    const auto& t = j["negotiation_timeout"];
    if (!t.is_number_integer() || t.get<long long>() < 0 || t.get<long long>() > 86400)
      throw Error(EINVAL, cat(origin, ": 'negotiation_timeout' must be whole seconds, 0 to 86400"));
    c.negotiation_timeout = int(t.get<long long>());
  }
  if (c.run_dir.empty() || c.run_dir[0] != '/')
    throw Error(EINVAL, cat(origin, ": 'run_dir' must be an absolute path"));
  if (!j.contains("exports") || !j["exports"].is_array() || j["exports"].empty())
    throw Error(EINVAL, cat(origin, ": 'exports' must be a non-empty list"));
  static const std::set<std::string> ekeys = {"name", "image", "read_only", "encryption",
                                              "passphrase_file", "allow"};
  for (const auto& e : j["exports"]) {
    if (!e.is_object()) throw Error(EINVAL, cat(origin, ": 'exports' entries must be objects"));
    Export x;
    x.name = str(e, "name", origin + ": export", true);
    const std::string where = cat(origin, ": export '", x.name, "'");
    if (!name_ok(x.name)) throw Error(EINVAL, cat(where, ": name must be printable, 1-4096 bytes"));
    if (c.find(x.name)) throw Error(EINVAL, cat(where, ": defined twice"));
    for (auto it = e.begin(); it != e.end(); ++it)
      if (!ekeys.count(it.key())) throw Error(EINVAL, cat(where, ": unknown key '", it.key(), "'"));
    x.image = str(e, "image", where, true);
    if (e.contains("read_only")) {
      if (!e["read_only"].is_boolean())
        throw Error(EINVAL, cat(where, ": 'read_only' must be true or false"));
      x.read_only = e["read_only"].get<bool>();
    }
    const std::string enc = str(e, "encryption", where);
    if (enc == "none") x.encryption = Encryption::none;
    else if (enc == "decrypted") x.encryption = Encryption::decrypted;
    else if (enc == "ciphertext") x.encryption = Encryption::ciphertext;
    else
      throw Error(EINVAL, cat(where, ": 'encryption' must be given explicitly: none, decrypted "
                                     "(opened in the gateway) or ciphertext (the client opens LUKS2)"));
    x.passphrase_file = str(e, "passphrase_file", where);
    if (x.encryption == Encryption::decrypted && x.passphrase_file.empty())
      throw Error(EINVAL, cat(where, ": encryption 'decrypted' needs 'passphrase_file'"));
    if (x.encryption != Encryption::decrypted && !x.passphrase_file.empty())
      throw Error(EINVAL, cat(where, ": 'passphrase_file' is only for encryption 'decrypted'"));
    if (!e.contains("allow") || !e["allow"].is_array())
      throw Error(EINVAL, cat(where, ": 'allow' must be a list of identities"));
    for (const auto& a : e["allow"]) {
      if (!a.is_string()) throw Error(EINVAL, cat(where, ": 'allow' entries must be strings"));
      const std::string id = a.get<std::string>();
      if (!(id.starts_with("psk:") && id.size() > 4) && !(id.starts_with("x509:") && id.size() > 5) &&
          id != "anonymous")
        throw Error(EINVAL, cat(where, ": identity '", id,
                                "': expected psk:IDENTITY, x509:COMMON-NAME or anonymous"));
      if (id == "anonymous" && !c.insecure_plain)
        throw Error(EINVAL, cat(where, ": 'anonymous' is only for insecure_plain servers"));
      x.allow.push_back(id);
    }
    c.exports.push_back(std::move(x));
  }
  return c;
}

Config load_config(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw_errno("open", path, errno ? errno : ENOENT);
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace rbdgw::serve
