// The controller options most tests start from: small rings and few shards
// (quick to create, cheap on a 2-core machine), no full sync on start (the
// tests of full sync turn it on).
#pragma once

#include <string>

#include "kvring/controller/controller.h"

namespace kvring::testing {

inline controller::Options SmallController(const std::string& name) {
  controller::Options o;
  o.listen.name = name;
  o.listen.request_capacity = 1 << 16;
  o.listen.reply_capacity = 1 << 14;
  o.index.shard_bits = 2;
  o.full_sync_on_start = false;
  return o;
}

}  // namespace kvring::testing
