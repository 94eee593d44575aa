// RAII over librbd images: create, remove, resize, open, metadata.
//
// Image owns an rbd_image_t and keeps its IoCtx (and so the cluster) alive.
// Every failure throws rbdgw::Error naming the call and the image spec.
//
// Thread safety: librbd image handles are thread-safe for I/O; the
// wrappers add no mutable state.
#pragma once

#include <rbd/librbd.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rbd/cluster.hpp"
#include "rbd/spec.hpp"

namespace rbdgw::rbd {

struct CreateOptions {
  std::uint64_t size = 0;
  // Feature names as `rbd create --image-feature` takes them
  // ("layering,exclusive-lock,object-map,fast-diff,deep-flatten");
  // empty: the cluster's default.
  std::string features;
  int order = 0;  // object size 2^order; 0: default (22 = 4 MiB)
  std::string data_pool;
};

// Feature names -> RBD_FEATURE_* bits; throws Error(EINVAL) on unknown names.
std::uint64_t parse_features(const std::string& names);

// Creates pool[/ns]/image; throws Error(EEXIST) if it exists.
void create_image(const IoCtx& io, const std::string& name, const CreateOptions& opts);
// Removes an image (and fails with EBUSY if it has watchers, ENOTEMPTY with
// snapshots). Returns false if it did not exist.
bool remove_image(const IoCtx& io, const std::string& name);
// Image names in the pool/namespace.
std::vector<std::string> list_images(const IoCtx& io);

struct ImageInfo {
  std::uint64_t size = 0;
  std::uint64_t object_size = 0;
  std::uint64_t features = 0;
  std::string id;
};

class Image {
 public:
  enum class Mode { read_write, read_only };
  // Opens io/name at snap (read-only whenever snap is given).
  // Throws Error(ENOENT) "image 'pool/img' does not exist" etc.
  static Image open(const IoCtx& io, const std::string& name, const std::string& snap = {},
                    Mode mode = Mode::read_write);
  static Image open(const Cluster& c, const ImageSpec& spec, Mode mode = Mode::read_write);
  // Opens by image id (also an image in the trash, which has no name entry).
  // what names it in messages. Throws Error(ENOENT) when it does not exist.
  static Image open_by_id(const IoCtx& io, const std::string& id, const std::string& what,
                          Mode mode = Mode::read_write);

  Image(Image&& o) noexcept;
  Image& operator=(Image&& o) noexcept;
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;
  ~Image();  // closes; an error on close is logged, not thrown

  // Closes now, throwing on error (rbd_close flushes the cache).
  void close();

  rbd_image_t handle() const { return h_; }
  const std::string& spec() const { return spec_; }  // for messages
  bool read_only() const { return read_only_; }

  std::uint64_t size() const;
  ImageInfo info() const;
  void resize(std::uint64_t new_size);
  void flush();

  // Metadata (image-meta) key/value pairs.
  std::optional<std::string> get_meta(const std::string& key) const;
  void set_meta(const std::string& key, const std::string& value);
  // Returns false if the key was absent.
  bool remove_meta(const std::string& key);
  std::map<std::string, std::string> list_meta() const;

  // The RADOS clients watching the image (gateways, rbd map, VMs ...).
  struct Watcher {
    std::int64_t id = 0;  // rados_get_instance_id of the client
    std::string addr;     // its address, as rbd status and the lock owners give it
  };
  std::vector<Watcher> watchers() const;

  // Snapshots.
  void create_snap(const std::string& name);
  std::vector<std::string> list_snaps() const;

  // Synchronous whole-buffer I/O for small control-path reads and writes
  // (headers, probes); the data path uses librbd's aio calls directly.
  void read(std::uint64_t off, void* buf, std::size_t len) const;
  void write(std::uint64_t off, const void* buf, std::size_t len);

 private:
  Image(std::shared_ptr<void> keep, rbd_image_t h, std::string spec, bool ro)
      : keep_(std::move(keep)), h_(h), spec_(std::move(spec)), read_only_(ro) {}
  std::shared_ptr<void> keep_;  // keeps the IoCtx alive
  rbd_image_t h_ = nullptr;
  std::string spec_;
  bool read_only_ = false;
};

}  // namespace rbdgw::rbd
