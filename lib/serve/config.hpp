// rbdgw serve's configuration: exports, grants, TLS material, listeners.
//
// A JSON file (see docs/serve.md):
//   { "listen": ["0.0.0.0:10809", "unix:/run/rbdgw-serve/nbd.sock"],
//     "tls": { "psk_file": "/etc/rbdgw/serve/psk",      // nbdkit --tls-psk format
//              "certificates": "/etc/rbdgw/serve/pki" }, // ca-cert.pem server-cert.pem server-key.pem
//     "insecure_plain": false,      // true (and no "tls"): plain NBD, with a warning
//     "cluster": { "conf": "/etc/ceph/ceph.conf", "id": "admin", "keyring": "...", "mon_host": "..." },
//     "run_dir": "/run/rbdgw-serve",
//     "negotiation_timeout": 30,    // seconds from accept to the chosen export; 0: none
//     "exports": [ { "name": "vm1", "image": "rbd/vm1", "read_only": false,
//                    "encryption": "none" | "decrypted" | "ciphertext",
//                    "passphrase_file": "/etc/rbdgw/serve/vm1.pass",  // decrypted only, 0600
//                    "allow": ["psk:alice", "x509:client1.example.com"] } ] }
// Identities: "psk:IDENTITY" (the PSK identity), "x509:CN" (the verified client
// certificate's subject common name), "anonymous" (plain connections only).
//
// Thread safety: the parsed Config is immutable and may be shared.
#pragma once

#include <string>
#include <vector>

namespace rbdgw::serve {

enum class Encryption { none, decrypted, ciphertext };
const char* to_string(Encryption e);

struct Export {
  std::string name;
  std::string image;
  bool read_only = false;
  Encryption encryption = Encryption::none;
  std::string passphrase_file;
  std::vector<std::string> allow;
  bool allows(const std::string& identity) const;
};

struct Listen {
  bool unix_socket = false;
  std::string path;  // unix
  std::string host;  // tcp
  std::string port;
  std::string text;  // as written
};

struct Cluster {
  std::string conf, id, keyring, mon_host;
};

struct Config {
  std::vector<Listen> listen;
  std::string psk_file;
  std::string certificates;  // directory
  bool insecure_plain = false;
  Cluster cluster;
  std::string run_dir = "/run/rbdgw-serve";
  // Seconds a client may take from accept to NBD_OPT_GO (TLS handshake and
  // option haggling included), so that idle or slow unauthenticated clients
  // do not hold connections; 0 disables it.
  int negotiation_timeout = 30;
  std::vector<Export> exports;

  bool tls() const { return !psk_file.empty() || !certificates.empty(); }
  const Export* find(const std::string& name) const;
};

// Parses and checks the file (every error names the file and the key).
// Throws Error(EINVAL) on bad content, Error(errno) when it cannot be read.
Config load_config(const std::string& path);
Config parse_config(const std::string& text, const std::string& origin);

// "host:port", "[v6]:port", "unix:/path".
Listen parse_listen(const std::string& s);

}  // namespace rbdgw::serve
