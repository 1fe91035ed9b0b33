// The controller core: one thread drains every client's request ring, applies
// KV events to the chunk index, answers registrations, heartbeats and P2P
// lookups into the client's reply ring, and forgets a client's workers when
// the client goes away.
//
// This is the first slice of issue 4: message handling and liveness. Not yet
// here: full sync, orchestrator messages, request-before-bulk scheduling
// across clients beyond per-ring budgets, the eventfd wake-up for a sleeping
// controller, kvringd/client library/load generator.
//
// Hot paths (BatchedKVOperationMsg, BatchedP2PLookupMsg) decode straight from
// ring memory into reused views and encode the reply straight into the reply
// ring: no heap allocation per message once warmed up.
//
// Thread-safety: a Controller belongs to one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvring/index.h"
#include "kvring/p2p.h"
#include "kvring/protocol/codec.h"
#include "kvring/registry.h"
#include "kvring/transport.h"

namespace kvring::controller {

struct Options {
  transport::ListenerOptions listen;
  p2p::Policy policy = p2p::Policy::kLongestPrefix;
  index::Options index;
  std::size_t ring_budget_records = 64;  // per client per pass: one flooder cannot starve others
  std::size_t drop_slice = 4096;         // keys of a departed worker dropped per pass
  double heartbeat_interval_s = 10;      // told to workers in RegisterRetMsg.extra_config
  protocol::DecodeLimits limits;
};

struct Stats {
  std::uint64_t messages = 0;
  std::uint64_t kv_ops = 0;
  std::uint64_t p2p_lookups = 0;
  std::uint64_t errors = 0;            // undecodable, unknown or out-of-place messages
  std::uint64_t dropped_unknown_worker = 0;
  std::uint64_t seq_discontinuities = 0;
  std::uint64_t quarantined_rings = 0;
  std::uint64_t reply_ring_full = 0;
};

class Controller {
 public:
  static Result<std::unique_ptr<Controller>> Start(const Options& options);

  // One pass over transport events and every client's ring. Returns the
  // number of records handled (0: idle).
  std::size_t PollOnce(std::chrono::milliseconds idle_wait = std::chrono::milliseconds(0));
  // Runs passes until `stop`; spins `spin_passes` idle passes, then sleeps in
  // the transport's poll for up to 1 ms at a time.
  void Run(const std::atomic<bool>& stop, std::uint32_t spin_passes = 2000);

  const Stats& stats() const { return stats_; }
  const index::ChunkIndex& index() const { return index_; }
  const registry::Registry& registry() const { return registry_; }
  transport::Listener& listener() { return *listener_; }

 private:
  explicit Controller(const Options& options);
  void HandleRecord(transport::Client& c, std::span<const std::uint8_t> bytes);
  void HandleKvBatch(std::span<const std::uint8_t> bytes);
  void HandleP2P(transport::Client& c, std::span<const std::uint8_t> bytes);
  void HandleGeneric(transport::Client& c, protocol::Message&& m);
  void ApplyOp(std::uint32_t worker, index::HolderId holder, protocol::OpType op, std::uint64_t key,
               const protocol::Int& seq);
  void Reply(transport::Client& c, const protocol::Message& m);
  void ReplyError(transport::Client& c, const std::string& text);
  void ForgetWorker(std::uint32_t worker);
  void ClientGone(std::uint64_t client_id);
  void DropSomeKeys();

  Options options_;
  std::unique_ptr<transport::Listener> listener_;
  registry::Registry registry_;
  index::ChunkIndex index_;
  p2p::Lookup lookup_;
  Stats stats_;
  // Reused buffers of the hot paths.
  protocol::BatchedKVOperationView kv_view_;
  protocol::BatchedP2PLookupView p2p_view_;
  std::vector<std::uint64_t> hashes_;
  protocol::BatchedP2PLookupRetMsg p2p_reply_;
  // Per worker index: the client that registered it, last seq per holder.
  std::vector<std::uint64_t> worker_client_;
  std::vector<std::int64_t> last_seq_;        // per holder; INT64_MIN: none yet
  std::vector<bool> needs_full_sync_;         // per worker
  std::vector<index::HolderId> dropping_;     // holders whose keys are being dropped
};

}  // namespace kvring::controller
