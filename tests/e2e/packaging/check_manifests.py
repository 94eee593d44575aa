#!/usr/bin/env python3
"""Checks that rbdgw's Kubernetes manifests agree with each other and with
what rbdgw-csi reads, and prepares what only the binaries can check.

Usage: check_manifests.py MANIFEST-DIR OUT-DIR DEFAULT-DRIVER-NAME VERSION [CAPABILITIES]

CAPABILITIES: a file with the controller's capabilities, one a line, as
`rbdgw-csi --list-capabilities` prints them (ControllerGetCapabilities).

Checks (each failure names the file, object and field):
  - the driver name of the CSIDriver, the StorageClass provisioner and
    every rbdgw-csi container (--driver-name, else the binary's default);
  - socket paths: rbdgw-csi's --endpoint, the sidecars' --csi-address and
    the registrar's --kubelet-registration-path meet in the same volume;
  - the node plugin: privileged, host /dev, the kubelet directory with
    Bidirectional propagation (= --allowed-root), the registration dir,
    --state-dir on a host path, the liveness port;
  - the controller: provisioner and resizer (allowVolumeExpansion);
    attach: the CSIDriver's attachRequired, the controller's
    PUBLISH_UNPUBLISH_VOLUME capability and a csi-attacher sidecar all
    agree (with attach: its socket, leader election, RBAC for
    volumeattachments and their status, and a controller-publish secret in
    every StorageClass);
  - the StorageClass: its secrets exist with the keys rbdgw-csi needs, its
    clusterID and encryptionKMSID exist in the ConfigMaps, its fstype;
  - RBAC: service accounts, bindings and the rules the sidecars need.

Prepares in OUT-DIR, for the shell test to run through the binaries:
  sc-<name>.params       StorageClass parameters, one KEY=VALUE per line
  <workload>/rootfs/     the rbdgw-csi container's file view: its
                         ConfigMap mounts as files, other mounts as empty
                         directories
  <workload>.argv        rbdgw-csi's argv (NUL-separated) with $(VARS)
                         expanded and paths moved below rootfs/
  <workload>.socket      the socket it must create
"""
import json
import os
import posixpath
import re
import sys

import yaml

errors = []


def err(msg):
    errors.append(msg)


def load(manifest_dir):
    objs = []
    for fn in sorted(os.listdir(manifest_dir)):
        if not fn.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(manifest_dir, fn)) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                where = f"{fn}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                for k in ("apiVersion", "kind", "metadata"):
                    if k not in doc:
                        err(f"{where}: no {k}")
                if not doc.get("metadata", {}).get("name"):
                    err(f"{where}: no metadata.name")
                doc["_where"] = where
                objs.append(doc)
    return objs


def by_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def find(objs, kind, name, namespace=None):
    for o in by_kind(objs, kind):
        md = o["metadata"]
        if md["name"] == name and (namespace is None or md.get("namespace") == namespace):
            return o
    return None


def expand(value, env):
    """Kubernetes $(VAR) expansion in args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(c):
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "valueFrom" in e:
            env[e["name"]] = "test-node"  # a fieldRef (spec.nodeName)
    return env


def flags(c):
    """--name=value / --name value args of a container, $(VARS) expanded."""
    env = container_env(c)
    args = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
    out = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                k, v = a[2:], args[i + 1]
                i += 1
            else:
                k, v = a[2:], ""
            out[k] = v
        i += 1
    return out, args


def unix_path(addr):
    return addr[len("unix://"):] if addr.startswith("unix://") else addr


def mount_for(c, path):
    """(volumeMount, path relative to it) for a path inside container c."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/") or mp == "/":
            if best is None or len(mp) > len(best[0]["mountPath"]):
                best = (m, posixpath.relpath(path, mp))
    return best


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def volume(spec, name):
    for v in spec.get("volumes", []):
        if v["name"] == name:
            return v
    return None


def containers_named(spec, pattern):
    return [c for c in spec.get("containers", []) if re.search(pattern, c["name"])]


def one_container(w, pattern, what):
    cs = containers_named(pod_spec(w), pattern)
    if len(cs) != 1:
        err(f"{w['_where']}: expected one {what} container, found {len(cs)}")
        return None
    return cs[0]


