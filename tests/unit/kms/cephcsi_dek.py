#!/usr/bin/env python3
"""ceph-csi's metadata-KMS DEK format, written independently of rbdgw.

Re-implements ceph/ceph-csi internal/kms/secretskms.go (secretsMetadataKMS
EncryptDEK/DecryptDEK) with hashlib.scrypt and cryptography's AESGCM:
  KEK = scrypt(passphrase, salt=volumeID, N=32768, r=8, p=1, 32 bytes)
  {"dek": b64(AES-256-GCM(KEK, nonce, DEK) || tag), "nonce": b64(nonce)}
as Go's json.Marshal writes it.

Secrets never go through argv or the environment: the request is a JSON
object on stdin, the answer goes to stdout.
  wrap:   {"passphrase", "volume_id", "dek"}     -> wrapped JSON
  unwrap: {"passphrase", "volume_id", "wrapped"} -> the DEK (exit 1 if the
                                                     tag does not verify)
"""
import base64
import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def kek(passphrase, volume_id):
    return hashlib.scrypt(passphrase.encode(), salt=volume_id.encode(),
                          n=32768, r=8, p=1, dklen=32, maxmem=64 << 20)


def main():
    mode = sys.argv[1]
    req = json.load(sys.stdin)
    aead = AESGCM(kek(req["passphrase"], req["volume_id"]))
    if mode == "wrap":
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, req["dek"].encode(), None)
        sys.stdout.write(json.dumps(
            {"dek": base64.b64encode(sealed).decode(),
             "nonce": base64.b64encode(nonce).decode()},
            separators=(",", ":")))
    elif mode == "unwrap":
        w = json.loads(req["wrapped"])
        try:
            dek = aead.decrypt(base64.b64decode(w["nonce"], validate=True),
                               base64.b64decode(w["dek"], validate=True), None)
        except InvalidTag:
            sys.stderr.write("authentication failed\n")
            return 1
        sys.stdout.write(dek.decode())
    else:
        sys.stderr.write("usage: cephcsi_dek.py wrap|unwrap < request.json\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
