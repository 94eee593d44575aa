#include "rbd/exclusive_lock.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "common/boot_id.hpp"
#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::rbd {
namespace {

using nlohmann::json;

// /proc/<pid>/stat: start time (field 22) and state; nullopt when the
// process does not exist.
struct ProcStat {
  char state = '?';
  std::uint64_t start = 0;
};
std::optional<ProcStat> proc_stat(std::int64_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream f(cat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(f, line)) return std::nullopt;
  const auto close = line.rfind(')');  // the command name may hold spaces and ')'
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  ProcStat st;
  rest >> st.state;
  std::string skip;
  for (int field = 4; field < 22; ++field) rest >> skip;  // fields 4..21
  rest >> st.start;
  if (!rest) return std::nullopt;
  return st;
}

std::string pid_namespace() {
  char buf[64];
  const ssize_t n = ::readlink("/proc/self/ns/pid", buf, sizeof buf - 1);
  if (n < 0) throw_errno("readlink", "/proc/self/ns/pid", errno);
  return std::string(buf, static_cast<std::size_t>(n));
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The cls lock entries of the image's header (the exclusive lock is one,
// its cookie "auto <n>"), as rbd lock ls shows them.
struct Locker {
  std::string client, cookie, addr;
};
std::vector<Locker> list_lockers(const Image& img) {
  int exclusive = 0;
  std::vector<char> tag(64), clients(256), cookies(256), addrs(256);
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::size_t tl = tag.size(), cl = clients.size(), kl = cookies.size(), al = addrs.size();
    const ssize_t n = rbd_list_lockers(img.handle(), &exclusive, tag.data(), &tl, clients.data(), &cl,
                                       cookies.data(), &kl, addrs.data(), &al);
    if (n == -ERANGE) {
      tag.resize(tl + 1), clients.resize(cl + 1), cookies.resize(kl + 1), addrs.resize(al + 1);
      continue;
    }
    if (n == -ENOENT) return {};
    check(static_cast<int>(n), "rbd_list_lockers", img.spec());
    std::vector<Locker> out;
    const char *c = clients.data(), *k = cookies.data(), *a = addrs.data();
    for (ssize_t i = 0; i < n; ++i) {
      out.push_back({c, k, a});
      c += std::strlen(c) + 1, k += std::strlen(k) + 1, a += std::strlen(a) + 1;
    }
    return out;
  }
  throw Error(ERANGE, cat("rbd_list_lockers: ", img.spec(), ": the list keeps growing"));
}

// The `rbd lock rm` command that breaks the exclusive lock held at addr;
// empty when it is not found.
std::string lock_rm_hint(const Image& img, const std::string& addr) {
  try {
    for (const Locker& l : list_lockers(img))
      if (l.addr == addr) return cat("rbd lock rm ", img.spec(), " '", l.cookie, "' ", l.client);
  } catch (const Error&) {
  }
  return {};
}

}  // namespace

std::string host_name() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (::gethostname(buf, sizeof buf - 1) < 0) throw_errno("gethostname", "", errno);
  return buf;
}

Holder this_process(const std::string& node) {
  Holder h;
  h.node = node;
  h.boot_id = this_boot_id();
  h.pid = ::getpid();
  const auto st = proc_stat(h.pid);
  if (!st) throw Error(EIO, cat("/proc/", h.pid, "/stat: cannot read this process's start time"));
  h.pid_start = st->start;
  h.pid_ns = pid_namespace();
  h.since = utc_now();
  return h;
}

std::string holder_to_json(const Holder& h) {
  return json{{"node", h.node},       {"client", h.client}, {"boot_id", h.boot_id},
              {"pid", h.pid},         {"pid_start", h.pid_start},
              {"pid_ns", h.pid_ns},   {"since", h.since}}
      .dump();
}

Holder holder_from_json(const std::string& text) {
  try {
    const json j = json::parse(text);
    Holder h;
    h.node = j.at("node").get<std::string>();
    h.client = j.at("client").get<std::string>();
    h.boot_id = j.at("boot_id").get<std::string>();
    h.pid = j.at("pid").get<std::int64_t>();
    h.pid_start = j.at("pid_start").get<std::uint64_t>();
    h.pid_ns = j.at("pid_ns").get<std::string>();
    h.since = j.at("since").get<std::string>();
    return h;
  } catch (const json::exception& e) {
    throw Error(EINVAL, cat(kHolderKey, ": malformed: ", e.what()));
  }
}

