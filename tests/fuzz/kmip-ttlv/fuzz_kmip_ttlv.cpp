// libFuzzer target: lib/kms/kmip_ttlv's decoder on arbitrary bytes, as a
// KMIP server's reply reaches it. It must return an Item or throw
// rbdgw::Error(EBADMSG), never crash, hang or allocate without bound; a
// decoded item must encode back to exactly the input (the encoding is
// canonical: fixed lengths, zero padding).
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "common/error.hpp"
#include "kms/kmip_ttlv.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rbdgw::kms::kmip;
  std::span<const std::uint8_t> in(data, size);
  try {
    if (size >= header_size) (void)message_size(in);
  } catch (const rbdgw::Error& e) {
    if (e.code() != EBADMSG) std::abort();
  }
  try {
    Item it = decode(in);
    if (encode(it) != std::vector<std::uint8_t>(data, data + size)) std::abort();
  } catch (const rbdgw::Error& e) {
    if (e.code() != EBADMSG) std::abort();
  }
  return 0;
}
