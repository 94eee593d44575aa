// lib/attach: attach an RBD volume to this node (gateway, block device,
// filesystem, mount) and detach it again. Used by NodeStage/NodeUnstage of
// rbdgw-csi and by the `rbdgw` CLI.
//
// API note (stable; for the CSI shim):
//   Volume v;  v.id = "<volume-id>"; v.cluster = {...}; v.image = ImageSpec::parse(...);
//              v.fstype = "ext4"; v.target = "<staging path>";  (or v.block = true)
//              v.encrypted = true; v.passphrase = <SecretBuffer>;  (encrypted volumes)
//   AttachOptions o;  o.stash_path = "<staging path>/../rbdgw-stash.json";  (0600 JSON)
//              o.attach = AttachChoice::automatic;  o.tools = Tools::from_environment();
//   Stash s = attach(v, o);    // s.device: the block device; s.target: mounted there
//   detach(o.stash_path);      // idempotent; leaves nothing behind
//   readopt(o.stash_path, o);  // at shim start: restart a dead gateway, never unmounts
//   status(stash) / load_stash(path) / list_stashes(dir)
// attach() is idempotent: with a complete stash for the same volume and target
// it returns that stash (re-adopting it); an incomplete stash (the caller died
// mid-attach) is detached first and the attach redone. Every step is recorded
// in the stash as it is done; a failure undoes the steps done so far (in
// reverse, through detach()) and rethrows, so nothing is left behind.
//
// Paths: userspace = nbdkit rbd [+ luks2 filter] on a unix socket in the 0700
// run dir /run/rbdgw/<volume-id>/, exposed as a file by the rbdgw-fuse
// exporter (reconnects when the gateway restarts), a loop device on that file
// (direct-io off), mkfs only when blank, mount. kernel = the same gateway,
// the kernel NBD client (netlink, attach/nbd_netlink.hpp) onto a free /dev/nbdN, LUKS2 opened by dm-crypt as
// /dev/mapper/luks-<volume-id>, mkfs only when blank, mount.
//
// Secrets (LUKS passphrase, cephx key) reach the gateway only through an
// inherited pipe (nbdkit's "-FD" password syntax), never argv, environment or
// a file. To restart a dead gateway without asking the caller again they are
// kept in the secret store (attach/secret_store.hpp: 0600 files in a 0700
// root-only directory on tmpfs, default /run/rbdgw/@secrets), never on
// persistent disk; it survives a restart of the shim and of its container,
// not a reboot, and detach() wipes the volume's secrets from it.
//
// Gateway and exporter processes outlive the caller: double-forked, own
// session, stdout/stderr to log files in the run dir.
//
// Encryption (state in the image metadata, lib/kms): an encrypted volume
// tagged encryptionPrepared (or untagged and blank) is LUKS2-formatted on its
// first attach (luks::format_image, the same format on both paths) and
// marked encrypted once its filesystem is made; a LUKS2 volume's passphrase
// is checked before anything starts. A volume is formatted (LUKS2 or mkfs)
// only when provably blank: no filesystem signature, and every extent ever
// allocated (the parent's included) past a LUKS2 header reads as zeros, raw
// or in the plaintext (rbd/allocation.hpp; bounded in time, refusing rather
// than guessing). The steps of each path are in attach/steps.hpp.
//
// Errors: rbdgw::Error with an errno (EINVAL bad input, ENOENT missing image or
// target, EEXIST/ENOTEMPTY a volume holding data where a filesystem or LUKS2
// header would be made, EBUSY volume attached elsewhere / target in use,
// EPERM wrong passphrase, ENOTSUP a path not possible on this node) and a
// message naming the object and the cause.
//
// Thread safety: functions are reentrant, but the caller must serialise calls
// for the same volume (the CSI per-volume lock); calls for different volumes
// may run concurrently.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/secret.hpp"
#include "kms/image_meta.hpp"
#include "luks/header.hpp"
#include "rbd/cluster.hpp"
#include "rbd/spec.hpp"

