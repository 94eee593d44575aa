// lib/attach/gateway_host against the real kernel: spawn_detached through a
// gateway host serving in this process (another thread), the way rbdgw-csi
// reaches rbdgw-gateway-host. No cluster.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "attach/gateway_host.hpp"
#include "attach/process.hpp"
#include "common/error.hpp"

namespace fs = std::filesystem;
using namespace rbdgw;
using namespace rbdgw::attach;
using namespace std::chrono_literals;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string wait_for(const fs::path& p) {
  for (int i = 0; i < 200 && (!fs::exists(p) || fs::file_size(p) == 0); ++i)
    std::this_thread::sleep_for(25ms);
  return slurp(p);
}

class GatewayHost : public ::testing::Test {
 protected:
  fs::path dir;
  std::string sock;
  volatile int stop = 0;
  std::thread server;

  void SetUp() override {
    std::string t = (fs::temp_directory_path() / "rbdgw-gateway-host-test.XXXXXX").string();
    dir = ::mkdtemp(t.data());
    sock = (dir / "gh.sock").string();
    server = std::thread([this] { serve_gateway_host(sock, stop); });
    for (int i = 0; i < 100 && !fs::exists(sock); ++i) std::this_thread::sleep_for(10ms);
    ASSERT_TRUE(fs::exists(sock));
    ::setenv("RBDGW_GATEWAY_HOST", sock.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("RBDGW_GATEWAY_HOST");
    stop = 1;
    if (server.joinable()) server.join();
    fs::remove_all(dir);
  }
};

TEST_F(GatewayHost, StartsTheDaemonWithItsSecretFdLogAndPidFile) {
  EXPECT_EQ(fs::status(sock).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  const std::string secret = "s3cr3t-bytes\n";
  const int fd = secret_pipe(SecretBuffer(secret.data(), secret.size()));
  const std::string out = (dir / "out").string();
  const ProcessRef p = spawn_detached(
      {"sh", "-c", "cat <&3 >" + out + "; echo logged; exec sleep 30"},
      (dir / "log").string(), {{fd, 3}}, (dir / "pid").string());
  ::close(fd);
  struct Stop {
    ProcessRef p;
    ~Stop() { stop_process(p, 1s); }
  } guard{p};
  EXPECT_TRUE(alive(p));
  EXPECT_EQ(wait_for(out), secret);
  EXPECT_EQ(wait_for(dir / "log"), "logged\n");
  EXPECT_EQ(std::stoi(wait_for(dir / "pid")), p.pid);
  // Not our child, and in its own session.
  EXPECT_NE(::getpgid(p.pid), ::getpgid(0));
  EXPECT_EQ(::waitpid(p.pid, nullptr, WNOHANG), -1);
  stop_process(p, 1s);
  EXPECT_FALSE(alive(p));
}

TEST_F(GatewayHost, PassesTheCallersEnvironment) {
  ::setenv("RBDGW_GATEWAY_HOST_TEST_MARKER", "marker-42", 1);
  const std::string out = (dir / "env").string();
  const ProcessRef p = spawn_detached({"sh", "-c", "echo $RBDGW_GATEWAY_HOST_TEST_MARKER >" + out},
                                      (dir / "log").string());
  ::unsetenv("RBDGW_GATEWAY_HOST_TEST_MARKER");
  EXPECT_EQ(wait_for(out), "marker-42\n");
  stop_process(p, 1s);
}

TEST_F(GatewayHost, AnExecFailureComesBackWithItsErrno) {
  const fs::path prog = dir / "not-executable";
  std::ofstream(prog) << "#!/bin/sh\n";
  fs::permissions(prog, fs::perms::owner_read);
  try {
    // resolve() in the caller accepts a path with a slash; execve fails in
    // the host's child.
    spawn_detached({prog.string()}, (dir / "log").string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EACCES) << e.what();
    EXPECT_NE(std::string(e.what()).find(prog.string()), std::string::npos) << e.what();
  }
}

TEST_F(GatewayHost, ANonRootPeerIsRefused) {
  // Past the 0600 socket (which alone keeps non-root out): the host's own
  // SO_PEERCRED check must refuse it too.
  fs::permissions(dir, fs::perms::owner_all | fs::perms::others_exec | fs::perms::group_exec);
  fs::permissions(sock, fs::perms::all);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipefd[0]);
    int code = 1;
    if (::setgid(65534) == 0 && ::setuid(65534) == 0) {
      try {
        gateway_host_spawn(sock, "/bin/true", {"true"}, {}, 2, "stderr", -1, {}, 1s);
        code = 2;
      } catch (const Error& e) {
        code = e.code() == EPERM ? 0 : 3;
      }
    }
    (void)!::write(pipefd[1], &code, sizeof code);
    _exit(0);
  }
  ::close(pipefd[1]);
  int code = -1;
  ASSERT_EQ(::read(pipefd[0], &code, sizeof code), static_cast<ssize_t>(sizeof code));
  ::close(pipefd[0]);
  ::waitpid(child, nullptr, 0);
  EXPECT_EQ(code, 0) << "1: setuid failed, 2: served, 3: another error than EPERM";
}

TEST_F(GatewayHost, AHostThatIsNotThereIsAnErrorNamingItsSocketNeverAFallback) {
  const std::string absent = (dir / "absent.sock").string();
  ::setenv("RBDGW_GATEWAY_HOST", absent.c_str(), 1);
  const fs::path out = dir / "ran";
  const auto t0 = std::chrono::steady_clock::now();
  try {
    spawn_detached({"sh", "-c", "touch " + out.string()}, (dir / "log").string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ENOENT) << e.what();
    EXPECT_NE(std::string(e.what()).find(absent), std::string::npos) << e.what();
  }
  // It waited for a host being restarted (10 s), then gave up.
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 9s);
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(fs::exists(out)) << "the command ran without its host";
}

TEST_F(GatewayHost, AStaleSocketFileIsReplacedAndALiveHostIsNot) {
  // A second host on the same path while the first serves: refused.
  volatile int stop2 = 0;
  EXPECT_THROW(serve_gateway_host(sock, stop2), Error);
  // The first one still serves.
  const ProcessRef p = spawn_detached({"sleep", "30"}, (dir / "log").string());
  EXPECT_TRUE(alive(p));
  stop_process(p, 1s);
}

}  // namespace
