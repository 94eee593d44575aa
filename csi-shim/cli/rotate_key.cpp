#include "rotate_key.hpp"

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "common/error.hpp"
#include "kms/image_meta.hpp"
#include "kms/rotation.hpp"
#include "rbd/image.hpp"

namespace rbdgw::cli {
namespace {

// RBDGW_TEST_PAUSE_AT=<step> (recorded|added|stored|removed): after that
// step the process says so on stderr and stops itself (SIGSTOP), so that a
// test can kill -9 it there. Harmless: SIGCONT goes on where it stopped.
void pause_hook(kms::RotationStep s) {
  const char* at = std::getenv("RBDGW_TEST_PAUSE_AT");
  if (!at || std::string_view(at) != kms::step_name(s)) return;
  std::cerr << "rbdgw: test hook: stopped after step " << kms::step_name(s) << std::endl;
  std::raise(SIGSTOP);
}

}  // namespace

int rotate_key(const RotateKeyArgs& a) {
  auto cluster = rbd::Cluster::connect(a.cluster);
  auto img = rbd::Image::open(cluster, a.image);
  std::string from_id;
  if (a.from_id) {
    from_id = *a.from_id;
  } else if (auto rec = kms::read_rotation(img)) {
    from_id = rec->from;
  } else if (auto id = img.get_meta(kms::meta_kms_id_key)) {
    from_id = *id;
  } else {
    throw Error(EINVAL, cat(a.image.str(), ": its metadata names no KMS ID (",
                            kms::meta_kms_id_key, "); give the current one with --kms-id"));
  }
  // Both KMSes first: a wrong config or a missing secret changes nothing.
  auto from = a.build(from_id, false);
  auto to = a.build(a.to_id, true);
  kms::RotateOptions o;
  o.pbkdf = a.pbkdf;
  o.node = a.node;
  o.after_step = pause_hook;
  o.progress = a.progress;
  const auto r = kms::rotate_key(cluster, img, a.volume_id, from, to, o);
  if (a.progress) {
    if (r.rolled_back)
      a.progress(cat("rolled back the key rotation of ", a.image.str(), ": KMS '", to->id(), "' again"));
    else if (!r.header_changed && r.old_slot < 0)
      a.progress(cat("re-wrapped the DEK of ", a.image.str(), " with KMS '", to->id(), "'"));
    else
      a.progress(cat(r.resumed ? "finished the key rotation of " : "rotated the key of ", a.image.str(),
                     ": KMS '", to->id(), "', keyslot ", r.new_slot,
                     r.old_slot == r.new_slot ? " (unchanged)" : cat(" (keyslot ", r.old_slot, " destroyed)")));
  }
  return 0;
}

}  // namespace rbdgw::cli
