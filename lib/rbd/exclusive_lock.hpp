// One writer per image: the RBD exclusive lock held for a gateway's whole
// life, and the record that says who holds it.
//
// A read-write gateway (nbdkit rbd exclusive=true) takes the image's
// exclusive lock in librbd's managed mode (rbd_lock_acquire): librbd then
// never hands the lock to another client that asks for it, as it does in its
// default (cooperative) mode, where two writers take turns. Right after it got
// the lock the gateway writes the holder record, image metadata key
// `rbdgw.io/holder`:
//
//   {"node": "worker-1", "client": "127.0.0.1:0/2766369655",
//    "boot_id": "...", "pid": 1234, "pid_start": 567890,
//    "pid_ns": "pid:[4026531836]", "since": "2026-12-01T12:00:00Z"}
//
// `client` is the gateway's RADOS address in the form rbd_lock_get_owners
// and rbd_watchers_list give it; the record describes the lock's owner only
// while it names that owner's address (a stale record is ignored).
//
// Take-over rule (acquire_for_life): a foreign owner is refused (EBUSY,
// naming it) unless it is PROVABLY dead: its record names THIS node and
// either another boot id (the node rebooted since), or this boot id and this
// pid namespace with that pid and start time no longer alive, or this boot id
// and another pid namespace (a replaced pod's) with its watch on the image
// gone. Then its lock is broken (librbd blocklists it) and taken. Nothing
// else is ever fenced here: not an owner of another node whose watch lapsed
// (a live gateway that merely lost contact with the cluster looks the same),
// not an owner without a record. librbd's own break of a lapsed owner is never reached, because
// the owner is checked before rbd_lock_acquire is called.
//
// Thread safety: the functions take no locks of their own; librbd image
// handles are thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "rbd/image.hpp"

namespace rbdgw::rbd {

inline constexpr const char* kHolderKey = "rbdgw.io/holder";

struct Holder {
  std::string node;      // the node (host name, CSI node id) the gateway runs on
  std::string client;    // its RADOS address, as rbd_lock_get_owners gives it
  std::string boot_id;   // that node's boot id (rbdgw::this_boot_id)
  std::int64_t pid = 0;  // the gateway's pid in pid_ns
  std::uint64_t pid_start = 0;  // /proc/<pid>/stat field 22, against pid reuse
  std::string pid_ns;    // readlink /proc/self/ns/pid, e.g. "pid:[4026531836]"
  std::string since;     // when it took the lock, UTC, ISO 8601
  bool operator==(const Holder&) const = default;
};

// This process as a holder on `node` (client left empty: acquire_for_life
// fills it in). Throws Error when the boot id or /proc cannot be read.
Holder this_process(const std::string& node);
// The host name (gethostname), the default node name.
std::string host_name();

std::string holder_to_json(const Holder& h);
// Throws Error(EINVAL) naming what is malformed.
Holder holder_from_json(const std::string& json);

// The record, if there is one; a malformed one is logged and treated as none.
std::optional<Holder> read_holder(const Image& img);
void write_holder(Image& img, const Holder& h);

struct LockOwner {
  std::string client;             // the owner's RADOS address
  std::optional<Holder> holder;   // its record, when the record names this client
  bool watching = true;           // the owner's client still watches the image
};

// The owner of the image's exclusive lock; nullopt when nobody holds it.
// On a read-write handle from librbd (rbd_lock_get_owners; throws
// Error(EINVAL) for an image without the exclusive-lock feature), on a
// read-only one from the lock's entry on the header (rbd_list_lockers), as
// of the handle's last refresh: open a fresh handle to ask again.
std::optional<LockOwner> lock_owner(const Image& img);

// Whether the owner is provably dead as seen from `node` (see the take-over
// rule above); why: the reason, for a log line (either way).
bool provably_dead(const LockOwner& o, const std::string& node, std::string* why = nullptr);

// "image rbd/x is in use: its exclusive lock is held by <client> on node <node>
// since <since> (rbdgw gateway pid N)" or "... held by <client>, not an rbdgw
// gateway", with how to take it over.
std::string in_use_message(const Image& img, const LockOwner& o);

// Throws Error(EBUSY, in_use_message) when another client holds the lock and
// is not provably dead as seen from `node`; returns the owner otherwise
// (nullopt: free, or held by this very handle).
std::optional<LockOwner> check_available(const Image& img, const std::string& node);

// Breaks the exclusive lock of `client` (rbd_lock_break: librbd blocklists
// it). A lock no longer held by it is success.
void break_lock(Image& img, const std::string& client);

// Takes the exclusive lock for good (managed mode) after the take-over rule,
// verifies it with rbd_is_exclusive_lock_owner and writes the holder record
// (me, with client = this handle's address). Returns the record written.
// Throws Error(EBUSY) naming the owner when the image is in use, EINVAL for
// an image without the exclusive-lock feature.
Holder acquire_for_life(Image& img, const Holder& me);

// This handle still owns the exclusive lock (false once it was broken or
// the client blocklisted).
bool owns_lock(const Image& img);

}  // namespace rbdgw::rbd
