// rbd::Cluster::check_in_child against the real test cluster ($CEPH_CONF):
// the same answers as Cluster::connect (a reachable cluster, a wrong key, an
// unreachable monitor), and this process left with no thread of librados'
// (nbdkit's .get_ready must stay single-threaded: it reopens fds 0 and 1
// right after).
#include <gtest/gtest.h>

#include <dirent.h>

#include <cstdlib>
#include <string>

#include "common/error.hpp"
#include "rbd/cluster.hpp"

using namespace rbdgw;
using namespace rbdgw::rbd;

namespace {

int threads_of_this_process() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

ClusterOptions test_cluster() {
  ClusterOptions o;
  const char* conf = std::getenv("CEPH_CONF");
  if (conf) o.conf_file = conf;
  o.connect_timeout = std::chrono::seconds(10);
  return o;
}

}  // namespace

TEST(ClusterCheckInChild, AReachableClusterPassesAndLeavesNoThreadHere) {
  ASSERT_NE(std::getenv("CEPH_CONF"), nullptr) << "needs the test cluster ($CEPH_CONF)";
  ASSERT_EQ(threads_of_this_process(), 1);
  EXPECT_NO_THROW(Cluster::check_in_child(test_cluster()));
  EXPECT_EQ(threads_of_this_process(), 1);
}

TEST(ClusterCheckInChild, AWrongKeyIsRefusedAsConnectRefusesIt) {
  ClusterOptions o = test_cluster();
  o.key = SecretBuffer(std::string_view("AQBnOWxnAAAAABAAk0pVsyf5lk6T9UBETpyDrA=="));
  try {
    Cluster::check_in_child(o);
    FAIL() << "a wrong key passed the check";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == EPERM || e.code() == EACCES) << e.code() << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find("authentication failed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(threads_of_this_process(), 1);
}

TEST(ClusterCheckInChild, AnUnreachableMonitorIsNamedWithTheCause) {
  ClusterOptions o;
  o.mon_host = "127.0.0.1:9";
  o.connect_timeout = std::chrono::seconds(2);
  try {
    Cluster::check_in_child(o);
    FAIL() << "an unreachable monitor passed the check";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.code(), ETIMEDOUT) << m;
    EXPECT_NE(m.find("127.0.0.1:9"), std::string::npos) << m;
    EXPECT_NE(m.find("unreachable"), std::string::npos) << m;
  }
  EXPECT_EQ(threads_of_this_process(), 1);
}

TEST(ClusterCheckInChild, AMissingConfFileIsNamed) {
  ClusterOptions o;
  o.conf_file = "/nonexistent/ceph.conf";
  try {
    Cluster::check_in_child(o);
    FAIL() << "a missing conf file passed the check";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ENOENT) << e.what();
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ceph.conf"), std::string::npos) << e.what();
  }
}

// Last (librados' threads may outlive the shutdown): connect() itself, for
// contrast, runs threads in this process, which is what the check avoids.
TEST(ClusterCheckInChild, ZConnectInThisProcessWouldStartThreads) {
  const Cluster c = Cluster::connect(test_cluster());
  EXPECT_GT(threads_of_this_process(), 1);
}
