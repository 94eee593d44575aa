#!/usr/bin/env bash
# The Kubernetes manifests (packaging/kubernetes/) agree with each other and
# with rbdgw-csi: check_manifests.py checks names, socket paths, mounts,
# secrets and RBAC; then the binaries judge what they read:
#   - each StorageClass's parameters go through rbdgw-csi's own checks
#     (--check-config with the controller's ConfigMaps: the parser, and
#     clusterID / encryptionKMSID present in the configs), and every
#     parameter rbdgw-csi accepts (--list-parameters) is in its man page;
#   - rbdgw-csi is started with the exact args of the node DaemonSet and of
#     the controller Deployment, in a scratch copy of each container's file
#     view (the ConfigMaps as mounted files), and must come up serving on
#     the socket the sidecars use.
# Negative controls show each kind of check can fail.
source "$(dirname "$0")/../../lib/functions.sh"
requires python3 -c 'import yaml'
: "${RBDGW_CSI:=$RBDGW_BUILD_DIR/csi-shim/rbdgw-csi}"
: "${RBDGW_VERSION:=$(sed -n 's/^project(rbdgw VERSION \([0-9.]*\).*/\1/p' "$RBDGW_SOURCE_DIR/CMakeLists.txt")}"
[ -x "$RBDGW_CSI" ] || fail "$RBDGW_CSI is not built"
manifests=$RBDGW_SOURCE_DIR/packaging/kubernetes
checker=$(dirname "$0")/check_manifests.py

# The driver name rbdgw-csi uses without --driver-name, from the binary.
default_driver=$("$RBDGW_CSI" --help | sed -n 's/.*--driver-name NAME .*(default \([^)]*\)).*/\1/p')
[ -n "$default_driver" ] || fail "cannot read the default driver name from rbdgw-csi --help"

# 1. Structure: names, paths, mounts, secrets, RBAC; attach: the CSIDriver's
# attachRequired, the controller's capabilities (from the binary) and the
# csi-attacher sidecar.
out=$TEST_TMP/out
mkdir "$out"
caps=$TEST_TMP/capabilities
"$RBDGW_CSI" --list-capabilities >"$caps" || fail "rbdgw-csi --list-capabilities failed"
grep -qx CREATE_DELETE_VOLUME "$caps" || fail "rbdgw-csi --list-capabilities: $(cat "$caps")"
python3 "$checker" "$manifests" "$out" "$default_driver" "$RBDGW_VERSION" "$caps" ||
  fail "the manifests disagree (see above)"
pass "manifests agree on driver name, socket paths, mounts, secrets, ConfigMaps, RBAC and attach ($(tr '\n' ' ' <"$caps"))"

