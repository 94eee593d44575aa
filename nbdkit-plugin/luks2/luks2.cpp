// nbdkit filter `luks2`: serves the decrypted data segment of a LUKS2 volume
// (aes-xts-plain64, byte-compatible with dm-crypt) that the plugin below
// exports.
//
// A thin layer of nbdkit callbacks: the header is unlocked by lib/luks
// (libcryptsetup on an in-memory copy) and the data path is luks::CryptIO,
// which maps requests of any alignment to whole-sector ciphertext I/O on
// the export below.
//
// The first connection reads the header through the plugin below and
// unlocks it (one PBKDF run); later connections reuse that unlocked volume
// as long as the first 4 KiB of the export below (the primary binary header,
// which carries the header's sequence id and checksum) are unchanged, so
// multi-conn clients share one volume and its RMW locks. A rejected header
// or passphrase fails that connection with a clear error; nbdkit keeps
// running and every later connection is refused the same way.
//
// passphrase-store=DIR (a shared gateway: `nbdkit rbd exports-dir=...`, one
// export per volume): the passphrase of export N is secret "passphrase" of
// volume N in the secret store DIR (attach::load_secret, with all its
// checks), read at the export's first open, so exports added later need no
// restart. The unlocked volume is kept per export name (never shared between
// exports, even with identical headers) and shared by that export's
// connections. It is also kept with no connection open, as long as the
// export's store entry is the file it was unlocked with (the volume is
// mapped), so that a client which closes idle connections (rbdgw-fuse
// --idle-disconnect) costs no PBKDF run per reconnect; a sweeper thread
// drops it, key wiped, within kSweep of the entry's removal (unmap) or
// replacement, and a connection still open keeps it until it closes. The
// passphrase is wiped right after the unlock. A missing, refused or wrong
// passphrase, or a name that is no volume id, fails only that connection's
// open and is tried afresh at the next one (a wrong passphrase only once its
// store entry or the header changed: no PBKDF run per retry).
//
// Thread model: the filter adds no restriction (the plugin's model holds).
// PBKDF runs (libcryptsetup, which is not known to be thread-safe, and
// argon2id's memory) are serialised; I/O on unlocked volumes is not.
#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "attach/attach.hpp"
#include "attach/secret_store.hpp"
#include "common/error.hpp"
#include "common/log.hpp"
#include "crypto/secret.hpp"
#include "crypto/xts.hpp"
#include "luks/crypt_io.hpp"
#include "luks/header.hpp"
#include "luks/layout.hpp"

// -D luks2.verbose=1: debug messages from lib/ (libcryptsetup included).
extern "C" NBDKIT_DLL_PUBLIC int luks2_debug_verbose;
int luks2_debug_verbose = 0;

namespace {

using namespace rbdgw;

// Bytes of the export below that identify an unlocked header.
constexpr std::size_t fingerprint_size = 4096;

SecretBuffer passphrase;
bool passphrase_given = false;  // passphrase= or key-file= seen
std::string passphrase_store;   // passphrase-store=DIR; empty: one passphrase
bool allow_discards = false;

// An unlocked volume, shared by the connections whose export shows the same
// header.
struct Volume {
  Volume(std::vector<std::uint8_t> fp, const luks::Segment& s, crypto::XtsSectorCipher cipher)
      : fingerprint(std::move(fp)), segment(s), io(std::move(cipher), s.offset) {}
  std::vector<std::uint8_t> fingerprint;
  luks::Segment segment;
  luks::CryptIO io;
};
std::mutex volume_mu;
std::shared_ptr<Volume> last_volume;  // guarded by volume_mu

// The identity of a store file: its inode, size and times.
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  std::int64_t mtime_s = 0, mtime_ns = 0, ctime_s = 0, ctime_ns = 0;
  bool operator==(const FileId&) const = default;
};

