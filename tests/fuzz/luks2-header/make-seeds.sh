#!/usr/bin/env bash
# Regenerates seeds/: the first 32 KiB (both 16 KiB header copies) of each
# case of tests/e2e/luks2-filter/make-malformed-headers.py, after one flag
# byte (1: the harness fixes the checksums, so mutations reach the JSON
# checks; 0 for the cases about checksums). Needs cryptsetup.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'correct horse' >"$tmp/key"
/usr/bin/python3 "$here/../../e2e/luks2-filter/make-malformed-headers.py" "$tmp/corpus" "$tmp/key"
rm -rf "$here/seeds"
mkdir "$here/seeds"
cut -f1 "$tmp/corpus/cases.tsv" | while read -r name; do
  f="$tmp/corpus/$name"
  [ -f "$f" ] || continue
  case $name in wrong-*) flag='\x00' ;; *) flag='\x01' ;; esac
  { printf "$flag"; head -c 32768 "$f"; } >"$here/seeds/$name"
done
ls "$here/seeds" | wc -l
