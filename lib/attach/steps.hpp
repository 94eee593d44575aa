// The staging transaction as a list of steps (internal to lib/attach).
//
// attach() runs the steps of its path in order; detach() runs their undos
// in reverse. A step records in the stash (and saves it) everything its
// undo needs BEFORE it waits on anything, so that the undo works from the
// stash alone: after a failure, after a crash of the caller, in another
// process. Every undo is idempotent and does nothing for a step that never
// ran. The files say where each step lives:
//
//   step_image.cpp       inspect (passphrase check, LUKS2 format of a
//                        provably blank volume), mark_encrypted
//   step_gateway.cpp     run_dir, secrets (the secret store), gateway
//                        (nbdkit rbd [+ luks2]; read-write: holding the
//                        exclusive lock, rbd/exclusive_lock.hpp)
//   step_userspace.cpp   fuse_exporter (rbdgw-fuse), loop_device
//   step_kernel.cpp      nbd_device (netlink NBD), dm_crypt (libcryptsetup)
//   step_filesystem.cpp  filesystem (the blankness decision and mkfs), mount
//   attach.cpp           the transaction: attach, detach, readopt, status
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "attach/attach.hpp"
#include "attach/process.hpp"
#include "common/error.hpp"
#include "common/log.hpp"
#include "rbd/image.hpp"

namespace rbdgw::attach::detail {

using namespace std::chrono_literals;

// Names of the secrets in the store.
inline constexpr const char* kPassphrase = "passphrase";
inline constexpr const char* kCephx = "cephx";

// What an encrypted volume's image says (step inspect -> filesystem, mark_encrypted).
struct ImageState {
  // Where the filesystem's bytes start in the image: 0, or the LUKS2 data
  // segment's offset.
  std::uint64_t data_offset = 0;
  bool first_use = false;  // encrypted, tagged encryptionPrepared: marked encrypted when done
};

// Everything a step works on.
struct Context {
  Stash& s;
  const AttachOptions& o;
  std::function<void()> save;      // writes s to the stash path
  const Volume* v = nullptr;       // attach only (secrets, image)
  ImageState image;
  bool forced = false;             // detach: I/O is being failed, unmount lazily
  // attach: the mkfs token of the interrupted attach this one redoes (the
  // marker rbdgw.io/mkfs-started proves a half-made filesystem only then).
  std::string interrupted_mkfs_token;
  std::string stash_path;          // detach: kept until everything else is gone
};

struct Step {
  const char* name;
  void (*run)(Context&);   // attach; nullptr: nothing to do then
  void (*undo)(Context&);  // detach; nullptr: nothing to undo
};

// The steps of a path, in attach order (shared: the userspace path on a
// shared gateway, step_shared_gateway.cpp).
const std::vector<Step>& steps_for(Mode m, bool shared = false);

// Shared helpers.
void progress(const AttachOptions& o, const std::string& msg);
bool is_mountpoint(const std::string& path);
// The last lines of a daemon's log, for an error message.
std::string log_tail(const std::string& path);
// The loop devices backed by file (recorded or not).
std::vector<std::string> loops_on(const std::string& file);
// The stash's cluster connection, with the cephx key from the store.
rbd::ClusterOptions cluster_options(const Stash& s, const std::optional<SecretBuffer>& key);

// Pid files the daemons write themselves before they run (spawn_detached),
// so that detach() finds one whose start the caller did not live to record.
inline std::string gateway_pid_file(const Stash& s) { return s.run_dir + "/gateway.pid"; }
inline std::string fuse_pid_file(const Stash& s) { return s.run_dir + "/fuse.pid"; }
inline std::string size_file(const Stash& s) { return s.run_dir + "/size"; }
// The daemon named by a pid file in the run dir, if it is alive and ours.
inline ProcessRef stray(const Stash& s, const std::string& pid_file) {
  return stray_process(pid_file, s.run_dir + "/");
}

// Waits until ready() or the process died or the timeout passed.
template <typename F>
void wait_ready(const ProcessRef& p, const std::string& what, const std::string& log_path,
                std::chrono::seconds timeout, F ready) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ready()) {
    if (!alive(p))
      throw Error(EIO, cat(what, " exited (", exit_reason(p), "); its log: ", log_tail(log_path)));
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(ETIMEDOUT, cat(what, " not ready after ", timeout.count(), " s; its log: ",
                                 log_tail(log_path)));
    std::this_thread::sleep_for(50ms);
  }
}

