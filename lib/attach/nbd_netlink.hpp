// Kernel NBD devices set up over generic netlink (family "nbd",
// linux/nbd-netlink.h) without nbd-client.
//
// The NBD handshake (fixed newstyle, NBD_OPT_GO on the default export, no
// structured replies) is done here on the gateway's unix socket; the socket,
// ready for transmission, is then handed to the kernel. A device connected
// with a dead-connection timeout outlives its server: when the server dies,
// I/O waits (up to that timeout) instead of failing, and nbd_reconnect hands
// the device a fresh connection to the restarted server; requests that were
// in flight are resent after the I/O timeout.
//
// All calls need CAP_SYS_ADMIN and the nbd module ("modprobe nbd").
//
// Thread safety: all functions are thread-safe (each call opens its own
// sockets).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace rbdgw::attach {

// What the server announced for the export (NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE).
struct NbdExport {
  std::uint64_t size = 0;
  std::uint16_t flags = 0;  // transmission flags (NBD_FLAG_HAS_FLAGS, _READ_ONLY, ...)
  std::uint32_t min_block = 1, preferred_block = 4096, max_block = 0;  // 0: not announced
};

// Connects to the NBD server on the unix socket, negotiates the default
// export and disconnects cleanly. Throws Error naming socket_path and the
// cause (no server, not fixed newstyle, an error reply, a protocol error).
NbdExport nbd_probe(const std::string& socket_path);

struct NbdOptions {
  // A request unanswered this long is requeued (and resent on the new
  // connection after nbd_reconnect). At least 1 s.
  std::chrono::seconds io_timeout{30};
  // After the server died, I/O waits this long for nbd_reconnect before it
  // fails with EIO. 0: fail at once (what nbd-client sets up).
  std::chrono::seconds dead_conn_timeout{300};
  // Logical block size of the device: a power of two in 512..4096; 0 picks
  // the server's minimum block size, at least 512.
  std::uint32_t block_size = 0;
  // Shown in /sys/block/nbdN/backend (empty: none), to find the device again.
  std::string backend;
  // The device to use; -1 for any free one (the kernel adds one if none is).
  int index = -1;
};

// Negotiates the export on socket_path and connects /dev/nbd<index> to it
// with one connection. Returns the index of the device. Throws Error naming
// the device and the cause; nothing is left connected then.
int nbd_connect(const std::string& socket_path, const NbdOptions& options);

// Hands /dev/nbd<index>, whose server died, a new connection to the server
// now on socket_path (the export must have the device's size). Waits up to
// `wait` for the kernel to notice the old connection is dead. Throws Error
// (EBUSY when the kernel kept its old connection, i.e. it is still alive).
void nbd_reconnect(int index, const std::string& socket_path,
                   std::chrono::milliseconds wait = std::chrono::seconds(10));

// Disconnects /dev/nbd<index> (pending I/O fails) and waits up to `wait` for
// the kernel to release its configuration. A device that is not connected is
// fine. Throws Error (EBUSY while the device stays configured, e.g. still
// open or mounted; ENOENT when there is no such device).
void nbd_disconnect(int index, std::chrono::milliseconds wait = std::chrono::seconds(10));

enum class NbdState { absent, disconnected, connected };
// NBD_CMD_STATUS: connected = the kernel holds a configuration for the
// device. It does not tell whether the server is alive: a device whose server
// died stays connected, waiting for nbd_reconnect.
NbdState nbd_status(int index);

// "/dev/nbd<index>", and back (throws Error(EINVAL) for other paths).
std::string nbd_device_path(int index);
int nbd_device_index(const std::string& device);

}  // namespace rbdgw::attach
