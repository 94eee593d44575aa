// Node logic of rbdgw-csi over lib/attach: stage (attach + mount at the
// staging path, or a raw block device), publish (bind mount), their
// reverses, stats, expansion, and re-adoption at start.
//
// State: what Unstage needs is lib/attach's 0600 JSON stash, kept beside
// the staging path as "<staging_target_path>.rbdgw.json" (not inside it: a
// mount would hide it). An index of staged volumes lives in --state-dir as
// symlinks "volumes/<volume-id>" -> stash, so re-adoption at start finds
// every volume without a database, and a volume staged at another path is
// refused.
//
// Thread safety: methods may run concurrently for different volumes; the
// caller holds the volume's VolumeLocks guard.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "attach/attach.hpp"
#include "csi/capability.hpp"
#include "csi/config.hpp"
#include "csi/controller.hpp"
#include "csi/volume_id.hpp"
#include "csi/volume_locks.hpp"

namespace rbdgw::csi {

struct VolumeStats {
  bool block = false;
  std::int64_t total_bytes = 0, used_bytes = 0, available_bytes = 0;
  std::int64_t total_inodes = 0, used_inodes = 0, available_inodes = 0;
  bool abnormal = false;
  std::string condition;  // human-readable condition
};

class Node {
 public:
  Node(const Controller& controller, VolumeLocks& locks, const Options& opt);

  const std::string& node_id() const { return node_id_; }
  VolumeLocks& locks() { return locks_; }
  const std::string& allowed_root() const { return allowed_root_; }

  // Attaches the volume and mounts it at staging (filesystem) or exposes the
  // block device (block). Idempotent. EBUSY (FAILED_PRECONDITION) when the
  // volume is staged at another path; EEXIST when staged here with an
  // incompatible capability; ENOENT for an unknown volume.
  void stage(const VolumeId& id, const std::string& staging, const Capability& cap,
             const StringMap& secrets, const StringMap& context);
  // Detaches; success when not staged there.
  void unstage(const VolumeId& id, const std::string& staging);
  // Bind-mounts the staged filesystem (or the block device) at target.
  // EBUSY when not staged at staging; EEXIST when target is a mount with
  // other flags.
  void publish(const VolumeId& id, const std::string& staging, const std::string& target,
               const Capability& cap, bool read_only);
  // Unmounts and removes target; success when it is not there.
  void unpublish(const VolumeId& id, const std::string& target);
  // Whether the node's index records the volume as staged (its stash exists).
  bool staged_here(const VolumeId& id) const;
  // Usage of a staged or published path. ENOENT when the volume is not
  // staged on this node, or path is neither its staging path nor one of its
  // publish targets (a bind mount of it, its device), or does not exist.
  VolumeStats stats(const VolumeId& id, const std::string& path);
  // Makes the staged volume's device see the grown image and grows the
  // filesystem to it (attach::refresh_size); returns the device size in
  // bytes. ERANGE when that is below required (0 = unknown).
  std::uint64_t expand(const VolumeId& id, const std::string& path, std::uint64_t required);

  // Re-adopts every volume in the index (restarts dead gateways), never
  // unmounting; failures are logged. Called once at start.
  void readopt_all();

 private:
  static std::string stash_path(const std::string& staging) { return staging + ".rbdgw.json"; }
  std::string index_link(const VolumeId& id) const;
  // The stash path the index records for the volume, if any.
  std::optional<std::string> indexed_stash(const VolumeId& id) const;
  // Where a read-only block publish at target records its own loop device.
  std::string publish_record(const std::string& target) const;
  // The complete stash for the volume, found by the index; EBUSY when none.
  attach::Stash staged_stash(const VolumeId& id, const std::string& staging) const;
  attach::AttachOptions attach_options(const std::string& stash) const;

  const Controller& controller_;
  VolumeLocks& locks_;
  std::string node_id_, state_dir_, allowed_root_;
  attach::AttachChoice attach_choice_;
  bool shared_gateway_ = false;  // --shared-gateway
};

}  // namespace rbdgw::csi
