// Mount options: one parser for every mount the product makes (the staging
// mount of `rbdgw map --mount` and NodeStageVolume, NodePublishVolume's
// bind mount). A comma-separated list as mount(8) takes it ("-o") or a CSI
// VolumeCapability's mount_flags joined with ",", split into
//  - mount(2) flags: the filesystem-independent options of mount(8)'s table
//    (ro/rw, nodev/dev, nosuid/suid, noexec/exec, noatime/atime,
//    nodiratime/diratime, relatime/norelatime, strictatime/nostrictatime,
//    lazytime/nolazytime, sync/async, dirsync, silent/loud,
//    iversion/noiversion, nosymfollow; the last one given wins);
//  - options only mount(8) reads (defaults, auto, noauto, nofail, _netdev,
//    x-*, comment=*): accepted, and dropped;
//  - the data string for the filesystem: the rest, each checked against the
//    filesystem's own list (ext4, xfs: their kernel parameter tables).
// Refused (Error(EINVAL) naming them): options the filesystem does not know,
// and the few that would break what the product guarantees: ext4's
// nobarrier / barrier=0 (an fsync would no longer flush the gateway, so an
// acknowledged write could be lost), journal_dev / journal_path / logdev /
// rtdev (a device of the host, outside the volume), norecovery / noload
// read-write (writes over an unreplayed journal), bind/remount/move style
// operations and user/users/owner/group (not mount options of a volume).
// data=writeback and data=journal are the filesystem's documented trade-offs
// (fsync stays durable) and are allowed.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace rbdgw::attach {

struct MountOptions {
  // MS_* flags asked for (set), and those asked off (cleared: "dev",
  // "exec", "rw", ...); a flag is in at most one of the two.
  unsigned long set = 0, cleared = 0;
  // The filesystem's data string (may be empty), in the order given.
  std::string data;
  // The options as understood, in order (for logs and errors).
  std::vector<std::string> given;

  // Flags for the staging mount: the asked flags, MS_RDONLY when
  // read_only, and MS_NODEV | MS_NOSUID unless "dev" / "suid" was asked.
  unsigned long stage_flags(bool read_only) const;
  // The per-mount flags (the ones MS_BIND | MS_REMOUNT applies) asked for.
  unsigned long per_mount_set() const;
  unsigned long per_mount_cleared() const;
  // True if an atime mode (noatime, relatime, strictatime, atime, ...) was given.
  bool atime_given() const;
  // True if "ro" was asked (and not undone by a later "rw").
  bool asks_read_only() const;
};

// Splits `list` ("noatime,nodev,discard"; double quotes protect commas, as
// in context="a,b") for a filesystem of type fstype ("ext4" or "xfs").
// read_only: the mount is read-only anyway (norecovery is then allowed).
// Throws Error(EINVAL) naming every option refused and why.
MountOptions parse_mount_options(std::string_view list, std::string_view fstype,
                                 bool read_only = false);

// The per-mount flags of the mount at path (statvfs: MS_RDONLY, MS_NOSUID,
// MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_NODIRATIME, MS_RELATIME,
// MS_NOSYMFOLLOW). Throws Error naming path.
unsigned long mount_flags_of(const std::string& path);

}  // namespace rbdgw::attach
