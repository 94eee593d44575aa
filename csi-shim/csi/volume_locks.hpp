// Per-volume try-locks: a second call on a volume while one runs fails at
// once with Error(EAGAIN) (gRPC ABORTED), as the CSI spec asks, instead of
// queueing behind a long stage or format.
//
// Thread safety: all members are thread-safe.
#pragma once

#include <mutex>
#include <set>
#include <string>

#include "common/error.hpp"

namespace rbdgw::csi {

class VolumeLocks {
 public:
  // Holds one volume's lock; releases it when destroyed.
  class Guard {
   public:
    Guard(Guard&& o) noexcept : locks_(o.locks_), key_(std::move(o.key_)) { o.locks_ = nullptr; }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (locks_) locks_->release(key_);
    }

   private:
    friend class VolumeLocks;
    Guard(VolumeLocks* l, std::string k) : locks_(l), key_(std::move(k)) {}
    VolumeLocks* locks_;
    std::string key_;
  };

  // Takes the lock for key (a volume ID or CreateVolume name), or throws
  // Error(EAGAIN) naming it when another call holds it.
  Guard try_acquire(const std::string& key) {
    std::lock_guard<std::mutex> g(mu_);
    if (!held_.insert(key).second)
      throw Error(EAGAIN, cat("an operation on volume '", key, "' is already in progress"));
    return Guard(this, key);
  }

 private:
  void release(const std::string& key) {
    std::lock_guard<std::mutex> g(mu_);
    held_.erase(key);
  }
  std::mutex mu_;
  std::set<std::string> held_;
};

}  // namespace rbdgw::csi
