#!/usr/bin/env python3
"""Independent dm-crypt aes-xts-plain64 for the luks2 filter's tests.

Reads the data segment's parameters from `cryptsetup luksDump
--dump-json-metadata` and uses the `cryptography` package's AES-XTS, so it
shares no code with rbdgw. The volume key comes from a file (never argv).

  luks2_xts.py encrypt VOLUME KEYFILE PLAINFILE OFFSET
      encrypts PLAINFILE into VOLUME's data segment at OFFSET
  luks2_xts.py decrypt VOLUME KEYFILE OFFSET LENGTH OUTFILE
      decrypts LENGTH bytes of the data segment at OFFSET into OUTFILE

OFFSET and LENGTH are bytes within the data segment, multiples of the
segment's sector size. Each sector is one XTS data unit with the tweak
le64(iv_tweak + offset / 512), as dm-crypt computes it.
"""
import json
import subprocess
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def segment(volume):
    out = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", volume],
                         check=True, capture_output=True, text=True).stdout
    seg = json.loads(out)["segments"]["0"]
    assert seg["encryption"] == "aes-xts-plain64", seg
    return int(seg["offset"]), int(seg["sector_size"]), int(seg["iv_tweak"])


def crypt(encrypt, key, data, offset, sector, iv_tweak):
    assert offset % sector == 0 and len(data) % sector == 0
    out = bytearray()
    for i in range(0, len(data), sector):
        tweak = (iv_tweak + (offset + i) // 512).to_bytes(16, "little")
        c = Cipher(algorithms.AES(key), modes.XTS(tweak))
        op = c.encryptor() if encrypt else c.decryptor()
        out += op.update(data[i:i + sector]) + op.finalize()
    return bytes(out)


def main(argv):
    mode, volume, keyfile = argv[1], argv[2], argv[3]
    with open(keyfile, "rb") as f:
        key = f.read()
    data_offset, sector, iv_tweak = segment(volume)
    if mode == "encrypt":
        plainfile, offset = argv[4], int(argv[5])
        with open(plainfile, "rb") as f:
            plain = f.read()
        with open(volume, "r+b") as f:
            f.seek(data_offset + offset)
            f.write(crypt(True, key, plain, offset, sector, iv_tweak))
    elif mode == "decrypt":
        offset, length, outfile = int(argv[4]), int(argv[5]), argv[6]
        with open(volume, "rb") as f:
            f.seek(data_offset + offset)
            cipher = f.read(length)
        with open(outfile, "wb") as f:
            f.write(crypt(False, key, cipher, offset, sector, iv_tweak))
    else:
        sys.exit(f"luks2_xts.py: unknown mode '{mode}'")


if __name__ == "__main__":
    main(sys.argv)
