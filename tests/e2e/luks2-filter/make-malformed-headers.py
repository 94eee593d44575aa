#!/usr/bin/python3
"""Writes a corpus of malformed LUKS2 volumes and a manifest of what each
must be refused with.

    make-malformed-headers.py OUTDIR KEYFILE

Makes a good LUKS2 volume with cryptsetup (pbkdf2, 1000 iterations, the
passphrase in KEYFILE) and derives each case from it by editing the binary
header or the JSON area. Unless a case is about checksums, both header
copies get valid checksums (SHA-256 over the header copy with its checksum
field zeroed), so the damage reaches the code that reads the JSON.

OUTDIR/cases.tsv has one line per case:
    NAME <TAB> FILTER-EXPECT <TAB> LIB-EXPECT
FILTER-EXPECT is an ERE that the luks2 filter's error must match for every
client (the file is OUTDIR/NAME; "@memory0" means the export is
`nbdkit memory 0`), LIB-EXPECT the one for lib/luks's unlock() and
Header::read() ("-": not run through the library, "OK": must be accepted).

Only the Python standard library: run it with /usr/bin/python3.
"""
import copy
import hashlib
import json
import os
import struct
import subprocess
import sys

MiB = 1 << 20
GiB = 1 << 30


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def luks_format(path, key, size=20 * MiB):
    with open(path, "wb") as f:
        f.truncate(size)
    run("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", key, path)


