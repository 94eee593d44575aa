#!/usr/bin/env bash
# `nbdkit rbd --help` and `--dump-plugin` tell a user what they need, and
# the man page is built.
source "$(dirname "$0")/common.sh"

help=$(nbdkit "$RBDGW_PLUGIN" --help)
for word in "image=]POOL[/NAMESPACE]/IMAGE[@SNAP]" conf= id= keyring= "key=+FILE" mon_host= \
            timeout= ceph.OPTION= "encryption-format=luks1|luks2" "encryption-passphrase=+FILE"; do
  grep -qF -- "$word" <<<"$help" || fail "--help lacks '$word'"
done
dump=$(nbdkit "$RBDGW_PLUGIN" --dump-plugin)
for line in "name=rbd" "thread_model=parallel" "has_extents=1" "has_after_fork=1" \
            "rbd_encryption=luks1,luks2" "rbd_secret_parameters=key,encryption-passphrase"; do
  grep -qxF "$line" <<<"$dump" || fail "--dump-plugin lacks '$line'"
done
grep -Eq '^rbd_librbd_version=[0-9]+\.[0-9]+\.[0-9]+$' <<<"$dump" || fail "--dump-plugin lacks the librbd version"
man="$(dirname "$RBDGW_PLUGIN")/nbdkit-rbd-plugin.1"
[ -s "$man" ] || fail "man page $man not built"
for s in NAME SYNOPSIS DESCRIPTION PARAMETERS NOTES "DEBUG FLAG" FILES "SEE ALSO"; do
  grep -q "^\.SH \"\?$s\"\?" "$man" || fail "man page lacks section $s"
done
pass "--help, --dump-plugin and the man page"