std::optional<Holder> read_holder(const Image& img) {
  const auto v = img.get_meta(kHolderKey);
  if (!v) return std::nullopt;
  try {
    return holder_from_json(*v);
  } catch (const Error& e) {
    log::warn(img.spec(), ": ignoring the holder record: ", e.what());
    return std::nullopt;
  }
}

void write_holder(Image& img, const Holder& h) { img.set_meta(kHolderKey, holder_to_json(h)); }

namespace {
// Whether `client` (a RADOS address) has a watch on the image: a client
// that died keeps the lock but loses its watch once the OSD times it out
// (osd_client_watch_timeout, 30 s by default). Unknown counts as watching.
bool watches(const Image& img, const std::string& client) {
  try {
    const auto w = img.watchers();
    return std::any_of(w.begin(), w.end(), [&](const Image::Watcher& x) { return x.addr == client; });
  } catch (const Error&) {
    return true;
  }
}
}  // namespace

std::optional<LockOwner> lock_owner(const Image& img) {
  if (img.read_only()) {
    // librbd keeps no lock state on a read-only handle: read the lock's
    // entry on the header object (librbd's exclusive lock: cookie "auto <n>").
    for (const Locker& l : list_lockers(img)) {
      if (!l.cookie.starts_with("auto ")) continue;
      LockOwner o{l.addr, {}};
      if (auto h = read_holder(img); h && h->client == o.client) o.holder = std::move(h);
      o.watching = watches(img, o.client);
      return o;
    }
    return std::nullopt;
  }
  rbd_lock_mode_t mode;
  std::vector<char*> owners(4);
  std::size_t n = owners.size();
  int r = rbd_lock_get_owners(img.handle(), &mode, owners.data(), &n);
  if (r == -ERANGE) {
    owners.resize(n);
    r = rbd_lock_get_owners(img.handle(), &mode, owners.data(), &n);
  }
  if (r == -ENOENT) return std::nullopt;  // nobody holds it
  if (r == -EINVAL)
    throw Error(EINVAL, cat("image ", img.spec(), ": cannot tell who writes to it: it has no "
                            "exclusive-lock feature (rbd feature enable ", img.spec(),
                            " exclusive-lock), or it is open read-only"));
  check(r, "rbd_lock_get_owners", img.spec());
  LockOwner o;
  if (n > 0) o.client = owners[0];
  rbd_lock_get_owners_cleanup(owners.data(), n);
  if (o.client.empty()) return std::nullopt;
  if (auto h = read_holder(img); h && h->client == o.client) o.holder = std::move(h);
  o.watching = watches(img, o.client);
  return o;
}

bool provably_dead(const LockOwner& o, const std::string& node, std::string* why) {
  const auto say = [&](bool dead, const std::string& s) {
    if (why) *why = s;
    return dead;
  };
  if (!o.holder) return say(false, "it left no rbdgw holder record");
  const Holder& h = *o.holder;
  if (node.empty() || h.node != node)
    return say(false, cat("it runs on node ", h.node, ", not on this node (", node, ")"));
  const std::string boot = this_boot_id();
  if (h.boot_id != boot) {
    // Another boot id is this node rebooted -- or another machine that
    // carries the same node name (the CLI's default is the host name), whose
    // gateway lives: only a watch that is gone tells them apart (the OSDs
    // drop a dead client's watch ~30 s after it died, long before a reboot
    // is done).
    if (!o.watching)
      return say(true, cat("node ", node, " rebooted since it took the lock (boot id ", h.boot_id,
                           ", now ", boot, ") and its client no longer watches the image"));
    return say(false, cat("it runs on node ", node, " under another boot id (", h.boot_id, ", now ",
                          boot, ") and its client still watches the image: either this node "
                          "rebooted less than ~30 s after it died (try again then) or another "
                          "machine uses the same node name (give each machine its own: --node, "
                          "$RBDGW_NODE_NAME)"));
  }
  std::string ns;
  try {
    ns = pid_namespace();
  } catch (const Error&) {
  }
  if (h.pid_ns != ns) {
    // A gateway of this node and boot in a pid namespace we cannot see into
    // (a node plugin pod that was replaced): dead once its watch is gone --
    // a live process keeps its watch, and on this node it cannot be cut off
    // from the cluster while this process is not. Breaking its lock
    // blocklists it, so even a wrong guess leaves one writer.
    if (!o.watching)
      return say(true, cat("its pid ", h.pid, " is in another pid namespace (", h.pid_ns,
                           ") of this node and boot, and its client no longer watches the image "
                           "(its process is gone)"));
    return say(false, cat("its pid ", h.pid, " is in another pid namespace (", h.pid_ns,
                          ") and its client still watches the image: if that process is gone, its "
                          "watch lapses within about 30 s; try again then"));
  }
  const auto st = proc_stat(h.pid);
  if (st && st->start == h.pid_start && st->state != 'Z' && st->state != 'X')
    return say(false, cat("its process ", h.pid, " is alive"));
  return say(true, cat("its process ", h.pid, " on this node is gone"));
}

