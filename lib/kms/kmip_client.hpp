// A KMIP 1.4 client over TLS (OpenSSL), as ceph-csi's internal/kms/kmip.go
// talks to a KMIP server: one TLS connection per call, TLS 1.2 or later,
// a client certificate, the server verified against CA_CERT and its name
// (TLS_SERVER_NAME, else the endpoint's host) checked, then a
// DiscoverVersions for 1.4 and one request with one batch item.
//
// Every wait is bounded: connecting and writing by write_timeout, the TLS
// handshake and each whole reply by read_timeout. A reply is read as the
// 8-byte TTLV header, then exactly the length it announces (at most
// kmip::Limits::max_size), then decoded strictly.
//
// Errors are rbdgw::Error naming the KMS (`what`), the operation and the
// endpoint: ECONNREFUSED/EHOSTUNREACH/... from connect, ETIMEDOUT for a
// timeout, EPROTO for a TLS failure (with OpenSSL's reason and the
// certificate verification result), EBADMSG for a truncated or malformed
// reply, and for a failed operation the server's Result Reason mapped:
// Item Not Found -> ENOENT, Permission Denied / Authentication Not
// Successful -> EACCES, Cryptographic Failure -> EPERM, Operation/Feature
// Not Supported -> ENOTSUP, Invalid Field/Message, Missing Data -> EINVAL,
// anything else EIO; the message carries the reason and the server's
// Result Message.
//
// Thread safety: a KmipClient is immutable after construction; call() may
// run on several threads at once (each has its own connection).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "crypto/secret.hpp"
#include "kms/kmip_ttlv.hpp"

struct ssl_ctx_st;

namespace rbdgw::kms {

struct KmipSettings {
  std::string what;         // "KMS 'kmip-1'" for messages
  std::string endpoint;     // host:port, [v6addr]:port
  std::string server_name;  // TLS_SERVER_NAME; empty: the endpoint's host
  unsigned read_timeout_s = 10;
  unsigned write_timeout_s = 10;
  std::string ca_cert_pem;      // CA_CERT
  std::string client_cert_pem;  // CLIENT_CERT (may hold a chain)
  SecretBuffer client_key_pem;  // CLIENT_KEY
};

class KmipClient {
 public:
  // Parses the certificates and the key. Throws Error(EINVAL) naming
  // `what` and the secret key (CA_CERT, CLIENT_CERT, CLIENT_KEY).
  explicit KmipClient(KmipSettings s);
  ~KmipClient();
  KmipClient(const KmipClient&) = delete;
  KmipClient& operator=(const KmipClient&) = delete;

  // Connects, discovers version 1.4, sends `operation` with `payload` and
  // returns the response payload (tag Response Payload) of a successful
  // batch item.
  kmip::Item call(std::uint32_t operation, kmip::Item payload) const;

  const KmipSettings& settings() const { return s_; }

 private:
  KmipSettings s_;
  std::string host_, port_;
  std::unique_ptr<ssl_ctx_st, void (*)(ssl_ctx_st*)> ctx_;
};

}  // namespace rbdgw::kms
