// Stash: JSON round trip and atomic 0600 files.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "attach/attach.hpp"
#include "attach/process.hpp"
#include "common/boot_id.hpp"
#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::attach {
namespace {

using nlohmann::json;

json process_json(const ProcessRef& p) { return {{"pid", p.pid}, {"start_time", p.start_time}}; }
ProcessRef process_from(const json& j) {
  return {j.at("pid").get<pid_t>(), j.at("start_time").get<std::uint64_t>()};
}

}  // namespace

std::string stash_to_json(const Stash& s) {
  json j = {
      {"version", s.version},          {"complete", s.complete},
      {"volume_id", s.volume_id},      {"boot_id", s.boot_id},
      {"mode", to_string(s.mode)},
      {"image", s.image},              {"conf_file", s.conf_file},
      {"mon_host", s.mon_host},        {"user_id", s.user_id},
      {"keyring", s.keyring},          {"cephx_key_in_keyring", s.cephx_key_in_keyring},
      {"encrypted", s.encrypted},      {"block", s.block},
      {"read_only", s.read_only},      {"fstype", s.fstype},
      {"mount_options", s.mount_options}, {"run_dir", s.run_dir},
      {"socket", s.socket},            {"gateway_log", s.gateway_log},
      {"gateway", process_json(s.gateway)}, {"gateway_client", s.gateway_client},
      {"node", s.node},
      {"fuse", process_json(s.fuse)},
      {"fuse_file", s.fuse_file},
      {"loop_device", s.loop_device},  {"nbd_device", s.nbd_device},
      {"mapper_name", s.mapper_name},  {"device", s.device},
      {"target", s.target},            {"mounted", s.mounted},
      {"mkfs_token", s.mkfs_token},
  };
  if (!s.shared_dir.empty()) j["shared_dir"] = s.shared_dir;
  return j.dump(2) + "\n";
}

Stash stash_from_json(std::string_view text, std::string_view what) {
  try {
    json j = json::parse(text);
    Stash s;
    s.version = j.at("version").get<int>();
    if (s.version != 1) throw Error(EINVAL, cat(what, ": unsupported version ", s.version));
    s.complete = j.at("complete").get<bool>();
    s.volume_id = j.at("volume_id").get<std::string>();
    validate_volume_id(s.volume_id);
    s.boot_id = j.value("boot_id", std::string());  // absent in stashes of 0.2.0 and before
    s.mode = parse_mode(j.at("mode").get<std::string>());
    s.image = j.at("image").get<std::string>();
    s.conf_file = j.at("conf_file").get<std::string>();
    s.mon_host = j.at("mon_host").get<std::string>();
    s.user_id = j.at("user_id").get<std::string>();
    s.keyring = j.at("keyring").get<std::string>();
    s.cephx_key_in_keyring = j.at("cephx_key_in_keyring").get<bool>();
    s.encrypted = j.at("encrypted").get<bool>();
    s.block = j.at("block").get<bool>();
    s.read_only = j.at("read_only").get<bool>();
    s.fstype = j.at("fstype").get<std::string>();
    s.mount_options = j.at("mount_options").get<std::string>();
    s.run_dir = j.at("run_dir").get<std::string>();
    s.socket = j.at("socket").get<std::string>();
    s.gateway_log = j.at("gateway_log").get<std::string>();
    s.gateway = process_from(j.at("gateway"));
    s.gateway_client = j.at("gateway_client").get<std::string>();
    s.node = j.value("node", std::string());  // absent in stashes of 0.2.0 and before
    s.fuse = process_from(j.at("fuse"));
    s.fuse_file = j.at("fuse_file").get<std::string>();
    s.loop_device = j.at("loop_device").get<std::string>();
    s.nbd_device = j.at("nbd_device").get<std::string>();
    s.mapper_name = j.at("mapper_name").get<std::string>();
    s.device = j.at("device").get<std::string>();
    s.target = j.at("target").get<std::string>();
    s.mounted = j.at("mounted").get<bool>();
    s.mkfs_token = j.value("mkfs_token", std::string());  // absent in stashes of 0.1.0
    s.shared_dir = j.value("shared_dir", std::string());  // only on a shared gateway
    return s;
  } catch (const json::exception& e) {
    throw Error(EINVAL, cat(what, ": malformed: ", e.what()));
  } catch (const Error& e) {
    throw Error(e.code(), cat(what, ": ", e.what()));
  }
}

void save_stash(const Stash& s, const std::string& path) {
  const std::string data = stash_to_json(s);
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw_errno("open", tmp, errno);
  ::fchmod(fd, 0600);
  bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
            ::fsync(fd) == 0;
  int e = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) < 0) {
    e = ok ? errno : e;
    ::unlink(tmp.c_str());
    throw_errno("write stash", path, e);
  }
}

namespace {
// This boot's start in seconds since the epoch (/proc/stat btime), 0 if unknown.
long long boot_time() {
  std::ifstream f("/proc/stat");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("btime ", 0) == 0) return std::atoll(line.c_str() + 6);
  return 0;
}
}  // namespace

Stash load_stash(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw_errno("open", path, errno ? errno : ENOENT);
  std::stringstream ss;
  ss << f.rdbuf();
  Stash s = stash_from_json(ss.str(), path);
  // A stash of a version that did not record the boot id: from an earlier
  // boot if it was last written before this boot began and nothing it
  // started is alive (a clock stepped forward cannot make a live one stale).
  struct stat st;
  if (s.boot_id.empty() && ::stat(path.c_str(), &st) == 0) {
    const long long btime = boot_time();
    if (btime > 0 && st.st_mtime < btime && !alive(s.gateway) && !alive(s.fuse))
      s.boot_id = "unrecorded, written before this boot began";
  }
  return s;
}

std::string stale_reason(const Stash& s) {
  if (s.boot_id.empty()) return {};
  const std::string now = this_boot_id();
  if (s.boot_id == now) return {};
  return cat("stale: from an earlier boot (boot id ", s.boot_id, ", this boot ", now, ")");
}

std::vector<Stash> list_stashes(const std::string& dir) {
  std::vector<Stash> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const auto p = e.path() / "stash.json";
    if (!std::filesystem::exists(p, ec)) continue;
    try {
      out.push_back(load_stash(p));
    } catch (const Error& err) {
      log::warn("skipping a stash: ", err.what());
    }
  }
  std::sort(out.begin(), out.end(),
            [](const Stash& a, const Stash& b) { return a.volume_id < b.volume_id; });
  return out;
}

}  // namespace rbdgw::attach
