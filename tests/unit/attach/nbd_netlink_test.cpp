// lib/attach's view of an NBD device's connection (nbd_server_connected),
// against the host kernel's own socket table (sock_diag for unix sockets):
// no nbd module needed, the "kernel client" is an ordinary unix socket.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "attach/nbd_netlink.hpp"
#include "common/error.hpp"

using namespace rbdgw;
using namespace rbdgw::attach;

namespace {

struct Sockets {
  std::string dir, path;
  int listener = -1, client = -1, server = -1;
  Sockets() {
    char tmpl[] = "/tmp/rbdgw-nbd-netlink-test.XXXXXX";
    dir = ::mkdtemp(tmpl);
    path = dir + "/gw.sock";
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listener, 4), 0);
    client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    EXPECT_GE(server, 0);
  }
  ~Sockets() {
    for (int fd : {listener, client, server})
      if (fd >= 0) ::close(fd);
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
  }
};

}  // namespace

TEST(NbdServerConnected, UpWhileBothEndsAreOpen) {
  Sockets s;
  EXPECT_TRUE(nbd_server_connected(s.path));
  EXPECT_FALSE(nbd_server_connected(s.path + ".other"));
}

// What the kernel does when it gives a device's connection up.
TEST(NbdServerConnected, DownOnceTheClientShutItDownThoughTheServerLives) {
  Sockets s;
  ASSERT_EQ(::shutdown(s.client, SHUT_RDWR), 0);
  EXPECT_FALSE(nbd_server_connected(s.path));
}

// What a dead gateway looks like: its end of the connection is gone.
TEST(NbdServerConnected, DownOnceTheServerEndIsClosed) {
  Sockets s;
  ::close(s.server);
  s.server = -1;
  EXPECT_FALSE(nbd_server_connected(s.path));
}

TEST(NbdServerConnected, AListenerAloneIsNotAConnection) {
  Sockets s;
  ::close(s.server);
  ::close(s.client);
  s.server = s.client = -1;
  EXPECT_FALSE(nbd_server_connected(s.path));
}

TEST(NbdConnect, NegativeIoTimeoutIsEINVAL) {
  try {
    NbdOptions o;
    o.io_timeout = std::chrono::seconds(-1);
    nbd_connect("/nonexistent.sock", o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EINVAL) << e.what();
  }
}
