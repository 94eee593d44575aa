// kvm-nbd: drives lib/attach's netlink NBD client (attach/nbd_netlink.hpp)
// from the kernel-VM tests.
//
//   kvm-nbd probe SOCK                        nbd_probe; prints
//                                             "size=N flags=0xF block=MIN/PREF/MAX"
//   kvm-nbd connect SOCK DEAD_S IO_S BACKEND  nbd_connect (any free device);
//                                             prints /dev/nbdN
//   kvm-nbd reconnect DEVICE SOCK             nbd_reconnect
//   kvm-nbd status DEVICE                     nbd_status; prints
//                                             connected|disconnected|absent,
//                                             exit 0 if connected, 1 if not
//   kvm-nbd disconnect DEVICE                 nbd_disconnect
//   kvm-nbd link SOCK                         nbd_server_connected; prints
//                                             up|down, exit 0 if up, 1 if not
//
// Exit status 2 for bad usage, 1 for any error (message on stderr).
#include <iostream>
#include <string>
#include <vector>

#include "attach/nbd_netlink.hpp"
#include "common/error.hpp"

using namespace rbdgw;
using namespace rbdgw::attach;

namespace {

std::chrono::seconds seconds(const std::string& s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || s.size() > 6)
    throw Error(EINVAL, cat("'", s, "': expected a number of seconds"));
  return std::chrono::seconds(std::stol(s));
}

int run(const std::vector<std::string>& a) {
  const std::string cmd = a.empty() ? "" : a[0];
  if (cmd == "probe" && a.size() == 2) {
    const NbdExport e = nbd_probe(a[1]);
    std::cout << "size=" << e.size << " flags=0x" << std::hex << e.flags << std::dec << " block="
              << e.min_block << "/" << e.preferred_block << "/" << e.max_block << "\n";
  } else if (cmd == "connect" && a.size() == 5) {
    NbdOptions o;
    o.dead_conn_timeout = seconds(a[2]);
    o.io_timeout = seconds(a[3]);
    o.backend = a[4];
    std::cout << nbd_device_path(nbd_connect(a[1], o)) << "\n";
  } else if (cmd == "reconnect" && a.size() == 3) {
    nbd_reconnect(nbd_device_index(a[1]), a[2]);
  } else if (cmd == "status" && a.size() == 2) {
    const NbdState s = nbd_status(nbd_device_index(a[1]));
    std::cout << (s == NbdState::connected ? "connected" : s == NbdState::disconnected ? "disconnected" : "absent")
              << "\n";
    return s == NbdState::connected ? 0 : 1;
  } else if (cmd == "disconnect" && a.size() == 2) {
    nbd_disconnect(nbd_device_index(a[1]));
  } else if (cmd == "link" && a.size() == 2) {
    const bool up = nbd_server_connected(a[1]);
    std::cout << (up ? "up" : "down") << "\n";
    return up ? 0 : 1;
  } else {
    std::cerr << "usage: kvm-nbd probe SOCK | connect SOCK DEAD_S IO_S BACKEND | reconnect DEVICE SOCK |"
                 " status DEVICE | disconnect DEVICE | link SOCK\n";
    return 2;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (...) {
    std::cerr << "kvm-nbd: " << current_error().message << "\n";
    return 1;
  }
}