# 2. StorageClass parameters through rbdgw-csi --check-config, with the
# ConfigMaps as the controller (which runs CreateVolume) sees them.
# arg_of ARGV-FILE FLAG: the value of --FLAG=VALUE in a NUL-separated argv.
arg_of() { tr '\0' '\n' <"$1" | sed -n "s/^--$2=//p"; }
ctrl_argv=$(ls "$out"/*provisioner*.argv)
check_config=("$RBDGW_CSI" --check-config "--cluster-config=$(arg_of "$ctrl_argv" cluster-config)")
kms_cfg=$(arg_of "$ctrl_argv" kms-config)
[ -z "$kms_cfg" ] || check_config+=("--kms-config=$kms_cfg")
n=0
for f in "$out"/sc-*.params; do
  mapfile -t kv <"$f"
  "${check_config[@]}" "${kv[@]}" >"$TEST_TMP/check.out" 2>&1 ||
    fail "rbdgw-csi rejects the parameters of $(basename "$f" .params): $(cat "$TEST_TMP/check.out")"
  n=$((n + 1))
done
[ "$n" -ge 1 ] || fail "no StorageClass parameters were checked"
pass "rbdgw-csi accepts the parameters of $n StorageClass(es)"

man=$RBDGW_SOURCE_DIR/packaging/man/rbdgw-csi.8.pod
keys=$("$RBDGW_CSI" --list-parameters | cut -f1)
[ -n "$keys" ] || fail "rbdgw-csi --list-parameters printed nothing"
# undocumented MAN-POD: the accepted parameters its STORAGECLASS PARAMETERS section lacks.
undocumented() {
  local section k
  section=$(sed -n '/^=head1 STORAGECLASS PARAMETERS/,/^=head1 EXIT/p' "$1")
  for k in $keys; do grep -q "C<$k>" <<<"$section" || echo "$k"; done
}
missing=$(undocumented "$man")
[ -z "$missing" ] || fail "parameters missing from $(basename "$man"): $missing"
pass "every parameter of rbdgw-csi --list-parameters is in the man page ($(wc -w <<<"$keys") keys)"

# 3. rbdgw-csi with each workload's real args and ConfigMaps.
# run_csi NAME ARGV-FILE SOCKET: starts it, waits until it serves, stops it
# with SIGTERM; returns 0 if it served and exited 0, else prints its log.
run_csi() {
  local name=$1 argv_file=$2 sock=$3 log=$TEST_TMP/$1.log pid i rc=0
  local -a argv
  mapfile -d '' -t argv <"$argv_file"
  "$RBDGW_CSI" "${argv[@]}" >"$log" 2>&1 &
  pid=$!
  cleanup_fn "kill -9 $pid"
  for ((i = 0; i < 200; i++)); do
    [ -S "$sock" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -S "$sock" ]; then
    kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    echo "--- rbdgw-csi ($name) did not serve on $sock:" >&2; cat "$log" >&2
    return 1
  fi
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || { echo "--- rbdgw-csi ($name) exited $rc after SIGTERM:" >&2; cat "$log" >&2; return 1; }
  [ ! -e "$sock" ] || { echo "rbdgw-csi ($name) left its socket $sock" >&2; return 1; }
}
for argv_file in "$out"/*.argv; do
  wl=$(basename "$argv_file" .argv)
  run_csi "$wl" "$argv_file" "$(cat "$out/$wl.socket")" ||
    fail "rbdgw-csi does not run with the args and ConfigMaps of $wl"
  pass "rbdgw-csi serves with the args and ConfigMaps of $wl"
done

# 4. Negative controls: the same checks catch a broken manifest.
mapfile -t kv <"$(ls "$out"/sc-*.params | head -1)"
"${check_config[@]}" "${kv[@]}" fsType=ext4 >"$TEST_TMP/neg1" 2>&1 &&
  fail "rbdgw-csi --check-config accepted an unknown parameter"
grep -q "unknown parameter 'fsType'" "$TEST_TMP/neg1" || fail "unexpected error: $(cat "$TEST_TMP/neg1")"
"${check_config[@]}" "${kv[@]/#clusterID=*/clusterID=no-such-cluster}" >"$TEST_TMP/neg1" 2>&1 &&
  fail "rbdgw-csi --check-config accepted an unknown clusterID"
grep -q "clusterID.*no-such-cluster" "$TEST_TMP/neg1" || fail "unexpected error: $(cat "$TEST_TMP/neg1")"
sed '/^=head1 STORAGECLASS PARAMETERS/,/^=head1 EXIT/s/C<dataPool>/dataPool/' "$man" >"$TEST_TMP/man.pod"
[ "$(undocumented "$TEST_TMP/man.pod")" = dataPool ] || fail "an undocumented parameter was not noticed"

bad=$TEST_TMP/bad
cp -r "$manifests" "$bad"
sed -i 's|--kubelet-registration-path=/var/lib/kubelet/plugins/[^/]*/csi.sock|--kubelet-registration-path=/var/lib/kubelet/plugins/other/csi.sock|' "$bad/csi-rbdplugin.yaml"
mkdir "$TEST_TMP/bad-out"
python3 "$checker" "$bad" "$TEST_TMP/bad-out" "$default_driver" "$RBDGW_VERSION" 2>"$TEST_TMP/neg2" &&
  fail "a wrong registration path was not noticed"