def socket_location(w, c, addr, what):
    """(volume name, relative path) of a socket address inside container c."""
    path = unix_path(addr)
    if not path.startswith("/"):
        err(f"{w['_where']}: {c['name']}: {what} '{addr}' is not an absolute unix socket path")
        return None
    m = mount_for(c, path)
    if m is None:
        err(f"{w['_where']}: {c['name']}: {what} '{path}' is on no volume mount "
            f"(the other containers cannot reach it)")
        return None
    return m[0]["name"], m[1]


def check_sidecar_socket(w, csi_loc, pattern, flag, what, required=True):
    cs = containers_named(pod_spec(w), pattern)
    if not cs:
        if required:
            err(f"{w['_where']}: no {what} sidecar")
        return None
    c = cs[0]
    f, _ = flags(c)
    if flag not in f:
        err(f"{w['_where']}: {c['name']}: no --{flag}")
        return c
    loc = socket_location(w, c, f[flag], f"--{flag}")
    if loc and csi_loc and loc != csi_loc:
        err(f"{w['_where']}: {c['name']}: --{flag}={f[flag]} is {loc[1]} on volume '{loc[0]}', "
            f"but rbdgw-csi serves {csi_loc[1]} on volume '{csi_loc[0]}'")
    return c


def check_workload_csi(w, driver_default, driver, version, out_dir, objs):
    """Checks of the rbdgw-csi container common to node and controller;
    returns (container, flags, socket location)."""
    c = one_container(w, r"^rbdgw-csi$", "rbdgw-csi")
    if c is None:
        return None, {}, None
    f, args = flags(c)
    name = f.get("driver-name", driver_default)
    if name != driver:
        err(f"{w['_where']}: rbdgw-csi serves driver '{name}', the CSIDriver is '{driver}'")
    want_image = f"localhost/rbdgw-csi:{version}"
    if c.get("image") != want_image:
        err(f"{w['_where']}: rbdgw-csi image '{c.get('image')}', build-image.sh makes '{want_image}'")
    loc = None
    if "endpoint" in f:
        loc = socket_location(w, c, f["endpoint"], "--endpoint")
    else:
        err(f"{w['_where']}: rbdgw-csi has no --endpoint")
    spec = pod_spec(w)
    for flag, cm_name in (("cluster-config", "ceph-csi-config"),
                          ("kms-config", "ceph-csi-encryption-kms-config")):
        if flag not in f:
            if flag == "cluster-config":
                err(f"{w['_where']}: rbdgw-csi has no --cluster-config")
            continue
        m = mount_for(c, f[flag])
        v = volume(spec, m[0]["name"]) if m else None
        if not v or "configMap" not in v:
            err(f"{w['_where']}: --{flag}={f[flag]} is not on a ConfigMap volume")
            continue
        if v["configMap"]["name"] != cm_name:
            err(f"{w['_where']}: --{flag} reads ConfigMap '{v['configMap']['name']}', expected '{cm_name}'")
        cm = find(objs, "ConfigMap", v["configMap"]["name"], w["metadata"].get("namespace"))
        if cm is None:
            err(f"{w['_where']}: ConfigMap '{v['configMap']['name']}' is not in the manifests "
                f"(in namespace {w['metadata'].get('namespace')})")
        elif m[1] not in cm.get("data", {}):
            err(f"{w['_where']}: --{flag}: ConfigMap '{cm_name}' has no key '{m[1]}'")
    sa = spec.get("serviceAccountName")
    if not sa or not find(objs, "ServiceAccount", sa, w["metadata"].get("namespace")):
        err(f"{w['_where']}: service account '{sa}' is not in the manifests")
    write_rootfs(w, c, args, loc, out_dir, objs)
    return c, f, loc


