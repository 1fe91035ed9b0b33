// A byte ring (shm/ring.h) over private heap memory, for two threads of one
// process: the region and both sides' handles, owned together. The change
// feed (change_feed.h) and the remote feed (remote_feed.h) are each one of
// these plus their record formats.
//
// Thread-safety: producer() belongs to one thread, consumer() to another
// (the ring's own rule); creation and destruction to the owner, while neither
// side is in use.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "kvring/shm/ring.h"
#include "kvring/status.h"

namespace kvring::feed {

class PrivateRing {
 public:
  // `capacity`: ring bytes, a power of two (records up to a quarter of it).
  // `what` names the ring in errors.
  static Result<PrivateRing> Create(std::size_t capacity, std::string_view what);

  // Bytes published and not yet consumed (any thread: the ring's control words).
  std::size_t pending_bytes() const { return ring::Snapshot(region_.get(), capacity_).pending_bytes(); }
  ring::Producer& producer() { return producer_; }
  ring::Consumer& consumer() { return consumer_; }
  const ring::Consumer& consumer() const { return consumer_; }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  PrivateRing(void* region, std::size_t capacity);

  std::unique_ptr<void, Free> region_;  // the handles below point into it (heap: moves keep it)
  std::size_t capacity_;
  ring::Producer producer_;
  ring::Consumer consumer_;
};

}  // namespace kvring::feed