grep -q 'kubelet-registration-path' "$TEST_TMP/neg2" || fail "unexpected error: $(cat "$TEST_TMP/neg2")"

# attachRequired, PUBLISH_UNPUBLISH_VOLUME and the attacher must agree.
# must_fail NAME PATTERN DIR [CAPS]: the checker rejects DIR, naming PATTERN.
must_fail() {
  mkdir -p "$TEST_TMP/$1-out"
  python3 "$checker" "$3" "$TEST_TMP/$1-out" "$default_driver" "$RBDGW_VERSION" "${4:-$caps}" \
    2>"$TEST_TMP/$1.err" && fail "$1 was not noticed"
  grep -q "$2" "$TEST_TMP/$1.err" || fail "$1: unexpected error: $(cat "$TEST_TMP/$1.err")"
}
for n in noattach noattacher nopublishsecret; do rm -rf "$TEST_TMP/$n"; cp -r "$manifests" "$TEST_TMP/$n"; done
sed -i 's/attachRequired: true/attachRequired: false/' "$TEST_TMP/noattach/csidriver.yaml"
must_fail "attachRequired false with PUBLISH_UNPUBLISH_VOLUME" "PUBLISH_UNPUBLISH_VOLUME" "$TEST_TMP/noattach"
python3 - "$TEST_TMP/noattacher/csi-rbdplugin-provisioner.yaml" <<'PY'
import sys, yaml
p = sys.argv[1]
d = yaml.safe_load(open(p))
cs = d["spec"]["template"]["spec"]["containers"]
d["spec"]["template"]["spec"]["containers"] = [c for c in cs if "attacher" not in c["name"]]
yaml.safe_dump(d, open(p, "w"))
PY
must_fail "attachRequired without a csi-attacher" "no csi-attacher" "$TEST_TMP/noattacher"
grep -v PUBLISH_UNPUBLISH_VOLUME "$caps" >"$TEST_TMP/caps-nopublish"
must_fail "attachRequired without PUBLISH_UNPUBLISH_VOLUME" "no PUBLISH_UNPUBLISH_VOLUME" "$manifests" "$TEST_TMP/caps-nopublish"
sed -i '/controller-publish-secret/d' "$TEST_TMP/nopublishsecret/storageclass.yaml"
must_fail "a StorageClass without a controller-publish secret" "controller-publish-secret" "$TEST_TMP/nopublishsecret"
pass "negative controls: attachRequired, PUBLISH_UNPUBLISH_VOLUME, the csi-attacher and its secret must agree"

node_argv=$(ls "$out"/*nodeplugin*.argv)
node=$(basename "$node_argv" .argv)
kms=$(tr '\0' '\n' <"$node_argv" | sed -n 's/^--kms-config=//p')
[ -f "$kms" ] || fail "no --kms-config in the node plugin's args"
echo '{"secrets-metadata": {"encryptionKMSTyp": "metadata"}}' >"$kms"
rm -f "$(cat "$out/$node.socket")"
run_csi "$node-badkms" "$node_argv" "$(cat "$out/$node.socket")" 2>/dev/null &&
  fail "rbdgw-csi served with an invalid KMS config"
grep -q "secrets-metadata.*encryptionKMSType" "$TEST_TMP/$node-badkms.log" || fail "rbdgw-csi's error does not name the bad KMS entry: $(cat "$TEST_TMP/$node-badkms.log")"
"$RBDGW_CSI" --check-config "--cluster-config=$(arg_of "$node_argv" cluster-config)" \
  "--kms-config=$kms" >"$TEST_TMP/neg3" 2>&1 && fail "rbdgw-csi --check-config accepted an invalid KMS config"
grep -q "secrets-metadata.*encryptionKMSType" "$TEST_TMP/neg3" || fail "unexpected error: $(cat "$TEST_TMP/neg3")"
pass "negative controls: unknown parameter and clusterID, wrong registration path and bad KMS config are caught"
