// Malformed LUKS2 headers through lib/luks's inspection: every case of the
// corpus that tests/e2e/luks2-filter/make-malformed-headers.py writes (huge
// keyslot areas, absurd numbers, offsets past the device, truncation, bad
// JSON, wrong checksums, a re-encryption in progress, an empty source) is
// read by unlock() and by Header::read() in a child process whose address
// space is limited to 512 MiB: the child never crashes, its peak RSS stays
// under 64 MiB, and both calls fail with the corpus's expected message (or
// succeed where the corpus says OK).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "common/error.hpp"
#include "luks/header.hpp"
#include "../crypto/test_util.hpp"

namespace rbdgw::luks {
namespace {

constexpr rlim_t kAddressSpaceLimit = rlim_t{512} << 20;
constexpr long kRssLimitKib = 64 << 10;

// A Reader on a file, so that a large sparse volume is never read whole;
// like the product's readers (rbd::raw_reader, the filter's), it reads 0
// bytes at any offset past the end.
Reader file_reader(int fd) {
  return [fd](std::span<std::uint8_t> buf, std::uint64_t off) -> std::size_t {
    const off_t size = ::lseek(fd, 0, SEEK_END);
    if (size < 0) throw_errno("lseek", "corpus file", errno);
    if (off >= static_cast<std::uint64_t>(size)) return 0;
    for (;;) {
      const ssize_t r = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
      if (r >= 0) return static_cast<std::size_t>(r);
      if (errno != EINTR) throw_errno("pread", "corpus file", errno);
    }
  };
}

// What unlock() and Header::read() say about `path`: "OK" or the error.
std::string inspect(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + path;
  std::string out;
  try {
    unlock(file_reader(fd), "corpus/volume", SecretBuffer(std::string_view("correct horse")));
    out = "OK";
  } catch (...) {
    out = current_error().message;
  }
  try {
    Header::read(file_reader(fd), "corpus/volume");
    out += "\nOK";
  } catch (...) {
    out += "\n" + current_error().message;
  }
  ::close(fd);
  return out;
}

struct ChildResult {
  int status = 0;
  long max_rss_kib = 0;
  std::string output;
};

// Runs inspect(path) in a child limited to kAddressSpaceLimit.
ChildResult inspect_in_child(const std::string& path) {
  int p[2];
  if (::pipe(p) != 0) throw std::runtime_error("pipe");
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::close(p[0]);
    const rlimit lim{kAddressSpaceLimit, kAddressSpaceLimit};
    ::setrlimit(RLIMIT_AS, &lim);
    const std::string out = inspect(path);
    const char* b = out.data();
    std::size_t n = out.size();
    while (n > 0) {
      const ssize_t w = ::write(p[1], b, n);
      if (w <= 0) break;
      b += w;
      n -= static_cast<std::size_t>(w);
    }
    ::_exit(0);
  }
  ::close(p[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    r.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  rusage ru{};
  while (::wait4(pid, &r.status, 0, &ru) < 0 && errno == EINTR) {
  }
  r.max_rss_kib = ru.ru_maxrss;
  return r;
}

TEST(MalformedHeaders, BoundedMemoryAndAClearErrorForEachCase) {
  test::TempDir dir;
  const std::string key = dir / "key", corpus = dir / "corpus";
  test::write_file(key, std::string("correct horse"));
  ASSERT_EQ(0, test::run("/usr/bin/python3 " RBDGW_TEST_SOURCE_DIR
                         "/../../e2e/luks2-filter/make-malformed-headers.py " + corpus + " " +
                         key));
  std::ifstream tsv(corpus + "/cases.tsv");
  ASSERT_TRUE(tsv) << "no cases.tsv";
  int cases = 0;
  for (std::string line; std::getline(tsv, line);) {
    std::istringstream fields(line);
    std::string name, filter_expect, lib_expect;
    std::getline(fields, name, '\t');
    std::getline(fields, filter_expect, '\t');
    std::getline(fields, lib_expect, '\t');
    if (lib_expect == "-") continue;
    ++cases;
    SCOPED_TRACE(name);
    const ChildResult r = inspect_in_child(corpus + "/" + name);
    ASSERT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0)
        << name << ": the child crashed (status " << r.status << "); output: " << r.output;
    EXPECT_LT(r.max_rss_kib, kRssLimitKib) << name << ": peak RSS " << r.max_rss_kib << " KiB";
    const auto nl = r.output.find('\n');
    ASSERT_NE(std::string::npos, nl) << name << ": incomplete output: " << r.output;
    const std::string from_unlock = r.output.substr(0, nl), from_read = r.output.substr(nl + 1);
    for (const std::string* msg : {&from_unlock, &from_read}) {
      const char* call = msg == &from_unlock ? "unlock" : "Header::read";
      if (lib_expect == "OK") {
        EXPECT_EQ("OK", *msg) << name << ": " << call << " refused it";
      } else {
        EXPECT_TRUE(std::regex_search(*msg, std::regex(lib_expect)))
            << name << ": " << call << " said '" << *msg << "', expected '" << lib_expect << "'";
        EXPECT_EQ(0u, msg->find("corpus/volume: "))
            << name << ": " << call << " did not name the object: '" << *msg << "'";
      }
    }
  }
  EXPECT_GE(cases, 25);
}

}  // namespace
}  // namespace rbdgw::luks