def write_rootfs(w, c, args, loc, out_dir, objs):
    """The container's view for running rbdgw-csi with its real argv."""
    wl = w["metadata"]["name"]
    rootfs = os.path.join(out_dir, wl, "rootfs")
    spec = pod_spec(w)
    for m in c.get("volumeMounts", []):
        d = rootfs + m["mountPath"]
        os.makedirs(d, exist_ok=True)
        v = volume(spec, m["name"]) or {}
        if "configMap" in v:
            cm = find(objs, "ConfigMap", v["configMap"]["name"], w["metadata"].get("namespace"))
            for k, text in (cm or {}).get("data", {}).items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(text)

    def move(a):
        m = re.match(r"^(--[\w-]+=)?(unix://)?(/.*)$", a)
        if m and mount_for(c, m.group(3)):
            return (m.group(1) or "") + (m.group(2) or "") + rootfs + m.group(3)
        return a

    with open(os.path.join(out_dir, wl + ".argv"), "wb") as f:
        for a in args:
            f.write(move(a).encode() + b"\0")
    f_, _ = flags(c)
    if "endpoint" in f_:
        with open(os.path.join(out_dir, wl + ".socket"), "w") as f:
            f.write(rootfs + unix_path(f_["endpoint"]) + "\n")


def check_node(ds, driver_default, driver, version, out_dir, objs):
    w = ds["_where"]
    spec = pod_spec(ds)
    c, f, loc = check_workload_csi(ds, driver_default, driver, version, out_dir, objs)
    if c is None:
        return
    sc = c.get("securityContext", {})
    if not sc.get("privileged"):
        err(f"{w}: rbdgw-csi is not privileged (loop devices, FUSE, mounts need it)")
    # host /dev (loop devices, /dev/fuse, /dev/nbd*)
    m = mount_for(c, "/dev/fuse")
    v = volume(spec, m[0]["name"]) if m else None
    if not v or v.get("hostPath", {}).get("path") != "/dev" or m[0]["mountPath"] != "/dev":
        err(f"{w}: rbdgw-csi does not mount the host's /dev at /dev (needs /dev/fuse and loop devices)")
    # the kubelet directory, Bidirectional, = --allowed-root
    allowed = f.get("allowed-root", "/var/lib/kubelet")
    m = mount_for(c, allowed)
    v = volume(spec, m[0]["name"]) if m else None
    if not v or "hostPath" not in v:
        err(f"{w}: --allowed-root {allowed} is not a host path mount")
    else:
        if m[0].get("mountPropagation") != "Bidirectional":
            err(f"{w}: the mount of {m[0]['mountPath']} is not Bidirectional: kubelet would not "
                f"see the filesystems rbdgw-csi mounts")
        host_allowed = posixpath.normpath(posixpath.join(v["hostPath"]["path"], m[1]))
        if host_allowed != allowed:
            err(f"{w}: --allowed-root {allowed} is the host's {host_allowed}: kubelet's paths "
                f"would not match inside the container")
    # --state-dir must survive a restart of the container
    state = f.get("state-dir", "/var/lib/rbdgw-csi")
    m = mount_for(c, state)
    v = volume(spec, m[0]["name"]) if m else None
    if not v or "hostPath" not in v:
        err(f"{w}: --state-dir {state} is not on a host path: staged volumes would be forgotten")
    # /run/rbdgw (run dirs and the secret store /run/rbdgw/@secrets that
    # re-adoption reads) must be the host's /run/rbdgw (tmpfs: gone at reboot,
    # kept across a restart of the container)
    m = mount_for(c, "/run/rbdgw/@secrets")
    v = volume(spec, m[0]["name"]) if m else None
    if not v or "hostPath" not in v:
        err(f"{w}: /run/rbdgw is not on a host path: re-adoption secrets would die with the container")
    elif posixpath.normpath(posixpath.join(v["hostPath"]["path"], m[1])) != "/run/rbdgw/@secrets":
        err(f"{w}: /run/rbdgw/@secrets is the host's "
            f"{posixpath.join(v['hostPath']['path'], m[1])}, not under the host's /run/rbdgw (tmpfs)")
    # the socket: a host path kubelet reaches, registered by the registrar
    host_sock = None
    if loc:
        v = volume(spec, loc[0])
        if not v or "hostPath" not in v:
            err(f"{w}: the socket volume '{loc[0]}' is not a host path")
        else:
            host_sock = posixpath.join(v["hostPath"]["path"], loc[1])
            want = f"/var/lib/kubelet/plugins/{driver}/csi.sock"
            if host_sock != want:
                err(f"{w}: the socket is the host's {host_sock}, kubelet's convention is {want}")
    reg = check_sidecar_socket(ds, loc, r"registrar", "csi-address", "node-driver-registrar")
    if reg:
        rf, _ = flags(reg)
        if host_sock and rf.get("kubelet-registration-path") != host_sock:
            err(f"{w}: registrar --kubelet-registration-path={rf.get('kubelet-registration-path')} "
                f"but the socket is {host_sock} on the host")
        m = mount_for(reg, "/registration")
        v = volume(spec, m[0]["name"]) if m else None
        if not v or v.get("hostPath", {}).get("path") != "/var/lib/kubelet/plugins_registry":
            err(f"{w}: registrar does not mount /var/lib/kubelet/plugins_registry at /registration")
    check_liveness(ds, c, loc)