class Volume:
    """A LUKS2 volume as bytes, with the primary copy's JSON decoded."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = bytearray(f.read())
        self.hdr_size = struct.unpack(">Q", self.data[8:16])[0]
        area = self.data[4096:self.hdr_size]
        self.json = json.loads(area[:area.index(0)].decode())

    def set_json_text(self, text, copies=(0, 1)):
        raw = text.encode() if isinstance(text, str) else text
        assert len(raw) < self.hdr_size - 4096, "JSON too large for the area"
        for c in copies:
            base = c * self.hdr_size
            area = bytearray(self.hdr_size - 4096)
            area[:len(raw)] = raw
            self.data[base + 4096:base + self.hdr_size] = area

    def set_json(self, obj, copies=(0, 1)):
        self.set_json_text(json.dumps(obj, separators=(",", ":")), copies)

    def fix_checksums(self, copies=(0, 1)):
        for c in copies:
            base = c * self.hdr_size
            hdr = bytearray(self.data[base:base + self.hdr_size])
            hdr[448:448 + 64] = bytes(64)
            self.data[base + 448:base + 448 + 64] = hashlib.sha256(hdr).digest() + bytes(32)

    def write(self, path, size=None):
        with open(path, "wb") as f:
            f.write(self.data)
            if size is not None:
                f.truncate(size)


def main():
    out, key = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    good_path = os.path.join(out, "good")
    luks_format(good_path, key)
    good = Volume(good_path)
    cases = []

    def case(name, filter_expect, lib_expect, vol=None, size=None, json_edit=None, fix=True):
        v = copy.deepcopy(vol or good)
        if json_edit:
            j = copy.deepcopy(v.json)
            json_edit(j)
            v.set_json(j)
        if fix:
            v.fix_checksums()
        v.write(os.path.join(out, name), size)
        cases.append((name, filter_expect, lib_expect))

    cases.append(("good", "OK", "OK"))

    # Sizes bounded by LUKS2's own limits before anything is allocated: a
    # keyslot area claiming 3 GiB on a 64 MiB file (cryptsetup: "not a
    # valid LUKS device"; took the filter to 3.15 GB RSS).
    def huge_area(j):
        j["keyslots"]["0"]["area"]["size"] = str(3 * GiB)
        j["config"]["keyslots_size"] = str(3 * GiB + 4 * MiB)
        j["segments"]["0"]["offset"] = str(4 * GiB)
    case("huge-keyslot-area", "keyslots area of 3225419776 bytes exceeds LUKS2's limit",
         "keyslots area of 3225419776 bytes exceeds LUKS2's limit", size=64 * MiB,
         json_edit=huge_area)

    def huge_area_only(j):
        j["keyslots"]["0"]["area"]["size"] = str(3 * GiB)
        j["segments"]["0"]["offset"] = str(4 * GiB)
    case("keyslot-area-outside-keyslots-area",
         "keyslot 0 area \\[32768, \\+3221225472\\) is outside the keyslots area",
         "keyslot 0 area \\[32768, \\+3221225472\\) is outside the keyslots area",
         size=64 * MiB, json_edit=huge_area_only)

    def absurd_keyslots_size(j):
        j["config"]["keyslots_size"] = "18446744073709551615"
    case("absurd-keyslots-size", "keyslots area of 18446744073709551615 bytes exceeds",
         "keyslots area of 18446744073709551615 bytes exceeds", json_edit=absurd_keyslots_size)

    def unaligned_keyslots_size(j):
        j["config"]["keyslots_size"] = "16744447"
    case("unaligned-keyslots-size", "keyslots area size 16744447 is not a multiple of 4096",
         "keyslots area size 16744447 is not a multiple of 4096",
         json_edit=unaligned_keyslots_size)

    def absurd_area_offset(j):
        j["keyslots"]["0"]["area"]["offset"] = "99999999999999999999999"
    case("absurd-keyslot-offset", "keyslot 0: area.offset is not a number",
         "keyslot 0: area.offset is not a number", json_edit=absurd_area_offset)

    def wrapping_area(j):
        j["keyslots"]["0"]["area"]["offset"] = "18446744073709547520"
        j["keyslots"]["0"]["area"]["size"] = "8192"
    case("wrapping-keyslot-area", "keyslot 0 area .* is outside the keyslots area",
         "keyslot 0 area .* is outside the keyslots area", json_edit=wrapping_area)

    def absurd_key_size(j):
        j["keyslots"]["0"]["key_size"] = 1000000000
    case("absurd-keyslot-key-size", "keyslot 0: key_size 1000000000 is not in 1..512",
         "keyslot 0: key_size 1000000000 is not in 1..512", json_edit=absurd_key_size)

    def absurd_stripes(j):
        j["keyslots"]["0"]["af"]["stripes"] = 4000000000
    case("absurd-af-stripes", "keyslot 0: 4000000000 AF stripes; LUKS2 uses 4000",
         "keyslot 0: 4000000000 AF stripes; LUKS2 uses 4000", json_edit=absurd_stripes)

    def many_keyslots(j):
        for i in range(1, 40):
            j["keyslots"][str(i)] = {"type": "luks2"}
    case("too-many-keyslots", "40 keyslots; LUKS2 has at most 32",
         "40 keyslots; LUKS2 has at most 32", json_edit=many_keyslots)

    def absurd_segment_offset(j):
        j["segments"]["0"]["offset"] = "18446744073709551615"
    case("absurd-segment-offset", "starts past the end of the source",
         "starts past the end of the source", json_edit=absurd_segment_offset)

    # Offsets past the device.
    def data_past_end(j):
        j["segments"]["0"]["offset"] = str(1 << 40)
    case("data-offset-past-device", "data segment at offset 1099511627776 starts past the end",
         "data segment at offset 1099511627776 starts past the end", json_edit=data_past_end)

    def size_past_end(j):
        j["segments"]["0"]["size"] = str(1 << 40)
    case("segment-size-past-device", "truncated LUKS2 volume: the data segment needs",
         "OK", json_edit=size_past_end)

    # A header larger than the source; a source smaller than a header.
    case("truncated-in-binary-header", "100 bytes is too small for a LUKS2 volume",
         "truncated LUKS2 header", size=100)
    case("truncated-in-json", "truncated LUKS2 header", "truncated LUKS2 header", size=10000)
    case("truncated-in-keyslots", "truncated LUKS2 header", "truncated LUKS2 header",
         size=40000)

    # Binary header fields.
    def hdr_size(v, value):
        v = copy.deepcopy(v)
        for c in (0, 1):
            base = c * good.hdr_size
            v.data[base + 8:base + 16] = struct.pack(">Q", value)
        return v
    case("absurd-header-size", "header size 1099511627776 is not one of LUKS2's",
         "header size 1099511627776 is not one of LUKS2's", vol=hdr_size(good, 1 << 40))
    case("odd-header-size", "header size 20000 is not one of LUKS2's",
         "header size 20000 is not one of LUKS2's", vol=hdr_size(good, 20000))

    # Checksums: both wrong is refused; a wrong primary falls back to the
    # secondary copy, as cryptsetup does.
    def damage_json(v, copies):
        v = copy.deepcopy(v)
        for c in copies:
            v.data[c * good.hdr_size + 4096 + 2] ^= 0x01  # "keyslots" -> "kdyslots"
        return v
    case("wrong-checksums", "no valid LUKS2 header copy .*checksum mismatch",
         "no valid LUKS2 header copy .*checksum mismatch", vol=damage_json(good, (0, 1)),
         fix=False)
    case("wrong-primary-checksum", "OK", "OK", vol=damage_json(good, (0,)), fix=False)

    # JSON that is not JSON, or not LUKS2's.
    bad = copy.deepcopy(good)
    bad.set_json_text("{\"keyslots\": {\"0\": [1, 2, }")
    case("bad-json", "JSON area is not valid JSON", "JSON area is not valid JSON", vol=bad)

    notobj = copy.deepcopy(good)
    notobj.set_json_text("[1, 2, 3]")
    case("json-not-an-object", "no keyslots object", "no keyslots object", vol=notobj)

    def no_segments(j):
        j["segments"] = {}
    case("no-segments", "no data segment", "no data segment", json_edit=no_segments)

    def string_keyslots(j):
        j["keyslots"] = "0"
    case("keyslots-not-an-object", "no keyslots object", "no keyslots object",
         json_edit=string_keyslots)

    def bad_json_size(j):
        j["config"]["json_size"] = "4194304"
    case("json-size-mismatch", "config.json_size 4194304 does not match",
         "config.json_size 4194304 does not match", json_edit=bad_json_size)

    deep = copy.deepcopy(good)
    j = copy.deepcopy(good.json)
    j["tokens"] = {"0": {"type": "x", "keyslots": [], "deep": "@@"}}
    text = json.dumps(j, separators=(",", ":")).replace("\"@@\"", "[" * 5000 + "]" * 5000)
    deep.set_json_text(text)
    case("deeply-nested-json", "no valid LUKS2 header", "no valid LUKS2 header", vol=deep)

    # A re-encryption in progress: a real one (cryptsetup reencrypt
    # --init-only) and a "reencrypt" requirement added by hand.
    reenc_path = os.path.join(out, "reencrypt-in-progress")
    luks_format(reenc_path, key)
    run("cryptsetup", "reencrypt", "--init-only", "-q", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", key, reenc_path)
    cases.append(("reencrypt-in-progress", "requires online-reencrypt-v2 .*re-encryption",
                  "requires online-reencrypt-v2 .*re-encryption"))

    def requirement(j):
        j["config"]["requirements"] = {"mandatory": ["online-reencrypt-v2"]}
    case("reencrypt-requirement", "requires online-reencrypt-v2 .*re-encryption",
         "requires online-reencrypt-v2 .*re-encryption", json_edit=requirement)

    def reencrypt_keyslot(j):
        j["keyslots"]["1"] = {"type": "reencrypt", "mode": "reencrypt", "direction": "forward",
                              "key_size": 1, "area": {"type": "none", "offset": "290816",
                                                      "size": "4096"}}
    case("reencrypt-keyslot", "keyslot 1 of type reencrypt .*re-encryption",
         "keyslot 1 of type reencrypt .*re-encryption", json_edit=reencrypt_keyslot)

    # Sources too small to hold anything.
    open(os.path.join(out, "empty"), "wb").close()
    cases.append(("empty", "0 bytes is too small for a LUKS2 volume", "empty source"))
    cases.append(("@memory0", "0 bytes is too small for a LUKS2 volume", "-"))

    with open(os.path.join(out, "cases.tsv"), "w") as f:
        for c in cases:
            f.write("\t".join(c) + "\n")


if __name__ == "__main__":
    main()
