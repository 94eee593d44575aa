// Formatting a volume as LUKS2 in userspace: the header is made by
// libcryptsetup on an in-memory copy (Header::format_in_memory) and written
// to the start of the volume, so no block device or device-mapper is needed.
//
// Never over data: the area the header will cover must be blank (all
// zeros), or hold a LUKS2 header when the caller says the volume is tagged
// encryptionPrepared (a format that was interrupted before the volume was
// marked encrypted). Anything else is refused before a byte is written:
// EEXIST for a LUKS1/LUKS2 volume, ENOTEMPTY for a filesystem, a partition
// table or unknown data, with the object and what was found in the message.
//
// Thread safety: the functions keep no state; two formats of one volume
// must not run at the same time (the caller's per-volume lock).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "crypto/secret.hpp"
#include "luks/header.hpp"
#include "rbd/image.hpp"

namespace rbdgw::luks {

// Writes all of buf at `offset` of the volume; throws rbdgw::Error.
using Writer = std::function<void(std::span<const std::uint8_t> buf, std::uint64_t offset)>;

// Formats the volume of volume_size bytes that `read`/`write` access, named
// `object` in errors, with a first keyslot for passphrase. Returns the data
// segment (which starts where the written header area ends). Errors:
// EEXIST/ENOTEMPTY as above, ENOSPC when the volume cannot hold the header
// area and one sector of data, and those of the reader, writer and
// Header::format_in_memory.
Segment format_volume(const Reader& read, const Writer& write, std::uint64_t volume_size,
                      std::string_view object, const SecretBuffer& passphrase,
                      const FormatOptions& opts, bool encryption_prepared);

// format_volume on an RBD image (flushed before returning). Past the header
// area the image must be blank too (rbd::require_blank: no allocated extent,
// or only zeros), or ENOTEMPTY / ENOTSUP as that function says.
Segment format_image(rbd::Image& image, const SecretBuffer& passphrase, const FormatOptions& opts,
                     bool encryption_prepared);

}  // namespace rbdgw::luks