def check_liveness(wl, c, loc):
    lp = check_sidecar_socket(wl, loc, r"liveness", "csi-address", "livenessprobe")
    if not lp:
        return
    lf, _ = flags(lp)
    port = lf.get("health-port", "9808")
    probe = c.get("livenessProbe", {}).get("httpGet")
    if not probe:
        err(f"{wl['_where']}: rbdgw-csi has no livenessProbe using the livenessprobe sidecar")
        return
    p = probe.get("port")
    if isinstance(p, str):
        p = next((cp["containerPort"] for cp in c.get("ports", []) if cp.get("name") == p), p)
    if str(p) != str(port):
        err(f"{wl['_where']}: livenessProbe port {p}, livenessprobe --health-port={port}")


def check_attach(dep, loc, objs, csidriver, capabilities, storageclasses):
    """attachRequired <=> PUBLISH_UNPUBLISH_VOLUME <=> a csi-attacher sidecar."""
    w = dep["_where"]
    attach = csidriver["spec"].get("attachRequired", True)
    attacher = containers_named(pod_spec(dep), r"attacher")
    if attach and not attacher:
        err(f"{csidriver['_where']}: attachRequired but no csi-attacher in {w}")
    if not attach and attacher:
        err(f"{w}: a csi-attacher runs though the CSIDriver needs no attach")
    if capabilities is not None:
        publishes = "PUBLISH_UNPUBLISH_VOLUME" in capabilities
        if attach and not publishes:
            err(f"{csidriver['_where']}: attachRequired, but rbdgw-csi has no PUBLISH_UNPUBLISH_VOLUME "
                f"capability (it has {sorted(capabilities)}): every attach would fail")
        if publishes and not attach:
            err(f"{csidriver['_where']}: attachRequired is false, but rbdgw-csi serves "
                f"ControllerPublishVolume (PUBLISH_UNPUBLISH_VOLUME): Kubernetes would never call it, "
                f"so nothing checks or fences a second node")
    if not attacher:
        return
    check_sidecar_socket(dep, loc, r"attacher", "csi-address", "external-attacher")
    spec = pod_spec(dep)
    sa, ns = spec.get("serviceAccountName"), dep["metadata"].get("namespace")
    for g, r, v in [("storage.k8s.io", "volumeattachments", "patch"),
                    ("storage.k8s.io", "volumeattachments", "watch"),
                    ("storage.k8s.io", "volumeattachments/status", "patch"),
                    ("storage.k8s.io", "csinodes", "get"),
                    ("", "persistentvolumes", "get"), ("", "persistentvolumes", "patch"),
                    ("", "nodes", "get")]:
        if not rbac_allows(objs, sa, ns, g, r, v):
            err(f"RBAC: service account {ns}/{sa} may not {v} {r}"
                f"{' (' + g + ')' if g else ''}, which external-attacher needs")
    for sc in storageclasses:
        p = sc.get("parameters", {})
        name = p.get("csi.storage.k8s.io/controller-publish-secret-name")
        sns = p.get("csi.storage.k8s.io/controller-publish-secret-namespace")
        if not name or not sns:
            err(f"{sc['_where']}: no csi.storage.k8s.io/controller-publish-secret-name/-namespace: "
                f"ControllerPublish/UnpublishVolume need userID/userKey to check and fence the lock")
        elif find(objs, "Secret", name, sns) is None:
            err(f"{sc['_where']}: Secret {sns}/{name} (controller-publish) is not in the manifests")


