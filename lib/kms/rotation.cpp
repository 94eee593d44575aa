#include "kms/rotation.hpp"

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "common/log.hpp"
#include "kms/image_meta.hpp"
#include "kms/volume_encryption.hpp"
#include "rbd/allocation.hpp"
#include "rbd/exclusive_lock.hpp"

namespace rbdgw::kms {
namespace {

using json = nlohmann::json;

constexpr RotationStep kSteps[] = {RotationStep::recorded, RotationStep::added, RotationStep::stored,
                                   RotationStep::removed};

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The DEK store of `k` for this volume (the image metadata, or the KMS).
DEKStore& store_of(EncryptionKMS& k, ImageDEKStore& image_store) {
  if (k.requires_dek_store() == DEKStoreType::metadata) return image_store;
  DEKStore* s = k.integrated_store();
  if (!s) throw Error(EINVAL, cat("KMS '", k.id(), "' claims an integrated DEK store but has none"));
  return *s;
}

// The keyslot `pass` opens, or -1.
int slot_of(const luks::Header& h, const SecretBuffer& pass) {
  try {
    return h.unlock(pass).keyslot;
  } catch (const Error& e) {
    if (e.code() == EPERM) return -1;
    throw;
  }
}

class Rotation {
 public:
  Rotation(const rbd::Cluster& cluster, rbd::Image& image, const std::string& volume_id,
           std::shared_ptr<EncryptionKMS> from, std::shared_ptr<EncryptionKMS> to,
           const RotateOptions& o)
      : cluster_(cluster), img_(image), vol_(volume_id), from_(std::move(from)), to_(std::move(to)),
        o_(o), store_(image, volume_id), what_(cat("volume ", volume_id, " (image ", image.spec(), ")")) {}

  RotateResult run();

 private:
  void say(std::string_view m) const {
    if (o_.progress)
      o_.progress(m);
    else
      log::info(what_, ": rotate-key: ", m);
  }
  void record(RotationStep s) {
    rec_.step = s;
    img_.set_meta(meta_rotation_key, rotation_to_json(rec_));
    if (o_.after_step) o_.after_step(s);
  }
  luks::Header read_header() const {
    return luks::Header::read(rbd::raw_reader(img_), img_.spec());
  }
  // Applies `change` to the header in the image, crash-safely.
  template <class F>
  void change_header(luks::Header& h, F change) {
    const auto before = h.bytes();
    change(h);
    // write_back's order (new keyslot material, then the headers, then the
    // areas no longer used) is only crash-safe if it is also the order in
    // which the writes reach RADOS: a flush after each, since the pieces may
    // lie in different objects and librbd's cache may write them back in
    // any order.
    h.write_back(before, [&](std::span<const std::uint8_t> buf, std::uint64_t off) {
      img_.write(off, buf.data(), buf.size());
      img_.flush();
    });
    result_.header_changed = true;
  }
  void refuse_if_in_use();
  void lock();
  void point_to(EncryptionKMS& kms_now, EncryptionKMS& kms_before, const std::string& wrapped);
  RotateResult rewrap_only();
  void forward(luks::Header& h, const SecretBuffer& p_new, const SecretBuffer* p_old);
  RotateResult roll_back();