namespace rbdgw::attach {

// Default parent of the per-volume run dirs.
inline constexpr const char* kRunRoot = "/run/rbdgw";

enum class Mode { userspace, kernel };
enum class AttachChoice { automatic, kernel, userspace };

// "auto" | "kernel" | "userspace"; throws Error(EINVAL) naming the value.
AttachChoice parse_attach_choice(std::string_view s);
const char* to_string(Mode m);
// "userspace" | "kernel"; throws Error(EINVAL).
Mode parse_mode(std::string_view s);

// The path for a choice: kernel when root/dev/nbd0 (or the nbd module in
// root/sys/module/nbd) and root/dev/mapper/control exist, else userspace.
// An explicit kernel choice where that is missing throws Error(ENOTSUP).
// root is "/" except in tests.
Mode choose_mode(AttachChoice choice, const std::string& root = "/");

// Checks a volume id: 1..128 characters of [A-Za-z0-9._-], not "." or "..".
// Throws Error(EINVAL).
void validate_volume_id(std::string_view id);
// A volume id derived from an image spec ("pool/ns/img@s" -> "pool.ns.img@s"
// with characters outside the id alphabet replaced by '_').
std::string volume_id_for(const rbd::ImageSpec& spec);

// Executables and plugin/filter names (or .so paths).
struct Tools {
  std::string nbdkit = "nbdkit";
  std::string plugin = "rbd";
  std::string filter = "luks2";
  std::string fuse_exporter = "rbdgw-fuse";
  // Defaults overridden by $NBDKIT, $RBDGW_PLUGIN, $RBDGW_FILTER,
  // $RBDGW_FUSE_EXPORTER; without the last, an rbdgw-fuse next to the
  // running executable (or in ../fuse/ or fuse/, the build tree) is preferred.
  static Tools from_environment();
};

// What to attach.
struct Volume {
  std::string id;               // see validate_volume_id
  rbd::ClusterOptions cluster;  // conf_file, id, mon_host, keyring or key
  rbd::ImageSpec image;
  bool read_only = false;
  bool encrypted = false;       // open through LUKS2
  SecretBuffer passphrase;      // required when encrypted
  bool block = false;           // raw block: no filesystem, target unused
  std::string fstype = "ext4";  // ext4 | xfs
  std::string target;           // existing directory to mount on (filesystem volumes)
  std::string mount_options;    // extra "-o" style options, may be empty
  // The node this attach runs on, named in the gateway's holder record
  // (rbd/exclusive_lock.hpp): the CSI node id, the CLI's --node; empty: the
  // host name. A read-write attach is refused while a gateway on another
  // node (or a live one on this node) holds the volume's exclusive lock.
  std::string node;
};

struct AttachOptions {
  AttachChoice attach = AttachChoice::automatic;
  std::string stash_path;  // required: the 0600 JSON state file
  std::string run_dir;     // empty: kRunRoot/<volume-id>
  Tools tools;
  std::string root = "/";  // for choose_mode (tests)
  // Progress lines for long steps ("starting gateway", "mkfs.ext4 ..."); may be empty.
  std::function<void(std::string_view)> progress;
  std::chrono::seconds timeout{60};  // per readiness wait
  // LUKS2 format of an encryptionPrepared volume on its first attach
  // (tests lower the PBKDF cost here).
  luks::FormatOptions luks_format;
  // Userspace path: serve the volume from the node's shared gateway for
  // its cluster identity and kind (plain or decrypting), one nbdkit for
  // many volumes (lib/attach/step_shared_gateway.cpp), instead of a
  // gateway of its own. With AttachChoice::automatic it picks userspace;
  // with kernel it is Error(ENOTSUP).
  bool shared_gateway = false;
};

// A process we started, identified by pid and start time (against pid reuse).
struct ProcessRef {
  pid_t pid = 0;
  std::uint64_t start_time = 0;  // /proc/<pid>/stat field 22
  bool operator==(const ProcessRef&) const = default;
};

// What detach/readopt need; written (0600, atomically) after every step.
struct Stash {
  int version = 1;
  bool complete = false;  // all steps done
  std::string volume_id;
  std::string node;       // Volume::node (the host name if it was empty)
  // this_boot_id() of the attach (common/boot_id.hpp). A stash from another
  // boot is stale: its processes, mounts and devices went with that boot.
  std::string boot_id;
  Mode mode = Mode::userspace;
  std::string image;      // spec string
  // Cluster connection for a gateway restart (no key: that is in the keyring).
  std::string conf_file, mon_host, user_id, keyring;
  bool cephx_key_in_keyring = false;
  bool encrypted = false, block = false, read_only = false;
  std::string fstype, mount_options;
  std::string run_dir, socket, gateway_log;
  ProcessRef gateway;
  // A read-write gateway's RADOS client address (the owner of the image's
  // exclusive lock, as its holder record names it); empty if unknown.
  std::string gateway_client;
  // userspace path
  ProcessRef fuse;
  std::string fuse_file, loop_device;  // FUSE mounts a one-file fs on fuse_file
  // kernel path
  std::string nbd_device, mapper_name;
  // The block device holding the filesystem (or handed out raw), and the mount point.
  std::string device, target;
  bool mounted = false;
  // Set (and saved) right before mkfs, and written to the image's metadata
  // marker rbdgw.io/mkfs-started: a later attach redoes an interrupted mkfs
  // only when the marker carries the token of this (incomplete) stash.
  std::string mkfs_token;
  // The shared gateway's dir (AttachOptions::shared_gateway); empty: the
  // volume has a gateway of its own. socket and gateway_log are in it, and
  // gateway is the shared gateway as last seen by this volume.
  std::string shared_dir;
  bool operator==(const Stash&) const = default;
};

std::string stash_to_json(const Stash& s);
// Throws Error(EINVAL) naming what is missing or malformed.
Stash stash_from_json(std::string_view json, std::string_view what = "stash");
// Writes path atomically (temp file + rename), mode 0600.
void save_stash(const Stash& s, const std::string& path);
// Throws Error(ENOENT) when absent, EINVAL when malformed. A stash written
// before boot ids were recorded gets, when its file is older than this boot
// and none of its processes is alive, a boot id that marks it stale.
Stash load_stash(const std::string& path);
// Empty when s is from this boot (or cannot be told: no boot id); otherwise
// why it is stale: "from an earlier boot (boot id X, this boot Y)". Whatever
// a stale stash names (pids, loop/nbd devices, mounts) may belong to someone
// else now: attach() forgets it (its secrets and run-dir files) and attaches
// afresh, detach() only forgets it, readopt() and refresh_size() refuse it
// (ESTALE), status() reports it (VolumeStatus::stale) without probing.
std::string stale_reason(const Stash& s);
// Stashes at dir/*/stash.json (the CLI's layout), sorted by volume id;
// unreadable ones are logged and skipped.
std::vector<Stash> list_stashes(const std::string& dir = kRunRoot);

// Argument vectors (pure; unit-tested). Secrets are passed as "-FD".
struct GatewayArgs {
  std::string socket, pidfile;
  std::string image;  // spec
  std::string conf_file, mon_host, user_id, keyring;
  int key_fd = -1;         // cephx key on this fd when >= 0
  int passphrase_fd = -1;  // LUKS passphrase on this fd (encrypted volumes)
  bool read_only = false;
  // Read-write gateways: exclusive=true node=NODE (one writer, holding the
  // image's exclusive lock for their whole life); node empty: host name.
  std::string node;
};
std::vector<std::string> gateway_argv(const Tools& t, const GatewayArgs& a);
// rbdgw-fuse [--name NAME] [--readonly] [--no-punch-hole] --size-file SIZE_FILE SOCKET FILE
std::vector<std::string> fuse_argv(const Tools& t, const std::string& socket,
                                   const std::string& fuse_file, const std::string& name,
                                   bool read_only, const std::string& size_file,
                                   bool no_punch_hole = false);
// Throws Error(EINVAL) for an fstype other than ext4 or xfs.
std::vector<std::string> mkfs_argv(const std::string& fstype, const std::string& device);

// Attaches (see the API note). Returns the complete stash.
Stash attach(const Volume& v, const AttachOptions& o);

struct DetachOptions {
  // Tear the volume down even when its I/O cannot complete (its gateway is
  // dead and could not be restarted, or the filesystem's flush did not end
  // within flush_timeout): outstanding I/O and the filesystem's unflushed
  // writes fail with EIO (they are lost), the filesystem is unmounted
  // lazily, the loop/NBD device detached, exporter and gateway stopped.
  bool force = false;
  // How long the filesystem's flush before the unmount may take; 0: no
  // limit. Past it: Error(ETIMEDOUT), or with force the teardown above.
  std::chrono::seconds flush_timeout{0};
  // Restart a dead gateway first (readopt with these options) so that the
  // flush can complete; null: do not.
  const AttachOptions* restart = nullptr;
};

struct DetachResult {
  bool forced = false;  // I/O was failed to tear the volume down
  std::string loss;     // forced: what may have been lost and why, for the user
};

// Undoes every step the stash at stash_path records, in reverse: unmount,
// detach loop/nbd/dm, stop exporter and gateway, forget the stored secrets,
// remove the run dir and the stash. A missing stash is success. Throws
// Error(EBUSY) (and stops, keeping the stash) when the target is in use;
// without force, Error(EIO) naming the cause when the volume's gateway is
// dead (and could not be restarted) while a filesystem or device is still
// up, and Error(ETIMEDOUT) when the flush outlasts flush_timeout: in both
// cases nothing is torn down and the message says that --force would lose
// the unflushed writes.
DetachResult detach(const std::string& stash_path, const DetachOptions& d = {});

// Makes an attached volume show its image's current size (after the image
// was grown): the FUSE exporter re-reads the export size (SIGUSR1, the
// gateway keeps running), the loop device its capacity, and a mounted
// read-write filesystem grows to fill it (resize2fs / xfs_growfs). Returns
// the block device's size in bytes. Throws Error(EBUSY) for an incomplete
// attach, EIO when the exporter is dead or does not answer within
// o.timeout, ENOTSUP on the kernel path (detach and attach again there).
std::uint64_t refresh_size(const std::string& stash_path, const AttachOptions& o);

// The size in bytes of a block device (BLKGETSIZE64). Throws Error.
std::uint64_t device_size(const std::string& device);

struct VolumeStatus {
  Stash stash;
  bool gateway_alive = false;
  bool fuse_alive = false;   // userspace path only
  bool mounted = false;      // target is a mount point (filesystem volumes)
  // Kernel path only: /dev/nbdN configured (nbd_status) and its connection
  // to the gateway up in the kernel's socket table (nbd_server_connected).
  bool nbd_connected = false;
  std::string stale;           // stale_reason(): non-empty, nothing of it is up
  bool healthy() const;
};
VolumeStatus status(const Stash& s);

// Re-adopts an attached volume: if its gateway died, restarts it on the same
// socket with the secrets kept in the secret store (the exporter / kernel
// reconnects); never unmounts. Returns the status after the repair. Throws
// Error(EIO) when the volume cannot be repaired in place (exporter dead),
// Error(ESTALE) "stale: from an earlier boot ..." for a stale stash.
VolumeStatus readopt(const std::string& stash_path, const AttachOptions& o);

}  // namespace rbdgw::attach
