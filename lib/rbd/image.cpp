#include "rbd/image.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <utility>

#include "common/error.hpp"
#include "common/log.hpp"

namespace rbdgw::rbd {
namespace {

std::string spec_of(const IoCtx& io, const std::string& name) { return io.str() + "/" + name; }

}  // namespace

std::uint64_t parse_features(const std::string& names) {
  static const std::pair<const char*, std::uint64_t> table[] = {
      {"layering", RBD_FEATURE_LAYERING},
      {"striping", RBD_FEATURE_STRIPINGV2},
      {"exclusive-lock", RBD_FEATURE_EXCLUSIVE_LOCK},
      {"object-map", RBD_FEATURE_OBJECT_MAP},
      {"fast-diff", RBD_FEATURE_FAST_DIFF},
      {"deep-flatten", RBD_FEATURE_DEEP_FLATTEN},
      {"journaling", RBD_FEATURE_JOURNALING},
      {"data-pool", RBD_FEATURE_DATA_POOL},
  };
  std::uint64_t bits = 0;
  std::stringstream ss(names);
  std::string f;
  while (std::getline(ss, f, ',')) {
    while (!f.empty() && f.front() == ' ') f.erase(f.begin());
    while (!f.empty() && f.back() == ' ') f.pop_back();
    if (f.empty()) continue;
    bool found = false;
    for (auto& [n, b] : table) {
      if (f == n) {
        bits |= b;
        found = true;
      }
    }
    if (!found) throw Error(EINVAL, cat("unknown image feature '", f, "' in '", names, "'"));
  }
  return bits;
}

void create_image(const IoCtx& io, const std::string& name, const CreateOptions& o) {
  rbd_image_options_t opts;
  rbd_image_options_create(&opts);
  struct Guard {
    rbd_image_options_t o;
    ~Guard() { rbd_image_options_destroy(o); }
  } g{opts};
  if (!o.features.empty())
    rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, parse_features(o.features));
  if (o.order) rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_ORDER, o.order);
  if (!o.data_pool.empty())
    rbd_image_options_set_string(opts, RBD_IMAGE_OPTION_DATA_POOL, o.data_pool.c_str());
  int r = rbd_create4(io.handle(), name.c_str(), o.size, opts);
  if (r == -EEXIST) throw Error(EEXIST, cat("image '", spec_of(io, name), "' already exists"));
  check(r, "rbd_create", spec_of(io, name));
}

bool remove_image(const IoCtx& io, const std::string& name) {
  int r = rbd_remove(io.handle(), name.c_str());
  if (r == -ENOENT) return false;
  if (r == -EBUSY)
    throw Error(EBUSY, cat("rbd_remove: ", spec_of(io, name), ": image is still in use (has watchers)"));
  if (r == -ENOTEMPTY)
    throw Error(ENOTEMPTY, cat("rbd_remove: ", spec_of(io, name), ": image has snapshots"));
  check(r, "rbd_remove", spec_of(io, name));
  return true;
}

std::vector<std::string> list_images(const IoCtx& io) {
  std::vector<rbd_image_spec_t> specs(64);
  size_t n = specs.size();
  int r;
  while ((r = rbd_list2(io.handle(), specs.data(), &n)) == -ERANGE) specs.resize(n);
  check(r, "rbd_list", io.str());
  std::vector<std::string> out;
  for (size_t i = 0; i < n; i++) out.emplace_back(specs[i].name);
  rbd_image_spec_list_cleanup(specs.data(), n);
  return out;
}

Image Image::open(const IoCtx& io, const std::string& name, const std::string& snap, Mode mode) {
  const bool ro = mode == Mode::read_only || !snap.empty();
  std::string spec = spec_of(io, name) + (snap.empty() ? "" : "@" + snap);
  rbd_image_t h = nullptr;
  const char* s = snap.empty() ? nullptr : snap.c_str();
  int r = ro ? rbd_open_read_only(io.handle(), name.c_str(), &h, s)
             : rbd_open(io.handle(), name.c_str(), &h, s);
  if (r == -ENOENT) {
    // Tell a missing snapshot from a missing image.
    if (s) {
      rbd_image_t probe = nullptr;
      if (rbd_open_read_only(io.handle(), name.c_str(), &probe, nullptr) == 0) {
        rbd_close(probe);
        throw Error(ENOENT, cat("snapshot '", snap, "' of image '", spec_of(io, name),
                                "' does not exist"));
      }
    }
    throw Error(ENOENT, cat("image '", spec_of(io, name), "' does not exist"));
  }
  check(r, ro ? "rbd_open_read_only" : "rbd_open", spec);
  return Image(io.shared_handle(), h, std::move(spec), ro);
}

Image Image::open_by_id(const IoCtx& io, const std::string& id, const std::string& what, Mode mode) {
  const bool ro = mode == Mode::read_only;
  rbd_image_t h = nullptr;
  int r = ro ? rbd_open_by_id_read_only(io.handle(), id.c_str(), &h, nullptr)
             : rbd_open_by_id(io.handle(), id.c_str(), &h, nullptr);
  if (r == -ENOENT) throw Error(ENOENT, cat("image ", what, " (id ", id, ") does not exist"));
  check(r, ro ? "rbd_open_by_id_read_only" : "rbd_open_by_id", cat(what, " (id ", id, ")"));
  return Image(io.shared_handle(), h, what, ro);
}

Image Image::open(const Cluster& c, const ImageSpec& spec, Mode mode) {
  IoCtx io = c.open_ioctx(spec.pool, spec.ns);
  return open(io, spec.image, spec.snap, mode);
}