  const rbd::Cluster& cluster_;
  rbd::Image& img_;
  std::string vol_;
  std::shared_ptr<EncryptionKMS> from_, to_;
  const RotateOptions& o_;
  ImageDEKStore store_;
  std::string what_;
  RotationRecord rec_;
  RotateResult result_;
};

// Another client that has the image open: a gateway (mapped anywhere), a
// reader, rbd-nbd, a VM. A dead rotate-key or gateway of this node that
// still holds the lock is taken over by lock() (its watch is its own).
void Rotation::refuse_if_in_use() {
  const std::string node = o_.node.empty() ? rbd::host_name() : o_.node;
  const auto owner = rbd::lock_owner(img_);
  if (owner && !rbd::owns_lock(img_)) {
    std::string why;
    if (!rbd::provably_dead(*owner, node, &why))
      throw Error(EBUSY, cat(rbd::in_use_message(img_, *owner), "; unmap it before rotating its key (",
                             why, ")"));
  }
  const auto self = static_cast<std::int64_t>(rados_get_instance_id(cluster_.handle()));
  std::string others;
  for (const auto& w : img_.watchers())
    if (w.id != self && !(owner && w.addr == owner->client)) others += cat(others.empty() ? "" : ", ", w.addr);
  if (!others.empty())
    throw Error(EBUSY, cat(what_, ": open by another client (", others,
                           "): mapped read-only, rbd map, a VM...; unmap it before rotating its key "
                           "(a client that died lets go within about 30 s)"));
}

void Rotation::lock() {
  rbd::Holder me = rbd::this_process(o_.node.empty() ? rbd::host_name() : o_.node);
  rbd::acquire_for_life(img_, me);
}

// Makes `now` the volume's KMS: its wrapped DEK in its store, the other's
// store forgets it, the KMS ID recorded.
void Rotation::point_to(EncryptionKMS& now, EncryptionKMS& before, const std::string& wrapped) {
  DEKStore& s_now = store_of(now, store_);
  DEKStore& s_before = store_of(before, store_);
  s_now.store_dek(vol_, wrapped);
  if (&s_now != &s_before) s_before.remove_dek(vol_);
  img_.set_meta(meta_kms_id_key, now.id());
}

// encryptionPrepared without a LUKS2 header yet: only the DEK moves.
RotateResult Rotation::rewrap_only() {
  VolumeEncryption ve(from_, img_, vol_);
  ve.rewrap(to_);
  img_.set_meta(meta_kms_id_key, to_->id());
  say(cat("no LUKS2 header yet: re-wrapped the DEK with KMS '", to_->id(), "'"));
  return result_;
}

// Steps added, stored, removed and the end, from rec_.step on.
void Rotation::forward(luks::Header& h, const SecretBuffer& p_new, const SecretBuffer* p_old) {
  if (rec_.step < RotationStep::added) {
    rec_.new_slot = slot_of(h, p_new);
    if (rec_.new_slot < 0) {
      if (!p_old)
        throw Error(EPERM, cat(what_, ": the new passphrase opens no keyslot yet and the old one is "
                                      "needed to add it: give the old KMS ID ('", rec_.from, "') and its secret"));
      const luks::Pbkdf pbkdf = o_.pbkdf ? *o_.pbkdf : h.keyslot_pbkdf(rec_.old_slot);
      change_header(h, [&](luks::Header& x) { rec_.new_slot = x.add_passphrase(*p_old, p_new, pbkdf); });
      say(cat("added keyslot ", rec_.new_slot, " for the new passphrase"));
    } else {
      say(cat("the new passphrase already opens keyslot ", rec_.new_slot));
    }
    record(RotationStep::added);
  }
  if (rec_.step < RotationStep::stored) {
    point_to(*to_, *from_, rec_.new_wrapped);
    say(cat("stored the new DEK with KMS '", rec_.to, "'"));
    record(RotationStep::stored);
  }
  if (rec_.step < RotationStep::removed) {
    if (rec_.old_slot != rec_.new_slot && h.keyslot_active(rec_.old_slot)) {
      if (slot_of(h, p_new) != rec_.new_slot)
        throw Error(EIO, cat(what_, ": keyslot ", rec_.new_slot, " no longer opens with the new "
                                    "passphrase; not removing keyslot ", rec_.old_slot));
      change_header(h, [&](luks::Header& x) { x.destroy_keyslot(rec_.old_slot); });
      say(cat("destroyed the old keyslot ", rec_.old_slot));
    }
    // The old passphrase may open other keyslots too (ceph-csi's rotation
    // first copies it to a spare one, so one of its rotations stopped there
    // leaves it twice): each goes, or the old secret would still open.
    for (int slot; p_old && (slot = slot_of(h, *p_old)) >= 0 && slot != rec_.new_slot;) {
      if (slot_of(h, p_new) != rec_.new_slot)
        throw Error(EIO, cat(what_, ": keyslot ", rec_.new_slot, " no longer opens with the new "
                                    "passphrase; not removing keyslot ", slot));
      change_header(h, [&](luks::Header& x) { x.destroy_keyslot(slot); });
      say(cat("destroyed keyslot ", slot, ", which the old passphrase opened too"));
    }
    record(RotationStep::removed);
  }
  img_.remove_meta(meta_rotation_key);
  result_.old_slot = rec_.old_slot;
  result_.new_slot = rec_.new_slot;
}

// The record's `to` is our `from_`: back to the record's `from` (our to_),
// which needs the old keyslot still there. When the new keyslot exists the
// roll-back is recorded first as the rotation the other way (from the
// record's `to` to its `from`, both keyslots there: step added) and then
// run forward like any rotation: killed in its middle, the record says
// which KMS opens, and rerunning the original rotation is refused as
// another rotation in progress instead of destroying the old keyslot
// while the store already holds the old DEK again.
RotateResult Rotation::roll_back() {
  luks::Header h = read_header();
  SecretBuffer p_old = to_->decrypt_dek(vol_, rec_.old_wrapped);
  if (!h.keyslot_active(rec_.old_slot) || slot_of(h, p_old) != rec_.old_slot)
    throw Error(EPERM, cat(what_, ": cannot roll back the rotation from KMS '", rec_.from, "' to '", rec_.to,
                           "': the old keyslot ", rec_.old_slot, " is gone (step ", step_name(rec_.step),
                           "); finish it: rotate-key --kms-id ", rec_.from, " --new-kms-id ", rec_.to));
  int new_slot = rec_.new_slot;
  if (new_slot < 0) {  // killed between adding it and recording it?
    try {
      new_slot = slot_of(h, from_->decrypt_dek(vol_, rec_.new_wrapped));
    } catch (const Error& e) {
      log::warn(what_, ": rotate-key: cannot tell whether the new keyslot was added: ", e.what());
    }
  }
  if (new_slot >= 0 && new_slot != rec_.old_slot && h.keyslot_active(new_slot)) {
    RotationRecord back;
    back.from = rec_.to;
    back.to = rec_.from;
    back.old_wrapped = rec_.new_wrapped;
    back.new_wrapped = rec_.old_wrapped;
    back.old_slot = new_slot;
    back.new_slot = rec_.old_slot;
    back.started = utc_now();
    rec_ = std::move(back);
    record(RotationStep::added);
    forward(h, p_old, nullptr);
  } else {
    point_to(*to_, *from_, rec_.old_wrapped);
    img_.remove_meta(meta_rotation_key);
    result_.old_slot = new_slot;
    result_.new_slot = rec_.old_slot;
  }
  say(cat("rolled back: KMS '", to_->id(), "' and keyslot ", result_.new_slot, " again"));
  result_.rolled_back = true;
  return result_;
}

RotateResult Rotation::run() {
  if (img_.read_only()) throw Error(EROFS, cat(what_, ": rotate-key needs a read-write handle"));
  if (!from_ || !to_) throw Error(EINVAL, cat(what_, ": rotate-key: no KMS given"));
  const EncryptionState st = get_state(img_);
  if (st == EncryptionState::none || st == EncryptionState::requires_encryption)
    throw Error(EINVAL, cat(what_, ": not an encrypted volume with a DEK (state '", state_value(st), "')"));
  refuse_if_in_use();

  if (auto r = read_rotation(img_)) {
    rec_ = *r;
    if (rec_.to == from_->id() && rec_.from == to_->id() && rec_.from != rec_.to) {
      lock();
      say(cat("rolling back the rotation from KMS '", rec_.from, "' to '", rec_.to, "' begun ", rec_.started,
              " (step ", step_name(rec_.step), ")"));
      return roll_back();
    }
    if (rec_.to != to_->id())
      throw Error(EBUSY, cat(what_, ": a rotation from KMS '", rec_.from, "' to '", rec_.to, "' begun ",
                             rec_.started, " stopped after step ", step_name(rec_.step),
                             "; finish it (rotate-key --kms-id ", rec_.from, " --new-kms-id ", rec_.to,
                             ") or roll it back (--kms-id ", rec_.to, " --new-kms-id ", rec_.from, ")"));
    SecretBuffer p_new = to_->decrypt_dek(vol_, rec_.new_wrapped);
    std::optional<SecretBuffer> p_old;
    if (from_->id() == rec_.from) {
      try {
        p_old = from_->decrypt_dek(vol_, rec_.old_wrapped);
      } catch (const Error&) {
        if (rec_.step < RotationStep::added) throw;
      }
    }
    lock();
    say(cat("finishing the rotation from KMS '", rec_.from, "' to '", rec_.to, "' begun ", rec_.started,
            " (stopped after step ", step_name(rec_.step), ")"));
    luks::Header h = read_header();
    result_.resumed = true;
    forward(h, p_new, p_old ? &*p_old : nullptr);
    return result_;
  }

  // Nothing changes until everything is checked: the old secret opens the
  // volume, the new KMS wraps and unwraps.
  std::optional<luks::Header> h;
  try {
    h.emplace(read_header());
  } catch (const Error& e) {
    if (e.code() != EINVAL || st != EncryptionState::prepared) throw;
  }
  if (!h) {
    lock();
    return rewrap_only();
  }
  SecretBuffer p_old = VolumeEncryption(from_, img_, vol_).passphrase();
  rec_.old_slot = slot_of(*h, p_old);
  if (rec_.old_slot < 0)
    throw Error(EPERM, cat(what_, ": the passphrase of KMS '", from_->id(), "' opens no keyslot of its LUKS2 "
                                  "header (is it the volume's KMS?)"));
  SecretBuffer p_new;
  {
    const SecretBuffer fresh = new_volume_passphrase();
    rec_.new_wrapped = to_->encrypt_dek(vol_, fresh);
    p_new = to_->decrypt_dek(vol_, rec_.new_wrapped);  // the default KMS gives its own passphrase
  }
  if (p_new.empty()) throw Error(EINVAL, cat(what_, ": KMS '", to_->id(), "' gave an empty passphrase"));
  rec_.from = from_->id();
  rec_.to = to_->id();
  {
    auto w = store_of(*from_, store_).fetch_dek(vol_);
    rec_.old_wrapped = w && !w->empty() ? *w : from_->encrypt_dek(vol_, p_old);
  }
  if (!o_.pbkdf) (void)h->keyslot_pbkdf(rec_.old_slot);  // ENOTSUP before anything is written
  rec_.started = utc_now();
  lock();
  // The lock may have waited for a concurrent writer: read the header again.
  h.emplace(read_header());
  if (slot_of(*h, p_old) != rec_.old_slot)
    throw Error(EBUSY, cat(what_, ": its LUKS2 header changed while rotate-key started; run it again"));
  say(cat("rotating from KMS '", rec_.from, "' (keyslot ", rec_.old_slot, ") to KMS '", rec_.to, "'"));
  record(RotationStep::recorded);
  forward(*h, p_new, &p_old);
  return result_;
}

}  // namespace

const char* step_name(RotationStep s) {
  switch (s) {
    case RotationStep::recorded: return "recorded";
    case RotationStep::added: return "added";
    case RotationStep::stored: return "stored";
    case RotationStep::removed: return "removed";
  }
  return "?";
}

std::string rotation_to_json(const RotationRecord& r) {
  return json{{"version", 1},           {"from", r.from},         {"to", r.to},
              {"oldDEK", r.old_wrapped}, {"newDEK", r.new_wrapped}, {"oldSlot", r.old_slot},
              {"newSlot", r.new_slot},   {"step", step_name(r.step)}, {"started", r.started}}
      .dump();
}

RotationRecord rotation_from_json(const std::string& text, std::string_view object) {
  try {
    const json j = json::parse(text);
    if (j.at("version").get<int>() != 1)
      throw Error(EBADMSG, cat(object, ": ", meta_rotation_key, " has version ", j.at("version").dump(),
                               "; this rbdgw knows version 1"));
    RotationRecord r;
    r.from = j.at("from").get<std::string>();
    r.to = j.at("to").get<std::string>();
    r.old_wrapped = j.at("oldDEK").get<std::string>();
    r.new_wrapped = j.at("newDEK").get<std::string>();
    r.old_slot = j.at("oldSlot").get<int>();
    r.new_slot = j.at("newSlot").get<int>();
    r.started = j.at("started").get<std::string>();
    const std::string step = j.at("step").get<std::string>();
    bool known = false;
    for (RotationStep s : kSteps)
      if (step == step_name(s)) r.step = s, known = true;
    if (!known) throw Error(EBADMSG, cat(object, ": ", meta_rotation_key, ": unknown step '", step, "'"));
    if (r.old_slot < 0) throw Error(EBADMSG, cat(object, ": ", meta_rotation_key, ": no old keyslot"));
    return r;
  } catch (const json::exception& e) {
    throw Error(EBADMSG, cat(object, ": malformed ", meta_rotation_key, ": ", e.what()));
  }
}

std::optional<RotationRecord> read_rotation(const rbd::Image& image) {
  auto v = image.get_meta(meta_rotation_key);
  if (!v) return std::nullopt;
  return rotation_from_json(*v, cat("image ", image.spec()));
}

std::optional<std::string> rotation_wrapped_for(const rbd::Image& image, const std::string& kms_id) {
  std::optional<RotationRecord> r;
  try {
    r = read_rotation(image);
  } catch (const Error& e) {
    if (e.code() != EBADMSG) throw;
    log::warn(e.what(), "; ignored: the DEK is read from its store");  // rotate-key refuses it
  }
  if (!r) return std::nullopt;
  // The new passphrase opens from step added on, and is the one to use
  // once stored; the old one opens until step removed.
  if (kms_id == r->to && r->step >= RotationStep::stored) return r->new_wrapped;
  if (kms_id == r->from && r->step < RotationStep::removed) return r->old_wrapped;
  if (kms_id == r->to && r->step >= RotationStep::added) return r->new_wrapped;
  if (kms_id == r->from)
    throw Error(EPERM, cat("image ", image.spec(), ": its key was rotated from KMS '", r->from, "' to KMS '",
                           r->to, "' (the old keyslot is gone; rotate-key stopped before its very end: run "
                           "it again to finish); use KMS '", r->to, "'"));
  return std::nullopt;
}

RotateResult rotate_key(const rbd::Cluster& cluster, rbd::Image& image, const std::string& volume_id,
                        std::shared_ptr<EncryptionKMS> from, std::shared_ptr<EncryptionKMS> to,
                        const RotateOptions& opts) {
  return Rotation(cluster, image, volume_id, std::move(from), std::move(to), opts).run();
}

}  // namespace rbdgw::kms
