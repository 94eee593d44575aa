#!/usr/bin/env python3
"""Reference aes-xts-plain64 (dm-crypt) with Python's `cryptography`.

usage: xts_ref.py enc|dec KEYFILE IN OUT SECTOR_SIZE FIRST_TWEAK
Each SECTOR_SIZE unit of IN is one XTS data unit; unit i uses the tweak
le64(FIRST_TWEAK + i * SECTOR_SIZE / 512) zero-padded to 16 bytes.
The key is read from KEYFILE (never from the command line).
"""
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def main():
    mode, key_path, in_path, out_path = sys.argv[1:5]
    sector, tweak = int(sys.argv[5]), int(sys.argv[6])
    with open(key_path, "rb") as f:
        key = f.read()
    with open(in_path, "rb") as f:
        data = f.read()
    if len(data) % sector:
        sys.exit("input is not whole sectors")
    out = bytearray()
    for i in range(0, len(data), sector):
        iv = (tweak + i // 512).to_bytes(8, "little") + bytes(8)
        c = Cipher(algorithms.AES(key), modes.XTS(iv))
        op = c.encryptor() if mode == "enc" else c.decryptor()
        out += op.update(data[i:i + sector]) + op.finalize()
    with open(out_path, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