Image::Image(Image&& o) noexcept
    : keep_(std::move(o.keep_)),
      h_(std::exchange(o.h_, nullptr)),
      spec_(std::move(o.spec_)),
      read_only_(o.read_only_) {}

Image& Image::operator=(Image&& o) noexcept {
  if (this != &o) {
    if (h_) rbd_close(h_);
    keep_ = std::move(o.keep_);
    h_ = std::exchange(o.h_, nullptr);
    spec_ = std::move(o.spec_);
    read_only_ = o.read_only_;
  }
  return *this;
}

Image::~Image() {
  if (h_) {
    int r = rbd_close(h_);
    if (r < 0) log::error(errno_message("rbd_close", spec_, r));
  }
}

void Image::close() {
  if (!h_) return;
  int r = rbd_close(std::exchange(h_, nullptr));
  check(r, "rbd_close", spec_);
}

std::uint64_t Image::size() const {
  std::uint64_t s = 0;
  check(rbd_get_size(h_, &s), "rbd_get_size", spec_);
  return s;
}

ImageInfo Image::info() const {
  rbd_image_info_t i{};
  check(rbd_stat(h_, &i, sizeof i), "rbd_stat", spec_);
  ImageInfo out;
  out.size = i.size;
  out.object_size = i.obj_size;
  check(rbd_get_features(h_, &out.features), "rbd_get_features", spec_);
  char id[64] = {0};
  if (rbd_get_id(h_, id, sizeof id - 1) == 0) out.id = id;
  return out;
}

void Image::resize(std::uint64_t new_size) { check(rbd_resize(h_, new_size), "rbd_resize", spec_); }

void Image::flush() { check(rbd_flush(h_), "rbd_flush", spec_); }

std::optional<std::string> Image::get_meta(const std::string& key) const {
  std::string v(256, '\0');
  size_t len = v.size();
  int r;
  while ((r = rbd_metadata_get(h_, key.c_str(), v.data(), &len)) == -ERANGE) v.resize(len);
  if (r == -ENOENT) return std::nullopt;
  check(r, "rbd_metadata_get", cat(spec_, " key '", key, "'"));
  // librbd copies a NUL-terminated value and leaves len unchanged on success.
  v.resize(::strnlen(v.data(), std::min(len, v.size())));
  return v;
}

void Image::set_meta(const std::string& key, const std::string& value) {
  check(rbd_metadata_set(h_, key.c_str(), value.c_str()), "rbd_metadata_set",
        cat(spec_, " key '", key, "'"));
}

bool Image::remove_meta(const std::string& key) {
  int r = rbd_metadata_remove(h_, key.c_str());
  if (r == -ENOENT) return false;
  check(r, "rbd_metadata_remove", cat(spec_, " key '", key, "'"));
  return true;
}

std::vector<Image::Watcher> Image::watchers() const {
  std::vector<rbd_image_watcher_t> w(8);
  std::size_t n = w.size();
  int r = rbd_watchers_list(h_, w.data(), &n);
  if (r == -ERANGE) {
    w.resize(n);
    r = rbd_watchers_list(h_, w.data(), &n);
  }
  check(r, "rbd_watchers_list", spec_);
  std::vector<Watcher> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back({static_cast<std::int64_t>(w[i].id), w[i].addr});
  rbd_watchers_list_cleanup(w.data(), n);
  return out;
}

std::map<std::string, std::string> Image::list_meta() const {
  std::vector<char> keys(4096), vals(4096);
  size_t klen = keys.size(), vlen = vals.size();
  int r;
  while ((r = rbd_metadata_list(h_, "", 0, keys.data(), &klen, vals.data(), &vlen)) == -ERANGE) {
    keys.resize(klen);
    vals.resize(vlen);
  }
  check(r, "rbd_metadata_list", spec_);
  std::map<std::string, std::string> out;
  const char* k = keys.data();
  const char* v = vals.data();
  while (k < keys.data() + klen && *k) {
    std::string key(k), val(v);
    k += key.size() + 1;
    v += val.size() + 1;
    out.emplace(std::move(key), std::move(val));
  }
  return out;
}

void Image::create_snap(const std::string& name) {
  check(rbd_snap_create(h_, name.c_str()), "rbd_snap_create", spec_ + "@" + name);
}

std::vector<std::string> Image::list_snaps() const {
  std::vector<rbd_snap_info_t> snaps(16);
  int max = static_cast<int>(snaps.size());
  int r;
  while ((r = rbd_snap_list(h_, snaps.data(), &max)) == -ERANGE) snaps.resize(max);
  check(r, "rbd_snap_list", spec_);
  std::vector<std::string> out;
  for (int i = 0; i < r; i++) out.emplace_back(snaps[i].name);
  rbd_snap_list_end(snaps.data());
  return out;
}

void Image::read(std::uint64_t off, void* buf, std::size_t len) const {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t r = rbd_read(h_, off, len, p);
    if (r < 0) throw_errno("rbd_read", spec_, static_cast<int>(r));
    if (r == 0) throw Error(EIO, cat("rbd_read: ", spec_, ": short read at offset ", off));
    off += r;
    p += r;
    len -= r;
  }
}

void Image::write(std::uint64_t off, const void* buf, std::size_t len) {
  auto* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t r = rbd_write(h_, off, len, p);
    if (r < 0) throw_errno("rbd_write", spec_, static_cast<int>(r));
    off += r;
    p += r;
    len -= r;
  }
}

}  // namespace rbdgw::rbd
