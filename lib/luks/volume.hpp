// LUKS2 on block devices through dm-crypt, as the design names the calls:
// LuksFormat, LuksOpen, LuksClose, LuksStatus. Callers name mappings
// "luks-<volume-id>" (so /dev/mapper/luks-<volume-id>).
//
// Hosts without device-mapper (/dev/mapper/control missing or not backed by
// a kernel driver, as in containers and on these VMs): LuksOpen, LuksClose
// and LuksStatus fail with Error(ENOTSUP) saying so, before touching
// anything; the userspace path (the luks2 filter) is the way there.
//
// Thread safety: the functions may be called concurrently on different
// devices and names; libcryptsetup serialises access to one device with
// its metadata locks.
#pragma once

#include <cstdint>
#include <string>

#include "crypto/secret.hpp"
#include "luks/header.hpp"

namespace rbdgw::luks {

// Formats `device` (block device or file) as LUKS2 aes-xts-plain64 with one
// keyslot for passphrase. Overwrites the start of the device: the caller
// checks that it is blank (probe()).
void LuksFormat(const std::string& device, const SecretBuffer& passphrase,
                const FormatOptions& opts = {});

struct OpenOptions {
  bool read_only = false;
  bool allow_discards = false;  // pass discards down (dm-crypt allow_discards)
};

// True if this host has device-mapper (/dev/mapper/control opens).
bool device_mapper_available();

// Maps /dev/mapper/<name> onto the LUKS2 `device` with dm-crypt and returns
// that path. Already active on the same device: returns its path (EEXIST if
// <name> maps another device). EPERM for a wrong passphrase.
std::string LuksOpen(const std::string& device, const std::string& name,
                     const SecretBuffer& passphrase, const OpenOptions& opts = {});

// Removes the mapping <name>; returns false if it was not active.
// deferred: if it is still in use (a lazily unmounted filesystem that has
// not let go yet), the kernel removes it when the last user closes it.
bool LuksClose(const std::string& name, bool deferred = false);

struct MappingStatus {
  std::string name;
  bool active = false;
  // Only when active:
  std::string cipher;          // e.g. "aes-xts-plain64"
  std::uint32_t key_bits = 0;
  std::uint32_t sector_size = 0;
  std::string backing_device;  // e.g. "/dev/nbd0"
  std::uint64_t offset = 0;    // data offset on the backing device, bytes
  bool read_only = false;
};

// The state of mapping <name> (active == false when it does not exist).
MappingStatus LuksStatus(const std::string& name);

// "luks-x: not active" or "luks-x: active, aes-xts-plain64 512-bit key,
// 4096-byte sectors, on /dev/nbd0 at offset 16777216".
std::string describe(const MappingStatus& s);

}  // namespace rbdgw::luks