// step_gateway.cpp, also for readopt. A read-write gateway is waited for
// until it holds the image's exclusive lock (recorded: s.gateway_client);
// one that exits because another client holds it is Error(EBUSY) naming
// that client and its node.
void start_gateway(Stash& s, const Tools& tools, const SecretBuffer* cephx_key,
                   const SecretBuffer* passphrase, std::chrono::seconds timeout,
                   const std::function<void()>& save);
// Throws Error(ESTALE) when another client has held the volume's lock since
// its (now dead) read-write gateway s.gateway_client did (step_gateway.cpp).
void refuse_if_taken_since(const Stash& s, const SecretBuffer* cephx_key);
// The addresses of the RADOS clients other than `cluster` watching img.
std::vector<std::string> other_watchers(const rbd::Cluster& cluster, const rbd::Image& img);
// The node named in holder records: v.node, or the host name.
std::string node_name(const Volume& v);

// Step functions, by file.
void inspect_run(Context& c);
void mark_encrypted_run(Context& c);
void run_dir_run(Context& c);
void run_dir_undo(Context& c);
void secrets_run(Context& c);
void secrets_undo(Context& c);
void gateway_run(Context& c);
void gateway_undo(Context& c);
void fuse_exporter_run(Context& c);
void fuse_exporter_undo(Context& c);
void loop_device_run(Context& c);
void loop_device_undo(Context& c);
void nbd_device_run(Context& c);
void nbd_device_undo(Context& c);
void dm_crypt_run(Context& c);
void dm_crypt_undo(Context& c);
void filesystem_run(Context& c);
void mount_run(Context& c);
void mount_undo(Context& c);

// step_shared_gateway.cpp (AttachOptions::shared_gateway).
// The shared gateway's dir for s's cluster identity, node and kind.
std::string shared_gateway_dir(const std::string& run_root, const Stash& s, const SecretBuffer& key);
// nbdkit worker threads per connection of a shared gateway (--threads);
// $RBDGW_SHARED_GATEWAY_THREADS overrides the default. Read when a shared
// gateway starts with no gateway before it in its dir.
int shared_threads();
// The worker threads per connection of the shared gateway of `dir`: the
// count recorded when its gateway started (kept across its restarts, so
// that the exporters already running keep their depth), else that of its
// running gateway's command line, else shared_threads(). A volume's
// exporter takes its --conn-depth from it.
int shared_workers(const std::string& dir);
// Seconds after which a shared gateway's plain volume's exporter closes
// its idle connection (rbdgw-fuse --idle-disconnect), 0: never;
// $RBDGW_IDLE_DISCONNECT overrides the default.
int shared_idle_disconnect();
// The live shared gateway of s.shared_dir (pid 0: none).
ProcessRef shared_gateway_process(const Stash& s);
// s's gateway is alive: its own, or the shared one with s's registry entry.
bool gateway_up(const Stash& s);
void shared_gateway_run(Context& c);
void shared_gateway_undo(Context& c);
void shared_lock_run(Context& c);
// readopt of a volume on a shared gateway: restarts the gateway when dead
// (once: under its lock, the next volume finds it alive), and registers the
// volume again after refuse_if_taken_since.
void shared_readopt(Stash& s, const AttachOptions& o, const std::function<void()>& save);

}  // namespace rbdgw::attach::detail