def check_controller(dep, driver_default, driver, version, out_dir, objs, csidriver, storageclasses,
                     capabilities=None):
    w = dep["_where"]
    c, f, loc = check_workload_csi(dep, driver_default, driver, version, out_dir, objs)
    if c is None:
        return
    if loc:
        v = volume(pod_spec(dep), loc[0])
        if not v or "emptyDir" not in v:
            err(f"{w}: the controller socket volume should be an emptyDir shared by the pod")
    check_sidecar_socket(dep, loc, r"provisioner", "csi-address", "external-provisioner")
    needs_resizer = any(s.get("allowVolumeExpansion") for s in storageclasses)
    check_sidecar_socket(dep, loc, r"resizer", "csi-address", "external-resizer", needs_resizer)
    check_attach(dep, loc, objs, csidriver, capabilities, storageclasses)
    # Snapshots: the csi-snapshotter sidecar when the controller offers them
    # (or a VolumeSnapshotClass names the driver), with its RBAC.
    snapshots = (capabilities is not None and "CREATE_DELETE_SNAPSHOT" in capabilities) or \
        bool(by_kind(objs, "VolumeSnapshotClass"))
    if check_sidecar_socket(dep, loc, r"snapshotter", "csi-address", "external-snapshotter",
                            snapshots) is not None:
        sa = pod_spec(dep)["serviceAccountName"]
        for res, verb in (("volumesnapshotcontents", "update"), ("volumesnapshotcontents/status", "update"),
                          ("volumesnapshotclasses", "get")):
            if not rbac_allows(objs, sa, dep["metadata"]["namespace"], "snapshot.storage.k8s.io", res, verb):
                err(f"{dep['_where']}: the csi-snapshotter may not {verb} {res}")
    for vsc in by_kind(objs, "VolumeSnapshotClass"):
        if vsc.get("driver") != driver:
            err(f"{vsc['_where']}: driver '{vsc.get('driver')}' is not '{driver}'")
    check_liveness(dep, c, loc)
    for sidecar in containers_named(pod_spec(dep), r"provisioner|resizer|attacher|snapshotter"):
        sf, _ = flags(sidecar)
        if sf.get("leader-election") == "true":
            ns = sf.get("leader-election-namespace", dep["metadata"].get("namespace"))
            if not rbac_allows(objs, pod_spec(dep)["serviceAccountName"], dep["metadata"]["namespace"],
                               "coordination.k8s.io", "leases", "create", ns):
                err(f"{w}: {sidecar['name']} elects a leader but may not create leases in {ns}")


