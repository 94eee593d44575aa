#include "common/log.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace rbdgw::log {
namespace {

std::mutex sink_mutex;

void stderr_sink(Level level, std::string_view message) {
  std::fprintf(stderr, "rbdgw: %s: %.*s\n", level_name(level),
               static_cast<int>(message.size()), message.data());
}

Sink& sink() {
  static Sink s = stderr_sink;
  return s;
}

std::atomic<int>& min_level() {
  static std::atomic<int> l{std::getenv("RBDGW_DEBUG") ? 0 : 1};
  return l;
}

}  // namespace

void set_sink(Sink s) {
  std::lock_guard g(sink_mutex);
  sink() = s ? std::move(s) : Sink(stderr_sink);
}

void set_level(Level level) { min_level() = static_cast<int>(level); }

bool enabled(Level level) { return static_cast<int>(level) >= min_level().load(); }

void write(Level level, std::string_view message) {
  if (!enabled(level)) return;
  std::lock_guard g(sink_mutex);
  sink()(level, message);
}

const char* level_name(Level level) {
  switch (level) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warning";
    case Level::error: return "error";
  }
  return "?";
}

}  // namespace rbdgw::log
