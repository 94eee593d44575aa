#include "attach/mount_options.hpp"

#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>

#include "common/error.hpp"

#ifndef MS_NOSYMFOLLOW
#define MS_NOSYMFOLLOW 256
#endif
#ifndef ST_NOSYMFOLLOW
#define ST_NOSYMFOLLOW 0x2000
#endif

namespace rbdgw::attach {
namespace {

constexpr unsigned long kAtime = MS_NOATIME | MS_RELATIME | MS_STRICTATIME;
constexpr unsigned long kPerMount =
    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NODIRATIME | MS_NOSYMFOLLOW | kAtime;

// mount(8)'s filesystem-independent options: the flag, and whether the
// option sets it (else clears it). The atime modes are handled apart.
struct Generic {
  std::string_view name;
  unsigned long flag;
  bool set;
};
constexpr std::array kGeneric{
    Generic{"ro", MS_RDONLY, true},          Generic{"rw", MS_RDONLY, false},
    Generic{"nodev", MS_NODEV, true},        Generic{"dev", MS_NODEV, false},
    Generic{"nosuid", MS_NOSUID, true},      Generic{"suid", MS_NOSUID, false},
    Generic{"noexec", MS_NOEXEC, true},      Generic{"exec", MS_NOEXEC, false},
    Generic{"nodiratime", MS_NODIRATIME, true}, Generic{"diratime", MS_NODIRATIME, false},
    Generic{"lazytime", MS_LAZYTIME, true},  Generic{"nolazytime", MS_LAZYTIME, false},
    Generic{"sync", MS_SYNCHRONOUS, true},   Generic{"async", MS_SYNCHRONOUS, false},
    Generic{"dirsync", MS_DIRSYNC, true},    Generic{"silent", MS_SILENT, true},
    Generic{"loud", MS_SILENT, false},       Generic{"iversion", MS_I_VERSION, true},
    Generic{"noiversion", MS_I_VERSION, false}, Generic{"nosymfollow", MS_NOSYMFOLLOW, true},
    Generic{"symfollow", MS_NOSYMFOLLOW, false},
};

// Atime modes, mutually exclusive, the last one wins. "atime" and
// "nostrictatime" go back to the kernel's default (relatime);
// "norelatime" means strictatime (the kernel's only mode without relatime
// that is not noatime).
struct Atime {
  std::string_view name;
  unsigned long flag;  // 0: the kernel's default
};
constexpr std::array kAtimeModes{
    Atime{"noatime", MS_NOATIME},        Atime{"relatime", MS_RELATIME},
    Atime{"strictatime", MS_STRICTATIME}, Atime{"norelatime", MS_STRICTATIME},
    Atime{"atime", 0},                    Atime{"nostrictatime", 0},
};

// Read by mount(8) alone (fstab, helpers): accepted and dropped.
bool userspace_only(std::string_view o) {
  static constexpr std::array<std::string_view, 6> kNames{"defaults", "auto",    "noauto",
                                                          "nofail",   "_netdev", "nouser"};
  return std::find(kNames.begin(), kNames.end(), o) != kNames.end() || o.starts_with("x-") ||
         o.starts_with("comment=");
}

// The filesystems' own options (the kernel's parameter tables of ext4 and
// xfs): a name alone, or a name taking "=value".
struct FsTable {
  std::vector<std::string_view> flags, valued;
};
const FsTable& fs_table(std::string_view fstype) {
  static const FsTable ext4{
      {"bsddf", "minixdf", "grpid", "bsdgroups", "nogrpid", "sysvgroups", "nouid32", "debug",
       "oldalloc", "orlov", "user_xattr", "acl", "norecovery", "noload", "bh", "nobh",
       "journal_checksum", "nojournal_checksum", "journal_async_commit", "abort", "grpquota",
       "quota", "noquota", "usrquota", "prjquota", "barrier", "nobarrier", "i_version", "dax",
       "delalloc", "nodelalloc", "warn_on_error", "nowarn_on_error", "mblk_io_submit",
       "nomblk_io_submit", "block_validity", "noblock_validity", "auto_da_alloc",
       "noauto_da_alloc", "dioread_nolock", "nodioread_nolock", "dioread_lock", "discard",
       "nodiscard", "init_itable", "noinit_itable", "inlinecrypt", "nombcache", "no_mbcache",
       "prefetch_block_bitmaps", "no_prefetch_block_bitmaps", "nocheck", "reservation",
       "noreservation", "seclabel"},
      {"resgid", "resuid", "sb", "errors", "commit", "min_batch_time", "max_batch_time",
       "journal_dev", "journal_path", "data", "data_err", "usrjquota", "grpjquota", "jqfmt",
       "barrier", "dax", "stripe", "debug_want_extra_isize", "inode_readahead_blks",
       "journal_ioprio", "auto_da_alloc", "init_itable", "max_dir_size_kb", "mb_optimize_scan",
       "check", "journal", "context", "fscontext", "defcontext", "rootcontext"}};
  static const FsTable xfs{
      {"wsync", "noalign", "swalloc", "nouuid", "grpid", "nogrpid", "bsdgroups", "sysvgroups",
       "norecovery", "inode64", "inode32", "largeio", "nolargeio", "filestreams", "quota",
       "noquota", "usrquota", "grpquota", "prjquota", "uquota", "gquota", "pquota",
       "uqnoenforce", "gqnoenforce", "pqnoenforce", "qnoenforce", "discard", "nodiscard", "dax",
       "lifetime", "nolifetime", "attr2", "noattr2", "ikeep", "noikeep", "seclabel"},
      {"logbufs", "logbsize", "logdev", "rtdev", "allocsize", "sunit", "swidth", "dax",
       "max_open_zones", "max_atomic_write", "context", "fscontext", "defcontext",
       "rootcontext"}};
  if (fstype == "ext4") return ext4;
  if (fstype == "xfs") return xfs;
  throw Error(EINVAL, cat("mount options: unsupported filesystem type '", fstype, "' (ext4 or xfs)"));
}

bool contains(const std::vector<std::string_view>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// True unless value is a number the kernel reads as nonzero: ext4 reads
// barrier=N with kstrtouint(base 0), so "00", "0x0" and "+0" are 0 too.
bool kernel_zero(std::string_view value) {
  if (value.starts_with('+')) value.remove_prefix(1);
  int base = 10;
  if (value.size() > 1 && value[0] == '0' && (value[1] == 'x' || value[1] == 'X')) {
    base = 16;
    value.remove_prefix(2);
  } else if (value.size() > 1 && value[0] == '0') {
    base = 8;
  }
  if (value.empty()) return true;
  bool nonzero = false;
  for (char ch : value) {
    const int d = ch >= '0' && ch <= '9' ? ch - '0'
                  : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                  : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                           : 99;
    if (d >= base) return true;  // not a number: refused rather than guessed
    nonzero |= d != 0;
  }
  return !nonzero;
}

// Why a filesystem option the filesystem knows is refused; empty: allowed.
std::string refusal(std::string_view key, std::string_view value, bool has_value, bool read_only) {
  if (key == "nobarrier" || (key == "barrier" && has_value && kernel_zero(value)))
    return "turns off cache flushes: an fsync would not reach the gateway, so acknowledged "
           "writes could be lost";
  if (key == "journal_dev" || key == "journal_path" || key == "logdev" || key == "rtdev")
    return "names a device of the host outside the volume";
  if ((key == "norecovery" || key == "noload") && !read_only)
    return "skips the journal replay; allowed only on a read-only mount";
  // The node does not trust what a volume holds: damage written into the
  // image (by a bug, or by whoever else can write it) must cost that mount,
  // never the node's kernel.
  if (key == "errors" && value == "panic")
    return "panics the node's kernel on a filesystem error in the volume; use errors=remount-ro";
  if (key == "abort") return "a debugging option that aborts the journal, as if on an error (abort)";
  return {};
}

// Splits at commas outside double quotes.
std::vector<std::string> split(std::string_view list) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char ch : list) {
    if (ch == '"') quoted = !quoted;
    if (ch == ',' && !quoted) {
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(std::move(cur));
  if (quoted) throw Error(EINVAL, cat("mount options '", list, "': unbalanced double quote"));
  return out;
}

}  // namespace

MountOptions parse_mount_options(std::string_view list, std::string_view fstype, bool read_only) {
  MountOptions m;
  if (list.empty()) return m;
  const FsTable& table = fs_table(fstype);
  std::vector<std::string> unknown, refused;
  bool ro = read_only;
  for (const std::string& o : split(list))
    if (o == "ro") ro = true;
    else if (o == "rw") ro = read_only;
  for (const std::string& o : split(list)) {
    if (o.empty()) {
      refused.push_back("an empty option (two commas in a row, or one at an end)");
      continue;
    }
    if (o.find_first_of(" \t\n\r") != std::string::npos && o.find('"') == std::string::npos) {
      refused.push_back(cat("'", o, "': holds white space"));
      continue;
    }
    if (auto g = std::find_if(kGeneric.begin(), kGeneric.end(), [&](const Generic& x) { return x.name == o; });
        g != kGeneric.end()) {
      (g->set ? m.set : m.cleared) |= g->flag;
      (g->set ? m.cleared : m.set) &= ~g->flag;
      m.given.push_back(o);
      continue;
    }
    if (auto a = std::find_if(kAtimeModes.begin(), kAtimeModes.end(), [&](const Atime& x) { return x.name == o; });
        a != kAtimeModes.end()) {
      m.set &= ~kAtime;
      m.cleared |= kAtime;
      if (a->flag) {
        m.set |= a->flag;
        m.cleared &= ~a->flag;
      }
      m.given.push_back(o);
      continue;
    }
    if (userspace_only(o)) {
      m.given.push_back(o);
      continue;
    }
    const auto eq = o.find('=');
    const bool has_value = eq != std::string::npos;
    const std::string_view key = std::string_view(o).substr(0, eq);
    const std::string_view value = has_value ? std::string_view(o).substr(eq + 1) : std::string_view{};
    if (!(has_value ? contains(table.valued, key) : contains(table.flags, key))) {
      unknown.push_back(o);
      continue;
    }
    if (const std::string why = refusal(key, value, has_value, ro); !why.empty()) {
      refused.push_back(cat("'", o, "': ", why));
      continue;
    }
    m.data += (m.data.empty() ? "" : ",") + o;
    m.given.push_back(o);
  }
  std::string why;
  if (!unknown.empty()) {
    why = cat(unknown.size() == 1 ? "unknown mount option '" : "unknown mount options '", unknown[0]);
    for (std::size_t i = 1; i < unknown.size(); ++i) why += cat("', '", unknown[i]);
    why += cat("' (neither a generic mount option nor one of ", fstype, "'s)");
  }
  for (const std::string& r : refused)
    why += cat(why.empty() ? "" : "; ", "mount option ", r);
  // mount(2) reads one page of data and cuts it at PAGE_SIZE - 1 bytes:
  // the filesystem would get a cut list ("barrier=01" cut to "barrier=0").
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  if (why.empty() && m.data.size() > page - 1)
    why = cat("the filesystem options are ", m.data.size(), " bytes, longer than the ", page - 1,
              " that mount(2) passes on (it would cut them)");
  if (!why.empty()) throw Error(EINVAL, cat("mount options '", list, "' for ", fstype, ": ", why));
  return m;
}

unsigned long MountOptions::stage_flags(bool read_only) const {
  unsigned long f = set;
  if (!(cleared & MS_NODEV)) f |= MS_NODEV;
  if (!(cleared & MS_NOSUID)) f |= MS_NOSUID;
  if (read_only) f |= MS_RDONLY;
  return f;
}

unsigned long MountOptions::per_mount_set() const { return set & kPerMount; }
unsigned long MountOptions::per_mount_cleared() const { return cleared & kPerMount; }
bool MountOptions::atime_given() const { return ((set | cleared) & kAtime) != 0; }
bool MountOptions::asks_read_only() const { return (set & MS_RDONLY) != 0; }

unsigned long mount_flags_of(const std::string& path) {
  struct statvfs s{};
  if (::statvfs(path.c_str(), &s) != 0) throw_errno("statvfs", path, errno);
  unsigned long f = 0;
  if (s.f_flag & ST_RDONLY) f |= MS_RDONLY;
  if (s.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (s.f_flag & ST_NODEV) f |= MS_NODEV;
  if (s.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (s.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (s.f_flag & ST_NOSYMFOLLOW) f |= MS_NOSYMFOLLOW;
  if (s.f_flag & ST_NOATIME) f |= MS_NOATIME;
  else if (s.f_flag & ST_RELATIME) f |= MS_RELATIME;
  else f |= MS_STRICTATIME;
  return f;
}

}  // namespace rbdgw::attach