def rbac_allows(objs, sa, sa_ns, group, resource, verb, ns=None):
    for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
        if b["kind"] == "RoleBinding" and ns is not None and b["metadata"].get("namespace") != ns:
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and
                   s.get("namespace", b["metadata"].get("namespace")) == sa_ns
                   for s in b.get("subjects", [])):
            continue
        ref = b["roleRef"]
        role = find(objs, ref["kind"], ref["name"],
                    None if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace"))
        for r in (role or {}).get("rules", []):
            if group in r.get("apiGroups", []) and resource in r.get("resources", []) and \
                    verb in r.get("verbs", []):
                return True
    return False


def check_rbac(objs, dep):
    spec = pod_spec(dep)
    sa, ns = spec.get("serviceAccountName"), dep["metadata"].get("namespace")
    need = [("", "persistentvolumes", "create"), ("", "persistentvolumes", "delete"),
            ("", "persistentvolumeclaims", "get"), ("storage.k8s.io", "storageclasses", "get"),
            ("", "events", "create"), ("", "secrets", "get"),
            ("", "persistentvolumeclaims/status", "patch")]
    for g, r, v in need:
        if not rbac_allows(objs, sa, ns, g, r, v):
            err(f"RBAC: service account {ns}/{sa} may not {v} {r}"
                f"{' (' + g + ')' if g else ''}, which the sidecars need")
    for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
        ref = b["roleRef"]
        if not find(objs, ref["kind"], ref["name"]):
            err(f"{b['_where']}: roleRef {ref['kind']}/{ref['name']} is not in the manifests")
        for s in b.get("subjects", []):
            if s.get("kind") == "ServiceAccount" and not find(objs, "ServiceAccount", s["name"],
                                                              s.get("namespace")):
                err(f"{b['_where']}: subject {s.get('namespace')}/{s['name']} is not in the manifests")


def check_storageclass(sc, driver, objs, out_dir):
    w = sc["_where"]
    if sc.get("provisioner") != driver:
        err(f"{w}: provisioner '{sc.get('provisioner')}', the CSIDriver is '{driver}'")
    p = {k: str(v) for k, v in sc.get("parameters", {}).items()}
    if any(not isinstance(v, str) for v in sc.get("parameters", {}).values()):
        err(f"{w}: parameter values must be strings (quote \"true\")")
    with open(os.path.join(out_dir, f"sc-{sc['metadata']['name']}.params"), "w") as f:
        for k, v in p.items():
            f.write(f"{k}={v}\n")
    fstype = p.get("csi.storage.k8s.io/fstype", "ext4")
    if fstype not in ("ext4", "xfs"):
        err(f"{w}: fstype '{fstype}': rbdgw-csi stages ext4 or xfs")
    # clusterID in the cluster config
    cm = find(objs, "ConfigMap", "ceph-csi-config")
    if cm:
        clusters = json.loads(cm["data"]["config.json"])
        if p.get("clusterID") not in [c.get("clusterID") for c in clusters]:
            err(f"{w}: clusterID '{p.get('clusterID')}' is not in ConfigMap ceph-csi-config")
    # secrets: every referenced Secret exists and carries the cephx user
    secrets = {}
    for op in ("provisioner", "controller-expand", "node-stage"):
        name = p.get(f"csi.storage.k8s.io/{op}-secret-name")
        ns = p.get(f"csi.storage.k8s.io/{op}-secret-namespace")
        if not name or not ns:
            err(f"{w}: no csi.storage.k8s.io/{op}-secret-name/-namespace: rbdgw-csi needs "
                f"userID/userKey for {op}")
            continue
        s = find(objs, "Secret", name, ns)
        if s is None:
            err(f"{w}: Secret {ns}/{name} ({op}) is not in the manifests")
            continue
        data = dict(s.get("stringData", {}))
        data.update({k: "(base64)" for k in s.get("data", {})})
        for k in ("userID", "userKey"):
            if not data.get(k):
                err(f"{s['_where']}: no '{k}' (rbdgw-csi reads it for {op})")
        secrets[op] = data
    if p.get("encrypted") == "true":
        kms_id = p.get("encryptionKMSID", "")
        kcm = find(objs, "ConfigMap", "ceph-csi-encryption-kms-config")
        kms = json.loads(kcm["data"]["config.json"]) if kcm else {}
        if kms_id and kms_id not in kms:
            err(f"{w}: encryptionKMSID '{kms_id}' is not in ConfigMap ceph-csi-encryption-kms-config "
                f"(known: {sorted(kms)})")
        entry = kms.get(kms_id, {})
        if isinstance(entry, str):
            entry = json.loads(entry)
        if "passphraseFile" not in entry:
            for op in ("provisioner", "node-stage"):
                if op in secrets and not secrets[op].get("encryptionPassphrase"):
                    err(f"{w}: KMS '{kms_id}' takes its passphrase from the {op} secret, "
                        f"which has no 'encryptionPassphrase'")


def check_gateway_host(ds):
    """Where gateways live (docs/attach-paths.md): rbdgw-csi names a gateway
    host (RBDGW_GATEWAY_HOST) that runs in a container of its own in the same
    pod, on a socket both reach through the host's /run/rbdgw, with one PID
    namespace and the FUSE mounts propagated both ways."""
    w = ds["_where"]
    spec = pod_spec(ds)
    csi = one_container(ds, r"^rbdgw-csi$", "rbdgw-csi")
    gh = one_container(ds, r"^gateway-host$", "gateway-host")
    if csi is None or gh is None:
        return
    if not spec.get("shareProcessNamespace"):
        err(f"{w}: no shareProcessNamespace: rbdgw-csi could not see or stop the gateways "
            f"gateway-host starts")
    if gh.get("image") != csi.get("image"):
        err(f"{w}: gateway-host image '{gh.get('image')}' differs from rbdgw-csi's "
            f"'{csi.get('image')}' (the daemons' paths come from rbdgw-csi)")
    if not [a for a in gh.get("command", []) + gh.get("args", []) if "rbdgw-gateway-host" in a]:
        err(f"{w}: gateway-host does not run rbdgw-gateway-host")
    want = container_env(csi).get("RBDGW_GATEWAY_HOST")
    gf, _ = flags(gh)
    have = gf.get("socket", "/run/rbdgw/gateway-host.sock")
    if not want:
        err(f"{w}: rbdgw-csi has no RBDGW_GATEWAY_HOST: gateways would live in its container")
    else:
        a, b = mount_for(csi, want), mount_for(gh, have)
        va = volume(spec, a[0]["name"]) if a else None
        vb = volume(spec, b[0]["name"]) if b else None
        ha = va and "hostPath" in va and posixpath.join(va["hostPath"]["path"], a[1])
        hb = vb and "hostPath" in vb and posixpath.join(vb["hostPath"]["path"], b[1])
        if not ha or ha != hb:
            err(f"{w}: rbdgw-csi calls {want} (host {ha}), gateway-host serves {have} (host {hb})")
    for c in (csi, gh):
        m = mount_for(c, "/run/rbdgw/x/disk")
        if not m or m[0]["mountPath"] != "/run/rbdgw" or m[0].get("mountPropagation") != "Bidirectional":
            err(f"{w}: {c['name']}: /run/rbdgw is not a Bidirectional mount: the exporters' "
                f"FUSE mounts would not reach rbdgw-csi")
    m = mount_for(gh, "/dev/fuse")
    v = volume(spec, m[0]["name"]) if m else None
    if not v or v.get("hostPath", {}).get("path") != "/dev":
        err(f"{w}: gateway-host does not mount the host's /dev (rbdgw-fuse needs /dev/fuse)")
    if not gh.get("securityContext", {}).get("privileged"):
        err(f"{w}: gateway-host is not privileged (FUSE mounts need it)")
    if "livenessProbe" in gh:
        err(f"{w}: gateway-host has a livenessProbe: a failed probe would restart it and kill "
            f"every gateway of the node")
    if gh.get("resources", {}).get("limits"):
        err(f"{w}: gateway-host has resource limits: an OOM kill there stops every volume's I/O")


def main():
    manifest_dir, out_dir, driver_default, version = sys.argv[1:5]
    capabilities = None
    if len(sys.argv) > 5:
        with open(sys.argv[5]) as f:
            capabilities = {l.strip() for l in f if l.strip()}
    objs = load(manifest_dir)
    nss = [o["metadata"]["name"] for o in by_kind(objs, "Namespace")]
    cluster_scoped = {"Namespace", "CSIDriver", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                      "VolumeSnapshotClass"}
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] in cluster_scoped and ns:
            err(f"{o['_where']}: a cluster-scoped object has a namespace")
        if o["kind"] not in cluster_scoped and ns not in nss:
            err(f"{o['_where']}: namespace '{ns}' is not created by the manifests")
    drivers = by_kind(objs, "CSIDriver")
    dss = by_kind(objs, "DaemonSet")
    deps = by_kind(objs, "Deployment")
    scs = by_kind(objs, "StorageClass")
    for kind, lst in (("CSIDriver", drivers), ("DaemonSet", dss), ("Deployment", deps)):
        if len(lst) != 1:
            err(f"expected one {kind}, found {len(lst)}")
    if not scs:
        err("no StorageClass")
    for cm in ("ceph-csi-config", "ceph-csi-encryption-kms-config"):
        if not find(objs, "ConfigMap", cm):
            err(f"no ConfigMap {cm}")
    if errors:
        return report()
    driver = drivers[0]["metadata"]["name"]
    check_node(dss[0], driver_default, driver, version, out_dir, objs)
    check_gateway_host(dss[0])
    check_controller(deps[0], driver_default, driver, version, out_dir, objs, drivers[0], scs,
                     capabilities)
    check_rbac(objs, deps[0])
    for sc in scs:
        check_storageclass(sc, driver, objs, out_dir)
    return report()


def report():
    for e in errors:
        print(f"check_manifests: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