// passphrase-store mode: the unlocked volume of each export, by name. A slot
// lives while a connection of its export holds it or it keeps the volume
// (copies are taken under slots_mu only, so use_count() == 1 there means
// only the map holds it).
struct Slot {
  std::mutex mu;              // one unlock at a time per export
  std::weak_ptr<Volume> vol;  // guarded by mu; owned by the connections
  // guarded by mu: the volume kept with no connection open, while the
  // export's store entry is still unlocked_with (the file it was unlocked
  // with); see the header comment.
  std::shared_ptr<Volume> kept;
  std::optional<FileId> unlocked_with;
  // guarded by mu: SHA-256(salt || passphrase) of the entry it was unlocked
  // with (salt random per unlock), so that a reuse checks the entry's
  // content, read with all of load_secret's checks, not its identity alone.
  std::array<std::uint8_t, 32> salt{}, digest{};
};

std::array<std::uint8_t, 32> salted_digest(const std::array<std::uint8_t, 32>& salt,
                                           const SecretBuffer& pw) {
  std::array<std::uint8_t, 32> out{};
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> c(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!c || EVP_DigestInit_ex(c.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(c.get(), salt.data(), salt.size()) != 1 ||
      EVP_DigestUpdate(c.get(), pw.data(), pw.size()) != 1 ||
      EVP_DigestFinal_ex(c.get(), out.data(), nullptr) != 1)
    throw Error(EIO, "SHA-256 failed");
  return out;
}
std::mutex slots_mu;
std::map<std::string, std::shared_ptr<Slot>> slots;  // guarded by slots_mu

// Held around every PBKDF run (luks::unlock).
std::mutex unlock_mu;

// passphrase-store mode: the wrong passphrases, by export: the header
// (fingerprint) and the store file (identity) it was found wrong for. A
// client retrying the open (rbdgw-fuse reconnects every 0.5 s) is refused
// the same way without a PBKDF run under unlock_mu, which every other
// export's first open waits for, until the store entry or the header
// changes. Nothing secret is kept (no byte of the passphrase).
struct WrongPassphrase {
  std::vector<std::uint8_t> fp;
  FileId file;
  std::string message;
};
constexpr std::size_t max_wrong = 1024;  // names that reached a PBKDF run
std::mutex wrong_mu;
std::map<std::string, WrongPassphrase> wrong;  // guarded by wrong_mu

struct Handle {
  std::string object;  // the export below, for messages
  std::string name;    // passphrase-store mode: the export (volume id)
  std::shared_ptr<Slot> slot;
  std::shared_ptr<Volume> vol;
  std::uint64_t size = 0;  // of the decrypted segment
};

// The export name for messages: printable ASCII, '\xNN' otherwise, at most
// 256 bytes (a client chooses it).
std::string printable(std::string_view name) {
  std::string out;
  for (unsigned char c : name.substr(0, 256)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  if (name.size() > 256) out += "...";
  return out;
}

// Drops the map's slot of export name when nobody else holds it and it
// keeps no volume.
void release_slot(const std::string& name) {
  std::lock_guard lock(slots_mu);
  auto it = slots.find(name);
  if (it == slots.end() || it->second.use_count() != 1) return;
  std::lock_guard slot_lock(it->second->mu);
  if (!it->second->kept) slots.erase(it);
}

// The identity of export name's store file, or none (missing, unreadable).
std::optional<FileId> store_file_id(const std::string& name) {
  struct stat st;
  const std::string path = cat(passphrase_store, "/", name, ".passphrase");
  if (::lstat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                st.st_ctim.tv_sec, st.st_ctim.tv_nsec};
}

// passphrase-store mode: every kSweep, drops each kept volume whose store
// entry is gone or was replaced (its key is wiped with the last reference),
// and the slots left empty. Started at the first unlock, stopped at unload.
constexpr auto kSweep = std::chrono::seconds(1);
std::mutex sweeper_mu;
std::condition_variable sweeper_cv;
bool sweeper_stop = false;  // guarded by sweeper_mu
std::thread sweeper;        // guarded by sweeper_mu

void sweep_kept() {
  std::vector<std::shared_ptr<Volume>> dropped;  // destroyed outside the locks
  std::lock_guard lock(slots_mu);
  for (auto it = slots.begin(); it != slots.end();) {
    Slot& slot = *it->second;
    bool empty = false;
    {
      // A slot being unlocked (which may take long: a slow image, a PBKDF
      // run) is left for the next sweep; waiting for it here, under
      // slots_mu, would hold up every other export's open.
      std::unique_lock slot_lock(slot.mu, std::try_to_lock);
      if (!slot_lock.owns_lock()) {
        ++it;
        continue;
      }
      if (slot.kept && store_file_id(it->first) != slot.unlocked_with)
        dropped.push_back(std::move(slot.kept));  // leaves slot.kept empty
      empty = !slot.kept && it->second.use_count() == 1;
    }
    it = empty ? slots.erase(it) : std::next(it);
  }
}

void start_sweeper() {
  std::lock_guard lock(sweeper_mu);
  if (sweeper.joinable() || sweeper_stop) return;
  sweeper = std::thread([] {
    std::unique_lock lock(sweeper_mu);
    while (!sweeper_cv.wait_for(lock, kSweep, [] { return sweeper_stop; })) {
      lock.unlock();
      sweep_kept();
      lock.lock();
    }
  });
}

// Runs f, mapping any exception to nbdkit_error and *err (when err is
// given: the data callbacks); returns f's result or fail.
template <typename F, typename R = std::invoke_result_t<F>>
R guard(R fail, int* err, F&& f) noexcept {
  try {
    return f();
  } catch (...) {
    const ErrorReport e = current_error();
    nbdkit_error("luks2: %s", e.message.c_str());
    if (err) *err = e.code;
    return fail;
  }
}

template <typename F>
int guard_void(int* err, F&& f) noexcept {
  return guard(-1, err, [&] {
    f();
    return 0;
  });
}

// The export below as a luks::CryptBackend.
class NextDevice final : public luks::CryptBackend {
 public:
  NextDevice(nbdkit_next* next, const std::string& object) : next_(next), object_(object) {}
  void pread(std::span<std::uint8_t> buf, std::uint64_t offset) override {
    int err = 0;
    if (next_->pread(next_, buf.data(), static_cast<std::uint32_t>(buf.size()), offset, 0,
                     &err) == -1)
      throw Error(err, cat("pread: ", object_, ": ", buf.size(), " bytes at ", offset, ": ",
                           std::strerror(err)));
  }
  void pwrite(std::span<const std::uint8_t> buf, std::uint64_t offset, bool fua) override {
    int err = 0;
    if (next_->pwrite(next_, buf.data(), static_cast<std::uint32_t>(buf.size()), offset,
                      fua ? NBDKIT_FLAG_FUA : 0, &err) == -1)
      throw Error(err, cat("pwrite: ", object_, ": ", buf.size(), " bytes at ", offset, ": ",
                           std::strerror(err)));
  }

 private:
  nbdkit_next* next_;
  const std::string& object_;
};

std::uint64_t export_size(nbdkit_next* next, const std::string& object) {
  const std::int64_t size = next->get_size(next);
  if (size == -1) throw Error(EIO, cat("get_size: ", object, ": failed"));
  return static_cast<std::uint64_t>(size);
}

// The bytes of the export below that unlocking reads (both header copies,
// the keyslots' key material, the last byte before the data), read before
// unlock_mu is taken: a slow or stuck image below (a QoS limit, a pool with
// PGs down) then holds up only its own open, never the other exports'
// unlocks queued behind the lock. Not secret (key material is AF-split and
// encrypted with the passphrase's derived key).
class Prefetch {
 public:
  explicit Prefetch(luks::Reader below) : below_(std::move(below)) {}

  // Reads through the export below, keeping what it read.
  luks::Reader recording() {
    return [this](std::span<std::uint8_t> buf, std::uint64_t off) {
      const std::size_t n = below_(buf, off);
      reads_.push_back({off, std::vector<std::uint8_t>(buf.begin(), buf.begin() + n)});
      return n;
    };
  }
  // Serves from what was read when one read covers the range, else (past
  // the end of the export, or bytes never read before) from the export below.
  luks::Reader replaying() const {
    return [this](std::span<std::uint8_t> buf, std::uint64_t off) {
      for (const auto& [at, bytes] : reads_) {
        if (off >= at && off - at <= bytes.size() && bytes.size() - (off - at) >= buf.size()) {
          std::copy_n(bytes.begin() + static_cast<std::ptrdiff_t>(off - at), buf.size(),
                      buf.begin());
          return buf.size();
        }
      }
      return below_(buf, off);
    };
  }

 private:
  luks::Reader below_;
  std::vector<std::pair<std::uint64_t, std::vector<std::uint8_t>>> reads_;
};

// What luks::unlock reads, read through p.recording() (as it reads it:
// inspect_header, then the key material in 1 MiB pieces, then the data
// check). Header errors are thrown here, named, as unlock would.
void prefetch_header(Prefetch& p, const std::string& object) {
  const luks::Reader rec = p.recording();
  const luks::HeaderLayout l = luks::inspect_header(rec, object);
  std::vector<std::uint8_t> buf;
  for (const luks::Extent& e : l.key_material) {
    for (std::uint64_t done = 0; done < e.size;) {
      buf.resize(std::min<std::uint64_t>(std::uint64_t{1} << 20, e.size - done));
      const std::size_t n = rec(buf, e.offset + done);
      if (n == 0) return;  // truncated: unlock says so, as it always did
      done += n;
    }
  }
  luks::check_data_inside(rec, l, object);
}

// Unlocks the header on dev with pass (one PBKDF run, serialised; the
// header is read before), wiping pass right after. *wrong_pass (when given)
// is set when the passphrase opened no keyslot, and only then (never for an
// error reading the export below).
std::shared_ptr<Volume> make_volume(NextDevice& dev, const std::string& object,
                                    std::uint64_t dev_size, std::vector<std::uint8_t> fp,
                                    SecretBuffer& pass, bool* wrong_pass = nullptr) {
  Prefetch prefetched([&](std::span<std::uint8_t> buf, std::uint64_t off) {
    if (off >= dev_size) return std::size_t{0};
    const std::size_t n = std::min<std::uint64_t>(buf.size(), dev_size - off);
    dev.pread(buf.first(n), off);
    return n;
  });
  prefetch_header(prefetched, object);
  const luks::Reader reader = prefetched.replaying();
  std::unique_lock ulock(unlock_mu);
  luks::Unlocked u = [&] {
    if (passphrase_store.empty()) return luks::unlock(reader, object, pass);
    try {
      auto r = luks::unlock(reader, object, pass);
      pass.clear();
      return r;
    } catch (const Error& e) {
      // The header's reads are served from the copy made above: EPERM is
      // libcryptsetup's "no keyslot matched" (detail::throw_passphrase_error).
      if (wrong_pass && e.code() == EPERM) *wrong_pass = true;
      pass.clear();
      throw;
    } catch (...) {
      pass.clear();
      throw;
    }
  }();
  ulock.unlock();
  const luks::Segment& s = u.segment;
  auto cipher = crypto::XtsSectorCipher::create(u.volume_key, s.sector_size, s.iv_tweak);
  auto vol = std::make_shared<Volume>(std::move(fp), s, std::move(cipher));
  nbdkit_debug("luks2: %s: unlocked with keyslot %d: %s, %u-bit key, %u-byte sectors, "
               "data at %llu", object.c_str(), u.keyslot, s.cipher.c_str(), s.key_bits,
               s.sector_size, static_cast<unsigned long long>(s.offset));
  return vol;
}

// Unlocks the header on the export below (or reuses the volume unlocked
// for an identical header).
std::shared_ptr<Volume> unlock_volume(nbdkit_next* next, const std::string& object,
                                      std::uint64_t dev_size) {
  NextDevice dev(next, object);
  std::vector<std::uint8_t> fp(std::min<std::uint64_t>(fingerprint_size, dev_size));
  dev.pread(fp, 0);

  std::lock_guard lock(volume_mu);
  if (last_volume && last_volume->fingerprint == fp) return last_volume;
  auto vol = make_volume(dev, object, dev_size, std::move(fp), passphrase);
  last_volume = vol;
  return vol;
}

// passphrase-store mode: the volume of export h.name, unlocked with its
// passphrase from the store at the first connection (or when the header
// changed), reused by the export's later connections while one holds it.
std::shared_ptr<Volume> unlock_export_locked(NextDevice& dev, Handle& h, std::uint64_t dev_size);

std::shared_ptr<Volume> unlock_export(nbdkit_next* next, Handle& h, std::uint64_t dev_size) {
  NextDevice dev(next, h.object);
  try {
    return unlock_export_locked(dev, h, dev_size);
  } catch (...) {
    // A failed open holds nothing: the next connection tries afresh.
    if (h.slot) {
      h.slot.reset();
      release_slot(h.name);
    }
    throw;
  }
}

std::shared_ptr<Volume> unlock_export_locked(NextDevice& dev, Handle& h, std::uint64_t dev_size) {
  std::vector<std::uint8_t> fp(std::min<std::uint64_t>(fingerprint_size, dev_size));
  dev.pread(fp, 0);

  {
    std::lock_guard lock(slots_mu);
    auto& slot = slots[h.name];
    if (!slot) slot = std::make_shared<Slot>();
    h.slot = slot;
  }
  std::lock_guard lock(h.slot->mu);
  // The store file's identity, taken before it is read: a file replaced in
  // between only costs a PBKDF run more, never refuses a good passphrase.
  const std::optional<FileId> file = store_file_id(h.name);
  // A kept volume whose entry was removed or replaced since is not used
  // again (the sweeper may not have seen it yet).
  bool entry_same = file && file == h.slot->unlocked_with;
  if (entry_same) {
    // The entry as load_secret reads it now (the store's checks included)
    // must be the passphrase it was unlocked with; any error is reported
    // by the full path below.
    try {
      auto now = attach::load_secret(h.name, "passphrase", passphrase_store);
      entry_same = now && CRYPTO_memcmp(salted_digest(h.slot->salt, *now).data(),
                                        h.slot->digest.data(), 32) == 0;
    } catch (...) {
      entry_same = false;
    }
  }
  if (!entry_same) h.slot->kept.reset();
  // The volume the export's connections share, while its entry is unchanged.
  std::shared_ptr<Volume> live = h.slot->vol.lock();
  if (live && live->fingerprint != fp) live.reset();
  if (live && entry_same) return live;
  // Not reused: the kept volume (another header's) is no use while the
  // unlock below runs (which may take long: the sweeper skips this slot).
  h.slot->kept.reset();
  if (file) {
    std::lock_guard lock(wrong_mu);
    auto it = wrong.find(h.name);
    if (it != wrong.end() && it->second.fp == fp && it->second.file == *file)
      throw Error(EPERM, cat(it->second.message, " (not tried again: neither its entry in the "
                             "secret store nor the header changed since)"));
  }

  std::optional<SecretBuffer> pw;
  try {
    pw = attach::load_secret(h.name, "passphrase", passphrase_store);
  } catch (...) {
    const ErrorReport e = current_error();
    throw Error(e.code, cat(h.object, ": ", e.message));
  }
  if (!pw)
    throw Error(ENOENT, cat(h.object, ": no passphrase in the secret store ", passphrase_store,
                            " (no secret 'passphrase' of volume ", h.name, ")"));
  if (pw->empty())
    throw Error(EINVAL, cat(h.object, ": the passphrase in the secret store ", passphrase_store,
                            " is empty"));
  std::array<std::uint8_t, 32> salt{};
  if (RAND_bytes(salt.data(), static_cast<int>(salt.size())) != 1)
    throw Error(EIO, "RAND_bytes failed");
  const auto digest = salted_digest(salt, *pw);
  std::vector<std::uint8_t> header = fp;
  std::shared_ptr<Volume> vol;
  bool wrong_pass = false;
  try {
    vol = make_volume(dev, h.object, dev_size, std::move(fp), *pw, &wrong_pass);
  } catch (const Error& e) {
    if (wrong_pass && file) {
      std::lock_guard lock(wrong_mu);
      if (wrong.size() >= max_wrong) wrong.clear();
      wrong[h.name] = WrongPassphrase{std::move(header), *file, e.what()};
    }
    throw;
  }
  {
    std::lock_guard lock(wrong_mu);
    wrong.erase(h.name);
  }
  // The entry changed under open connections and checks out: the same
  // header's volume stays the one shared (one set of RMW locks).
  if (live) vol = live;
  h.slot->vol = vol;
  h.slot->kept.reset();  // another header's volume
  h.slot->unlocked_with = file;
  h.slot->salt = salt;
  h.slot->digest = digest;
  start_sweeper();
  return vol;
}

// The decrypted size: the segment's, which must fit in the export below.
std::uint64_t segment_size(const luks::Segment& s, std::uint64_t dev_size,
                           const std::string& object) {
  if (dev_size < s.offset + s.sector_size)
    throw Error(EINVAL, cat(object, ": truncated LUKS2 volume: ", dev_size,
                            " bytes, but the data segment starts at ", s.offset));
  const std::uint64_t avail = (dev_size - s.offset) / s.sector_size * s.sector_size;
  if (!s.size) return avail;
  if (*s.size > avail)
    throw Error(EINVAL, cat(object, ": truncated LUKS2 volume: the data segment needs ",
                            *s.size, " bytes at ", s.offset, ", the export has ", dev_size));
  return *s.size;
}

void luks2_load() {
  log::set_sink([](log::Level level, std::string_view msg) {
    if (level >= log::Level::warn)
      nbdkit_error("luks2: %.*s", static_cast<int>(msg.size()), msg.data());
    else
      nbdkit_debug("luks2: %.*s", static_cast<int>(msg.size()), msg.data());
  });
}

void luks2_unload() {
  {
    std::unique_lock lock(sweeper_mu);
    sweeper_stop = true;
    sweeper_cv.notify_all();
    if (sweeper.joinable()) {
      lock.unlock();
      sweeper.join();
    }
  }
  {
    std::lock_guard lock(slots_mu);
    slots.clear();
  }
  {
    std::lock_guard lock(wrong_mu);
    wrong.clear();
  }
  std::lock_guard lock(volume_mu);
  last_volume.reset();
  passphrase.clear();
}

int luks2_config(nbdkit_next_config* next, nbdkit_backend* nxdata, const char* key,
                 const char* value) {
  if (std::strcmp(key, "passphrase") == 0) {
    passphrase_given = true;
    // +FILE or -FD: every byte to the end, as cryptsetup --key-file reads
    // it (nbdkit_read_password would keep one line only); - : typed at a
    // terminal (one line); never the secret itself in argv.
    try {
      if (auto s = read_secret_parameter(value, "passphrase")) {
        passphrase = std::move(*s);
        return 0;
      }
    } catch (...) {
      nbdkit_error("luks2: %s", current_error().message.c_str());
      return -1;
    }
    char* pw = nullptr;
    if (nbdkit_read_password(value, &pw) == -1) return -1;
    passphrase = SecretBuffer(pw, std::strlen(pw));
    OPENSSL_cleanse(pw, std::strlen(pw));
    std::free(pw);
    return 0;
  }
  if (std::strcmp(key, "key-file") == 0) {
    passphrase_given = true;
    try {
      passphrase = read_secret_file(value);
      return 0;
    } catch (...) {
      nbdkit_error("luks2: key-file: %s", current_error().message.c_str());
      return -1;
    }
  }
  if (std::strcmp(key, "passphrase-store") == 0) {
    if (value[0] != '/') {
      nbdkit_error("luks2: passphrase-store=%s: not an absolute path", value);
      return -1;
    }
    // Without trailing '/': "LINK/" would make the store's O_NOFOLLOW open
    // follow a symbolic link (a symlinked store must be refused).
    passphrase_store = value;
    while (passphrase_store.size() > 1 && passphrase_store.back() == '/')
      passphrase_store.pop_back();
    return 0;
  }
  if (std::strcmp(key, "allow-discards") == 0) {
    const int b = nbdkit_parse_bool(value);
    if (b == -1) return -1;
    allow_discards = b;
    return 0;
  }
  return next(nxdata, key, value);
}

int luks2_config_complete(nbdkit_next_config_complete* next, nbdkit_backend* nxdata) {
  if (!passphrase_store.empty()) {
    if (passphrase_given) {
      nbdkit_error("luks2: passphrase-store= and passphrase= or key-file= are exclusive: "
                   "give one passphrase for every export, or one per export in the store");
      return -1;
    }
  } else if (passphrase.empty()) {
    nbdkit_error("luks2: a non-empty passphrase=+FILE (or -FD), key-file=FILE or "
                 "passphrase-store=DIR is required");
    return -1;
  }
  if (luks2_debug_verbose) log::set_level(log::Level::debug);
  return next(nxdata);
}

void* luks2_open(nbdkit_next_open* next, nbdkit_context* ctx, int readonly,
                 const char* exportname, int is_tls) {
  if (!passphrase_store.empty()) {
    // The name becomes a store file name: refused before anything uses it.
    try {
      attach::validate_volume_id(exportname);
    } catch (...) {
      nbdkit_error("luks2: export '%s': not a valid volume id (1 to 128 of A-Z a-z 0-9 . _ -, "
                   "not . or ..): no passphrase can be looked up for it",
                   printable(exportname).c_str());
      return nullptr;
    }
  }
  if (next(ctx, readonly, exportname) == -1) return nullptr;
  return guard(static_cast<void*>(nullptr), nullptr, [&]() -> void* {
    auto h = std::make_unique<Handle>();
    h->object = *exportname ? cat("export '", exportname, "'") : "the export below";
    if (!passphrase_store.empty()) h->name = exportname;
    return h.release();
  });
}

void luks2_close(void* handle) {
  std::unique_ptr<Handle> h(static_cast<Handle*>(handle));
  if (!h->slot) return;
  // The last connection of the export drops its volume (and key), then the slot.
  h->vol.reset();
  h->slot.reset();
  release_slot(h->name);
}

int luks2_prepare(nbdkit_next* next, void* handle, int readonly) {
  auto* h = static_cast<Handle*>(handle);
  return guard_void(nullptr, [&] {
    const std::uint64_t dev_size = export_size(next, h->object);
    // Nothing below is read from an export that cannot hold a binary header
    // (nbdkit aborts on a zero-length read).
    if (dev_size < fingerprint_size)
      throw Error(EINVAL, cat(h->object, ": ", dev_size, " bytes is too small for a LUKS2 volume "
                              "(its binary header alone is ", fingerprint_size, " bytes)"));
    auto vol = passphrase_store.empty() ? unlock_volume(next, h->object, dev_size)
                                        : unlock_export(next, *h, dev_size);
    h->size = segment_size(vol->segment, dev_size, h->object);
    if (h->slot) {
      // Opened: kept while its store entry is the one it was unlocked with.
      std::lock_guard lock(h->slot->mu);
      // The entry as it is now: an open that raced the sweeper must not put
      // back a volume whose entry went meanwhile.
      if (h->slot->unlocked_with && store_file_id(h->name) == h->slot->unlocked_with)
        h->slot->kept = vol;
    }
    h->vol = std::move(vol);
  });
}

int64_t luks2_get_size(nbdkit_next* next, void* handle) {
  return static_cast<int64_t>(static_cast<Handle*>(handle)->size);
}

int luks2_block_size(nbdkit_next* next, void* handle, uint32_t* minimum, uint32_t* preferred,
                     uint32_t* maximum) {
  auto* h = static_cast<Handle*>(handle);
  uint32_t nmin = 0, npref = 0, nmax = 0;
  if (next->block_size(next, &nmin, &npref, &nmax) == -1) return -1;
  // Any alignment works (partial sectors are read-modify-written); whole
  // sectors avoid the RMW.
  *minimum = 1;
  *preferred = std::max(h->vol->segment.sector_size, npref);
  *maximum = nmax >= *preferred ? nmax : 0xffffffff;
  return 0;
}

int luks2_can_trim(nbdkit_next* next, void* handle) {
  return allow_discards ? next->can_trim(next) : 0;
}

int luks2_can_zero(nbdkit_next* next, void* handle) { return NBDKIT_ZERO_NATIVE; }
int luks2_can_fast_zero(nbdkit_next* next, void* handle) { return 0; }
// Holes below do not read as zeros once decrypted: report everything as data.
int luks2_can_extents(nbdkit_next* next, void* handle) { return 0; }

int luks2_pread(nbdkit_next* next, void* handle, void* buf, uint32_t count, uint64_t offset,
                uint32_t flags, int* err) {
  auto* h = static_cast<Handle*>(handle);
  return guard_void(err, [&] {
    NextDevice dev(next, h->object);
    h->vol->io.read(dev, {static_cast<std::uint8_t*>(buf), count}, offset);
  });
}

int luks2_pwrite(nbdkit_next* next, void* handle, const void* buf, uint32_t count,
                 uint64_t offset, uint32_t flags, int* err) {
  auto* h = static_cast<Handle*>(handle);
  return guard_void(err, [&] {
    NextDevice dev(next, h->object);
    h->vol->io.write(dev, {static_cast<const std::uint8_t*>(buf), count}, offset,
                     flags & NBDKIT_FLAG_FUA);
  });
}

int luks2_zero(nbdkit_next* next, void* handle, uint32_t count, uint64_t offset, uint32_t flags,
               int* err) {
  auto* h = static_cast<Handle*>(handle);
  return guard_void(err, [&] {
    NextDevice dev(next, h->object);
    h->vol->io.zero(dev, count, offset, flags & NBDKIT_FLAG_FUA);
  });
}

// The whole sectors inside [offset, offset + count), as a range of the
// export below; empty when there are none.
std::pair<std::uint64_t, std::uint64_t> inner_sectors(const Handle& h, uint32_t count,
                                                      uint64_t offset) {
  const std::uint64_t s = h.vol->segment.sector_size;
  const std::uint64_t start = (offset + s - 1) / s * s, end = (offset + count) / s * s;
  if (end <= start) return {0, 0};
  return {h.vol->segment.offset + start, end - start};
}

int luks2_trim(nbdkit_next* next, void* handle, uint32_t count, uint64_t offset, uint32_t flags,
               int* err) {
  // Only with allow-discards (else can_trim is false and nbdkit sends none).
  const auto [start, len] = inner_sectors(*static_cast<Handle*>(handle), count, offset);
  return len == 0 ? 0
                  : next->trim(next, static_cast<uint32_t>(len), start, flags & NBDKIT_FLAG_FUA,
                               err);
}

int luks2_cache(nbdkit_next* next, void* handle, uint32_t count, uint64_t offset, uint32_t flags,
                int* err) {
  // Whole sectors around the range, so that partial sectors are cached too.
  const auto* h = static_cast<Handle*>(handle);
  const std::uint64_t s = h->vol->segment.sector_size;
  const std::uint64_t start = offset / s * s, end = (offset + count + s - 1) / s * s;
  return next->cache(next, static_cast<uint32_t>(end - start), h->vol->segment.offset + start,
                     flags, err);
}

nbdkit_filter filter = {
    .name = "luks2",
    .longname = "nbdkit LUKS2 filter (userspace dm-crypt aes-xts-plain64)",
    .load = luks2_load,
    .unload = luks2_unload,
    .config = luks2_config,
    .config_complete = luks2_config_complete,
    .config_help =
        "passphrase=<PASSWORD>     The passphrase: +FILE or -FD (every byte, as cryptsetup\n"
        "                          --key-file reads it), or - (typed, one line).\n"
        "key-file=<FILE>           Or: the whole file is the passphrase (cryptsetup --key-file).\n"
        "passphrase-store=<DIR>    Or: export N's passphrase is volume N's secret\n"
        "                          'passphrase' in the rbdgw secret store DIR.\n"
        "allow-discards=<BOOL>     Pass trim down (default false, as dm-crypt).",
    .open = luks2_open,
    .close = luks2_close,
    .prepare = luks2_prepare,
    .get_size = luks2_get_size,
    .block_size = luks2_block_size,
    .can_trim = luks2_can_trim,
    .can_zero = luks2_can_zero,
    .can_fast_zero = luks2_can_fast_zero,
    .can_extents = luks2_can_extents,
    .pread = luks2_pread,
    .pwrite = luks2_pwrite,
    .trim = luks2_trim,
    .zero = luks2_zero,
    .cache = luks2_cache,
};

}  // namespace

NBDKIT_REGISTER_FILTER(filter)
