#include "kms/wrapped_dek.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>

#include "common/base64.hpp"
#include "common/error.hpp"

namespace rbdgw::kms {

namespace {

using json = nlohmann::json;

// Go's encoding/json: an exact field name first, then one in any case.
const json* find_field(const json& obj, const std::string& name) {
  if (auto it = obj.find(name); it != obj.end()) return &*it;
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& k = it.key();
    if (k.size() == name.size() &&
        std::equal(k.begin(), k.end(), name.begin(),
                   [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
      return &*it;
  }
  return nullptr;
}

}  // namespace

std::string encode_wrapped_dek(std::span<const std::uint8_t> dek, std::span<const std::uint8_t> nonce) {
  // nlohmann::json keeps keys sorted: {"dek":...,"nonce":...} as Go writes it.
  return json{{"dek", base64::encode(dek)}, {"nonce", base64::encode(nonce)}}.dump();
}

WrappedDek decode_wrapped_dek(const std::string& wrapped, const std::string& what) {
  json doc = json::parse(wrapped, nullptr, false);
  if (doc.is_discarded() || !doc.is_object())
    throw Error(EBADMSG, cat(what, ": not a JSON object with \"dek\" and \"nonce\""));
  auto field = [&](const char* name) {
    const json* f = find_field(doc, name);
    if (!f || !f->is_string())
      throw Error(EBADMSG, cat(what, ": field \"", name, "\" is missing or not a string"));
    try {
      return base64::decode(f->get_ref<const std::string&>(), base64::Alphabet::standard,
                            cat(what, ": field \"", name, "\""));
    } catch (const Error& e) {
      throw Error(EBADMSG, e.what());
    }
  };
  WrappedDek out;
  out.dek = field("dek");
  out.nonce = field("nonce");
  return out;
}

}  // namespace rbdgw::kms
