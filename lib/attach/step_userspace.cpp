// Steps of the userspace path: fuse_exporter (rbdgw-fuse shows the
// gateway's export as one file) and loop_device (a loop device on it).
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "attach/loop.hpp"
#include "attach/steps.hpp"

namespace fs = std::filesystem;

namespace rbdgw::attach::detail {

void fuse_exporter_run(Context& c) {
  Stash& s = c.s;
  s.fuse_file = s.run_dir + "/disk";
  std::ofstream(s.fuse_file).close();
  ::chmod(s.fuse_file.c_str(), 0600);
  c.save();
  // Encrypted: no hole punches. The loop driver turns a discard into the
  // same hole punch as a write-zeroes, which must leave zeros, so each
  // discard (mkfs's of the whole device, every fstrim) would write
  // encrypted zeros over its range for nothing; refused, the loop device
  // stops taking discards and the kernel writes zeros where it must.
  auto argv = fuse_argv(c.o.tools, s.socket, s.fuse_file, "rbdgw:" + s.volume_id, s.read_only,
                        size_file(s), s.encrypted);
  // A shared gateway serves the volume as the export named by its id.
  // nbdkit starts its --threads workers per connection, so each connection
  // of each volume costs the node's one gateway that many threads: a
  // volume takes a further connection only while the ones it has are full
  // (--conn-depth: the gateway's workers per connection), and closes them
  // once idle. One connection capped a busy volume at the gateway's
  // workers per connection (issue 13: the I/O of one volume unchanged);
  // 32 / depth connections serve 32 in flight, as its own gateway's 2 x 16
  // (16 x 2 as shipped; docs/benchmarks.md, ninth round).
  // FUSE threads beyond --idle-threads exit after 1 s without a request
  // (made again on demand, up to --threads); before, an idle exporter that
  // once had 32 requests in flight kept them all. bench/attach/levers.sh,
  // 2 rounds, eighth round in docs/benchmarks.md: a volume's own gateway
  // with 2 kept vs all the same speed within the noise; on the shared
  // gateway the 1 s (not libfuse's exit the moment a thread is idle)
  // lifted 4K randread on the loop device 6403 -> 7228 IOPS, to 0.96x of
  // the own gateway's.
  if (!s.shared_dir.empty()) {
    // One FUSE thread kept idle, not 2: with hundreds of volumes on a node
    // each kept thread is one per volume; a second request at once makes
    // its thread on demand, and a steady load keeps them (they end only
    // after 1 s without a request). The depth is the gateway's it joins
    // (recorded when that one started).
    const int depth = shared_workers(s.shared_dir);
    argv.insert(argv.begin() + 1,
                {"--idle-threads", "1", "--export", s.volume_id, "--connections",
                 std::to_string(std::clamp((32 + depth - 1) / depth, 1, 64)), "--conn-depth",
                 std::to_string(depth), "--threads", "32"});
    // Encrypted volumes too: the luks2 filter keeps the unlocked volume
    // while its secret store entry exists, so a reconnect runs no PBKDF.
    if (const int idle = shared_idle_disconnect(); idle > 0)
      argv.insert(argv.begin() + 1, {"--idle-disconnect", std::to_string(idle)});
  } else {
    // A volume's own gateway serves 2 connections x nbdkit's 16 workers:
    // 32 FUSE threads let the loop device keep that many requests in
    // flight (16 capped it at 16). bench/attach/levers.sh, 3 interleaved
    // rounds, quiet machine: loop device 4K randwrite qd32 3005 -> 3642
    // IOPS (0.18 -> 0.16 core-s per 1000), 4K randread 5484 -> 5869, 1M
    // rows within the noise; the exporter's threads after a 4K random read
    // 20 -> 36.
    argv.insert(argv.begin() + 1, {"--idle-threads", "2", "--threads", "32"});
  }
  s.fuse = spawn_detached(argv, s.run_dir + "/fuse.log", {}, fuse_pid_file(s));
  c.save();
  wait_ready(s.fuse, "FUSE exporter", s.run_dir + "/fuse.log", c.o.timeout,
             [&] { return is_mountpoint(s.fuse_file); });
}

// Unmounts the FUSE file (the loop device may let go of it a moment after
// losetup -d; forced: lazily, once that moment has passed) and stops the
// exporter.
void fuse_exporter_undo(Context& c) {
  Stash& s = c.s;
  if (!s.fuse_file.empty()) {
    for (int i = 0; is_mountpoint(s.fuse_file); ++i) {
      const bool lazy = c.forced && i >= 20;
      const CommandResult r = run_command(lazy ? std::vector<std::string>{"fusermount3", "-u", "-z", s.fuse_file}
                                               : std::vector<std::string>{"fusermount3", "-u", s.fuse_file});
      if (r.status == 0) break;
      if (i == 100) throw Error(EBUSY, cat("fusermount3 -u ", s.fuse_file, ": ", r.err));
      std::this_thread::sleep_for(50ms);
    }
    stop_process(s.fuse, 5s);
  }
  if (!s.run_dir.empty()) stop_process(stray(s, fuse_pid_file(s)), 5s);
}

// Direct I/O on. The FUSE file is direct_io either way (no page cache
// under the loop device); what direct I/O changes is how the loop driver
// hands requests to the file: with it off, one worker reads or writes one
// request at a time (a queue of 32 ran at its depth-1 speed); with it on,
// every request is an async direct I/O to the file, all in flight at once
// (FUSE async direct I/O, up to rbdgw-fuse's max_background), each still
// completed only when rbdgw-fuse's NBD request has been answered. A flush
// of the device is the same either way: fsync of the file, which
// rbdgw-fuse sends as an NBD flush (test-cli-userspace-device-keeps-
// requests-in-flight checks both; docs/benchmarks.md section 5 has the
// figures).
void loop_device_run(Context& c) {
  Stash& s = c.s;
  std::vector<std::string> losetup = {"losetup", "--find", "--show", "--direct-io=on"};
  if (s.read_only) losetup.push_back("--read-only");
  losetup.push_back(s.fuse_file);
  // A loop device made just before a crash is found by its backing file.
  const std::string dev = run_checked(losetup);
  s.loop_device = dev.substr(0, dev.find('\n'));
  s.device = s.loop_device;
  c.save();
}

// A loop device still held (by a lazily unmounted filesystem) is only
// marked to go when let go: forced, that moment is waited for (bounded),
// since the filesystem's I/O is failing fast by then.
void loop_device_undo(Context& c) {
  if (c.s.fuse_file.empty()) return;
  for (const auto& loop : loops_on(c.s.fuse_file)) detach_loop_if_backed_by(loop, c.s.fuse_file);
  for (int i = 0; c.forced && i < 400 && !loops_on(c.s.fuse_file).empty(); ++i)
    std::this_thread::sleep_for(50ms);
  if (const auto left = loops_on(c.s.fuse_file); !left.empty())
    log::warn(left.front(), " on ", c.s.fuse_file, " is still in use; it goes when let go (autoclear)");
}

}  // namespace rbdgw::attach::detail
