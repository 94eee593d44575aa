// Kernel NBD devices set up over generic netlink (family "nbd",
// linux/nbd-netlink.h) without nbd-client.
//
// The NBD handshake (fixed newstyle, NBD_OPT_GO on the default export, no
// structured replies) is done here on the gateway's unix socket; the socket,
// ready for transmission, is then handed to the kernel, which picks the
// device itself (NBD_CMD_CONNECT without an index: two connects at once
// never get the same /dev/nbdN).
//
// What the kernel does when the server is slow or gone (drivers/block/nbd.c,
// nbd_xmit_timeout and nbd_handle_cmd, as in 6.1):
// - I/O timeout 0 (the default here, rbd-nbd's --io-timeout=0): a request
//   waits as long as the server takes. The block layer's timer still fires
//   every 30 s; the driver logs "Possible stuck request" and re-arms it.
//   The connection is never dropped for slowness, so a stalled cluster
//   (librbd retries) only delays I/O.
// - I/O timeout N > 0: a request unanswered N s makes the kernel shut the
//   connection down (even if the server is alive and merely slow) and wait
//   for a new one.
// - The server closed the connection (died): new requests wait up to the
//   dead-connection timeout for nbd_reconnect, then fail with EIO; requests
//   already sent are resent on the new connection when their 30 s timer
//   next fires, or fail when the device is disconnected.
//
// All calls need CAP_SYS_ADMIN and the nbd module ("modprobe nbd");
// nbd_server_connected and nbd_reconnect also use sock_diag for unix sockets
// (the unix_diag module, which the kernel loads on demand).
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
  // 0: requests wait for the server however long it takes (see above).
  // N > 0: a request unanswered N s drops the connection.
  std::chrono::seconds io_timeout{0};
  // After the server died, I/O waits this long for nbd_reconnect before it
  // fails with EIO. 0: fail at once (what nbd-client sets up).
  std::chrono::seconds dead_conn_timeout{300};
  // Logical block size of the device: a power of two in 512..4096; 0 picks
  // the server's minimum block size, at least 512.
  std::uint32_t block_size = 0;
  // Shown in /sys/block/nbdN/backend (empty: none), to find the device again.
  std::string backend;
  // The device to use; -1 (the default) lets the kernel pick an unused one
  // (adding a device if none is), atomically. An explicit index fails with
  // EBUSY if the device is in use.
  int index = -1;
};

// Negotiates the export on socket_path and connects a device to it with one
// connection. Returns the index of the device (the kernel's reply). Throws
// Error naming the device and the cause; nothing is left connected then.
int nbd_connect(const std::string& socket_path, const NbdOptions& options);

// Hands /dev/nbd<index>, whose server died, a new connection to the server
// now on socket_path (the export must have the device's size). Waits up to
// `wait` for the kernel to notice the old connection is dead. Whether the
// kernel took the new socket is read from the kernel's socket table (the
// socket still exists after this process closed it). Throws Error (EBUSY
// when the kernel kept its old connection, i.e. it is still alive).
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
// died stays connected, waiting for nbd_reconnect (nbd_server_connected
// tells that apart).
NbdState nbd_status(int index);

// Whether a connection to the server on socket_path is up, as the kernel's
// socket table (sock_diag) has it: a connection accepted on socket_path that
// neither end has shut down. When the kernel gives a device's connection up
// (an I/O timeout) it shuts its socket down; when the server dies its end
// disappears; a server that is only stopped or slow keeps it. On a gateway's
// own socket the kernel's device is the only lasting client. Throws Error
// (ENOENT when the kernel has no sock_diag for unix sockets).
bool nbd_server_connected(const std::string& socket_path);

// /sys/block/nbd<index>/backend: the identifier the device was connected
// with ("" if none, or no such device).
std::string nbd_backend(int index);

// The connected device whose backend identifier is `backend`, or -1.
int nbd_find_backend(const std::string& backend);

// "/dev/nbd<index>", and back (throws Error(EINVAL) for other paths).
std::string nbd_device_path(int index);
int nbd_device_index(const std::string& device);

}  // namespace rbdgw::attach
