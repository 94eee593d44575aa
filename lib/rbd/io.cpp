#include "rbd/io.hpp"

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.hpp"

namespace rbdgw::rbd {
namespace {

// One request in flight: librbd's completion callback (on a librbd thread)
// stores the result and wakes the submitting thread.
class Waiter {
 public:
  static void on_complete(rbd_completion_t c, void* arg) noexcept {
    auto* w = static_cast<Waiter*>(arg);
    const ssize_t r = rbd_aio_get_return_value(c);
    rbd_aio_release(c);
    std::lock_guard g(w->m_);
    w->r_ = r;
    w->done_ = true;
    w->cv_.notify_one();  // under the lock: w may be gone once it is released
  }
  ssize_t wait() {
    std::unique_lock g(m_);
    cv_.wait(g, [this] { return done_; });
    return r_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  ssize_t r_ = 0;
};

struct CompletionRelease {
  void operator()(void* c) const noexcept { rbd_aio_release(c); }
};
using Completion = std::unique_ptr<void, CompletionRelease>;

std::string where(const Image& img, std::uint64_t off, std::uint64_t len) {
  return cat(img.spec(), " [", off, "+", len, "]");
}

// Submits one aio call (submit(c) returns librbd's submit status) and waits
// for it; returns the request's non-negative result or throws.
template <typename Submit>
ssize_t run(const char* call, const Image& img, std::uint64_t off, std::uint64_t len,
            Submit submit) {
  Waiter w;
  rbd_completion_t raw = nullptr;
  check(rbd_aio_create_completion(&w, &Waiter::on_complete, &raw), "rbd_aio_create_completion",
        img.spec());
  Completion c(raw);
  const int s = submit(raw);
  if (s < 0) throw_errno(call, where(img, off, len), s);
  c.release();  // the callback releases it from now on
  const ssize_t r = w.wait();
  if (r < 0) throw_errno(call, where(img, off, len), static_cast<int>(r));
  return r;
}

}  // namespace

void aio_read(const Image& img, std::uint64_t off, void* buf, std::size_t len) {
  auto* p = static_cast<char*>(buf);
  const ssize_t r = run("rbd_aio_read", img, off, len, [&](rbd_completion_t c) {
    return rbd_aio_read(img.handle(), off, len, p, c);
  });
  // librbd stops at the end of the image (it may have shrunk meanwhile).
  if (static_cast<std::size_t>(r) < len) std::memset(p + r, 0, len - r);
}

void aio_write(const Image& img, std::uint64_t off, const void* buf, std::size_t len) {
  const auto* p = static_cast<const char*>(buf);
  run("rbd_aio_write", img, off, len,
      [&](rbd_completion_t c) { return rbd_aio_write(img.handle(), off, len, p, c); });
}

void aio_discard(const Image& img, std::uint64_t off, std::uint64_t len) {
  run("rbd_aio_discard", img, off, len,
      [&](rbd_completion_t c) { return rbd_aio_discard(img.handle(), off, len, c); });
}

void aio_write_zeroes(const Image& img, std::uint64_t off, std::uint64_t len) {
  run("rbd_aio_write_zeroes", img, off, len, [&](rbd_completion_t c) {
    return rbd_aio_write_zeroes(img.handle(), off, len, c, 0, 0);
  });
}

void aio_flush(const Image& img) {
  run("rbd_aio_flush", img, 0, 0,
      [&](rbd_completion_t c) { return rbd_aio_flush(img.handle(), c); });
}

CacheMode cache_mode(const Image& img) {
  int n = 512;
  std::vector<rbd_config_option_t> opts;
  int r;
  do {
    opts.resize(n);
    r = rbd_config_image_list(img.handle(), opts.data(), &n);
  } while (r == -ERANGE);
  check(r, "rbd_config_image_list", img.spec());
  std::map<std::string, std::string> v;
  for (int i = 0; i < n; i++) v[opts[i].name] = opts[i].value;
  rbd_config_image_list_cleanup(opts.data(), n);

  const bool cache = v["rbd_cache"] == "true";
  const std::string& policy = v["rbd_cache_policy"];
  CacheMode m;
  m.writes_durable = !cache || policy == "writethrough" || v["rbd_cache_max_dirty"] == "0";
  m.read_cache = cache && policy == "writeback";
  return m;
}

bool has_fast_diff(const Image& img) {
  std::uint64_t features = 0, flags = 0;
  check(rbd_get_features(img.handle(), &features), "rbd_get_features", img.spec());
  check(rbd_get_flags(img.handle(), &flags), "rbd_get_flags", img.spec());
  return (features & RBD_FEATURE_FAST_DIFF) && !(flags & RBD_FLAG_FAST_DIFF_INVALID);
}

std::vector<Extent> allocated_extents(const Image& img, std::uint64_t off, std::uint64_t len,
                                      bool whole_object) {
  struct Acc {
    std::vector<Extent> out;
    static int cb(std::uint64_t o, std::size_t l, int exists, void* arg) noexcept {
      try {
        if (exists && l > 0) static_cast<Acc*>(arg)->out.push_back({o, l});
        return 0;
      } catch (...) {
        return -ENOMEM;
      }
    }
  } acc;
  check(rbd_diff_iterate2(img.handle(), nullptr, off, len, 1, whole_object ? 1 : 0, &Acc::cb, &acc),
        "rbd_diff_iterate2", where(img, off, len));
  // Sorted and merged, clipped to the range (whole objects may reach out).
  std::sort(acc.out.begin(), acc.out.end(),
            [](const Extent& a, const Extent& b) { return a.off < b.off; });
  std::vector<Extent> out;
  for (auto e : acc.out) {
    const std::uint64_t b = std::max(e.off, off), end = std::min(e.off + e.len, off + len);
    if (b >= end) continue;
    if (!out.empty() && out.back().off + out.back().len >= b)
      out.back().len = std::max(out.back().off + out.back().len, end) - out.back().off;
    else
      out.push_back({b, end - b});
  }
  return out;
}

}  // namespace rbdgw::rbd
