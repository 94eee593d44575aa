#!/usr/bin/env python3
"""A KMIP client for the tests, on PyKMIP (independent of rbdgw's client).

  kmip_tool.py DIR create            -> prints the ID of a new, active AES-256 key
  kmip_tool.py DIR revoke ID         -> revokes (deactivates) the key
  kmip_tool.py DIR destroy ID        -> destroys a revoked key
  kmip_tool.py DIR wrap ID   < DEK   -> a wrapped DEK in ceph-csi's format
  kmip_tool.py DIR unwrap ID < JSON  -> the DEK

DIR holds port, ca.pem, client.pem, client.key (kmip-functions.sh).
wrap/unwrap do what ceph-csi's kmipKMS.EncryptDEK/DecryptDEK do, but
locally with the key material (KMIP Get) and the cryptography library's
AES-CBC and PKCS7 padding, so they check rbdgw's result independently of
the server: {"dek": base64(AES-256-CBC(key, nonce, PKCS5(DEK))),
"nonce": base64(16 random bytes)}, as Go's json.Marshal writes it.
Secrets go through stdin and stdout only.
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient


def client(d):
    with open(os.path.join(d, "port")) as f:
        port = int(f.read())
    return ProxyKmipClient(hostname="127.0.0.1", port=port,
                           cert=os.path.join(d, "client.pem"),
                           key=os.path.join(d, "client.key"),
                           ca=os.path.join(d, "ca.pem"),
                           config_file=os.path.join(d, "client.conf"),
                           kmip_version=enums.KMIPVersion.KMIP_1_4)


def key_bytes(c, uid):
    return c.get(uid).value


def main():
    d, cmd = sys.argv[1], sys.argv[2]
    with client(d) as c:
        if cmd == "create":
            uid = c.create(enums.CryptographicAlgorithm.AES, 256,
                           cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT,
                                                     enums.CryptographicUsageMask.DECRYPT])
            c.activate(uid)
            print(uid)
        elif cmd == "revoke":
            c.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, sys.argv[3])
        elif cmd == "destroy":
            c.destroy(sys.argv[3])
        elif cmd == "wrap":
            dek = sys.stdin.buffer.read()
            nonce = os.urandom(16)
            p = padding.PKCS7(128).padder()
            e = Cipher(algorithms.AES(key_bytes(c, sys.argv[3])), modes.CBC(nonce)).encryptor()
            ct = e.update(p.update(dek) + p.finalize()) + e.finalize()
            sys.stdout.write(json.dumps({"dek": base64.b64encode(ct).decode(),
                                         "nonce": base64.b64encode(nonce).decode()},
                                        separators=(",", ":")))
        elif cmd == "unwrap":
            w = json.loads(sys.stdin.read())
            nonce = base64.b64decode(w["nonce"], validate=True)
            if len(nonce) != 16:
                sys.exit("nonce is not 16 bytes")
            dcr = Cipher(algorithms.AES(key_bytes(c, sys.argv[3])), modes.CBC(nonce)).decryptor()
            u = padding.PKCS7(128).unpadder()
            pt = dcr.update(base64.b64decode(w["dek"], validate=True)) + dcr.finalize()
            sys.stdout.buffer.write(u.update(pt) + u.finalize())
        else:
            sys.exit("usage: kmip_tool.py DIR create|revoke ID|destroy ID|wrap ID|unwrap ID")


if __name__ == "__main__":
    main()