std::string in_use_message(const Image& img, const LockOwner& o) {
  std::string m = cat("image ", img.spec(), " is in use: its exclusive lock is held by ", o.client);
  if (o.holder)
    m += cat(" on node ", o.holder->node, " since ", o.holder->since, " (rbdgw gateway pid ",
             o.holder->pid, ")");
  else
    m += ", not an rbdgw gateway";
  m += "; refusing a second writer. Unmap it there first. If that writer is known to be gone for "
       "good (its node is down and stays down), take the lock over by fencing it: ";
  const std::string hint = lock_rm_hint(img, o.client);
  m += hint.empty() ? cat("rbd lock rm ", img.spec(), " <lock-id> <locker> (see rbd lock ls ", img.spec(), ")")
                    : hint;
  m += " (this blocklists it), then try again";
  return m;
}

bool owns_lock(const Image& img) {
  int owner = 0;
  const int r = rbd_is_exclusive_lock_owner(img.handle(), &owner);
  return r == 0 && owner != 0;
}

std::optional<LockOwner> check_available(const Image& img, const std::string& node) {
  if (owns_lock(img)) return std::nullopt;
  auto o = lock_owner(img);
  if (!o) return std::nullopt;
  std::string why;
  if (!provably_dead(*o, node, &why))
    throw Error(EBUSY, cat(in_use_message(img, *o), " (not taken over: ", why, ")"));
  return o;
}

void break_lock(Image& img, const std::string& client) {
  const int r = rbd_lock_break(img.handle(), RBD_LOCK_MODE_EXCLUSIVE, client.c_str());
  if (r == -ENOENT || r == -EBUSY) return;  // not held (by it) any more
  check(r, "rbd_lock_break", cat(img.spec(), " (owner ", client, ")"));
}

Holder acquire_for_life(Image& img, const Holder& me) {
  if (img.read_only()) throw Error(EROFS, cat("image ", img.spec(), ": a read-only handle takes no lock"));
  if (!owns_lock(img)) {
    if (auto o = lock_owner(img)) {
      std::string why;
      if (!provably_dead(*o, me.node, &why))
        throw Error(EBUSY, cat(in_use_message(img, *o), " (not taken over: ", why, ")"));
      log::warn(img.spec(), ": taking over the exclusive lock of ", o->client, ": ", why);
      break_lock(img, o->client);
    }
    const int r = rbd_lock_acquire(img.handle(), RBD_LOCK_MODE_EXCLUSIVE);
    if (r == -EROFS || r == -EBUSY) {
      // Another managed owner got it in between.
      if (auto o = lock_owner(img)) throw Error(EBUSY, in_use_message(img, *o));
      throw Error(EBUSY, cat("image ", img.spec(), " is in use: another client took its exclusive lock"));
    }
    if (r == -EINVAL)
      throw Error(EINVAL, cat("image ", img.spec(), ": has no exclusive-lock feature, so a single "
                              "writer cannot be guaranteed (rbd feature enable ", img.spec(),
                              " exclusive-lock)"));
    check(r, "rbd_lock_acquire", img.spec());
  }
  if (!owns_lock(img))
    throw Error(EBUSY, cat("image ", img.spec(), ": rbd_lock_acquire returned but this client does "
                           "not own the exclusive lock"));
  const auto o = lock_owner(img);
  if (!o) throw Error(EIO, cat("image ", img.spec(), ": the exclusive lock has no owner right after acquiring it"));
  Holder h = me;
  h.client = o->client;
  write_holder(img, h);
  return h;
}

}  // namespace rbdgw::rbd
