// The key rotation record (kms/rotation.hpp) in image metadata: what a
// killed rotate-key leaves for the next run and for map. A malformed or
// unknown record is EBADMSG naming the key, never a guess.
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "common/error.hpp"
#include "kms/rotation.hpp"

namespace rbdgw::kms {
namespace {

RotationRecord sample() {
  RotationRecord r;
  r.from = "A";
  r.to = "kmip-1";
  r.old_wrapped = R"({"dek":"b2xk","nonce":"bm9uY2U="})";
  r.new_wrapped = "";  // the default KMS stores nothing
  r.old_slot = 0;
  r.new_slot = 3;
  r.step = RotationStep::stored;
  r.started = "2026-12-01T16:00:00Z";
  return r;
}

TEST(RotationRecord, RoundTrips) {
  const RotationRecord r = sample();
  const RotationRecord back = rotation_from_json(rotation_to_json(r), "image rbd/x");
  EXPECT_EQ(back.from, r.from);
  EXPECT_EQ(back.to, r.to);
  EXPECT_EQ(back.old_wrapped, r.old_wrapped);
  EXPECT_EQ(back.new_wrapped, r.new_wrapped);
  EXPECT_EQ(back.old_slot, 0);
  EXPECT_EQ(back.new_slot, 3);
  EXPECT_EQ(back.step, RotationStep::stored);
  EXPECT_EQ(back.started, r.started);
}

TEST(RotationRecord, EveryStepHasItsName) {
  for (RotationStep s : {RotationStep::recorded, RotationStep::added, RotationStep::stored,
                         RotationStep::removed}) {
    RotationRecord r = sample();
    r.step = s;
    EXPECT_EQ(rotation_from_json(rotation_to_json(r), "x").step, s) << step_name(s);
  }
}

void expect_bad(const std::string& text, const std::string& part) {
  try {
    rotation_from_json(text, "image rbd/x");
    ADD_FAILURE() << "accepted: " << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EBADMSG) << e.what();
    const std::string m = e.what();
    EXPECT_NE(m.find("image rbd/x"), std::string::npos) << m;
    EXPECT_NE(m.find(part), std::string::npos) << "'" << part << "' not in: " << m;
  }
}

TEST(RotationRecord, MalformedRecordsAreRefusedNamingTheKey) {
  const std::string good = rotation_to_json(sample());
  const auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  expect_bad("", meta_rotation_key);
  expect_bad("{", meta_rotation_key);
  expect_bad("[]", meta_rotation_key);
  expect_bad(with("\"version\":1", "\"version\":2"), "version 2");
  expect_bad(with("\"step\":\"stored\"", "\"step\":\"halfway\""), "halfway");
  expect_bad(with("\"oldSlot\":0", "\"oldSlot\":-1"), "old keyslot");
  expect_bad(with("\"oldSlot\":0", "\"oldSlot\":\"0\""), meta_rotation_key);
  expect_bad(with("\"from\":\"A\",", ""), meta_rotation_key);
}

}  // namespace
}  // namespace rbdgw::kms
