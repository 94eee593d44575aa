// Project-wide logging: one sink, set once by the program at its edge
// (nbdkit_debug/nbdkit_error in the plugins, stderr in the CLI and shim).
//
// Never pass a passphrase, key or DEK to these functions.
//
// Thread safety: write() may be called from any thread; set_sink() and
// set_level() are meant for start-up.
#pragma once

#include <functional>
#include <string_view>

#include "common/error.hpp"

namespace rbdgw::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

using Sink = std::function<void(Level, std::string_view)>;

// Replaces the sink (default: "rbdgw: <level>: message" on stderr).
void set_sink(Sink sink);
// Messages below this level are dropped (default: info, or debug when the
// environment variable RBDGW_DEBUG is set).
void set_level(Level level);
bool enabled(Level level);
void write(Level level, std::string_view message);

template <typename... Args>
void debug(const Args&... a) { if (enabled(Level::debug)) write(Level::debug, cat(a...)); }
template <typename... Args>
void info(const Args&... a) { if (enabled(Level::info)) write(Level::info, cat(a...)); }
template <typename... Args>
void warn(const Args&... a) { if (enabled(Level::warn)) write(Level::warn, cat(a...)); }
template <typename... Args>
void error(const Args&... a) { write(Level::error, cat(a...)); }

const char* level_name(Level level);

}  // namespace rbdgw::log
