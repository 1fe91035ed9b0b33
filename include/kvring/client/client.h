// The worker-side client library: what a serving process (one per GPU) links
// to talk to a kvring controller on the same machine.
//
//   auto w = kvring::client::Worker::Connect(options);   // attach + RegisterMsg
//   (*w)->Admit("LocalCPUBackend", chunk_hash);           // queued, batched per location
//   auto hit = (*w)->Lookup(hashes, 5ms);                 // BatchedP2PLookupMsg, blocking
//   (*w)->Tick();                                         // timers: flush, heartbeat, full sync
//
// Events: admits and evicts are queued per location in call order and sent as
// BatchedKVOperationMsg when a location holds `batch_ops` of them, when Tick()
// finds the oldest older than `flush_interval`, on Flush(), and before any
// request. Sequence numbers are assigned per location at send time, from 0,
// as LMCache's BatchedMessageSender does. Each batch is msgpack-encoded
// straight into the request ring.
//
// Requests (register, heartbeat, P2P lookup, full-sync start/status) wait for
// their reply with a deadline. Replies come back in request order; a reply
// that missed its deadline is skipped when it arrives, so it can never be
// taken for the answer to a later request.
//
// Controller restarts: when the controller process goes away (the attach
// socket tells at once), the next call reattaches to the controller of the
// same name, re-registers through a heartbeat and full-syncs every location
// it has used, with keys from `keys_of` (the engine's own cache is the truth,
// as in LMCache). Full sync follows LMCache's FullSyncSender: Start (retried),
// batches of `full_sync_batch_keys`, End, then Status polls until the
// controller says the worker may leave freeze (resending missing batches).
//
// Commands: the controller relays an orchestrator's Clear, Pin, Compress,
// Decompress, Move, Health and CheckFinish to the workers of an instance as
// ControlMsgs. The Worker runs the handler registered for each (in
// WorkerOptions::handlers) and sends back the ControlRetMsg it returns; a
// missing handler answers ErrorMsg("Unknown message: ...") and a handler that
// throws answers ErrorMsg("Worker error: ..."), as LMCache's worker does.
// Handlers run inside Tick() (or on the background ticker, which the
// controller wakes at once when a command arrives), without the Worker's
// mutex: a handler may call Evict() and the other members.
//
// Thread-safety: every public member may be called from several threads; one
// internal mutex serialises them (a lookup holds it while it waits for its
// reply, so lookups from several threads take turns; a Lookup waits for it
// no longer than its own timeout). keys_of is called without that mutex (it
// may call the Worker), from the thread that runs Tick() or Heartbeat().
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvring/protocol/messages.h"
#include "kvring/status.h"

namespace kvring::client {

// What a serving engine does when the controller relays an orchestrator's
// command; each returns the ControlRetMsg to send back (or throws).
struct CommandHandlers {
  std::function<protocol::ClearWorkerRetMsg(const protocol::ClearWorkerMsg&)> clear;
  std::function<protocol::PinWorkerRetMsg(const protocol::PinWorkerMsg&)> pin;
  std::function<protocol::CompressWorkerRetMsg(const protocol::CompressWorkerMsg&)> compress;
  std::function<protocol::DecompressWorkerRetMsg(const protocol::DecompressWorkerMsg&)> decompress;
  std::function<protocol::MoveWorkerRetMsg(const protocol::MoveWorkerMsg&)> move;
  std::function<protocol::HealthWorkerRetMsg(const protocol::HealthWorkerMsg&)> health;
  std::function<protocol::CheckFinishWorkerRetMsg(const protocol::CheckFinishWorkerMsg&)> check_finish;
};

// The answer a worker sends for one command message: the handler's reply, or
// the ErrorMsg LMCache's worker would send. (Exposed for tests and tools.)
protocol::Message AnswerCommand(const CommandHandlers& handlers, const protocol::Message& command);

struct WorkerOptions {
  std::string controller = "kvring";  // the controller's name
  std::string instance_id;            // LMCache's lmcache_instance_id
  std::int64_t worker_id = 0;         // the TP rank
  std::string ip = "127.0.0.1";
  std::int64_t port = 0;
  std::optional<std::string> peer_init_url;  // null: this worker serves no P2P transfers
  std::chrono::milliseconds attach_timeout{2000};
  // The uid the controller must run as (transport::ConnectOptions); unset:
  // $KVRING_CONTROLLER_UID, else this process's effective uid.
  std::optional<unsigned> controller_uid;
  std::chrono::milliseconds request_timeout{2000};  // one request's reply, or room in a full ring
  // Polls of the reply ring before a waiting request sleeps on its futex: a
  // lookup's reply usually comes within microseconds, and a futex wake-up
  // costs more than that (about 16 us here). 0: sleep at once.
  std::uint32_t reply_spin = 200000;
  std::size_t batch_ops = 256;                      // a location's queue is sent at this size
  std::chrono::microseconds flush_interval{10000};  // ... or when its oldest op is this old (Tick)
  std::chrono::milliseconds heartbeat_interval{0};  // 0: the controller's (RegisterRetMsg)
  std::size_t full_sync_batch_keys = 2000;
  std::chrono::milliseconds full_sync_status_poll{20};
  int full_sync_max_polls = 500;
  int full_sync_start_retries = 3;
  bool reattach = true;  // follow a restarted controller
  // The keys this worker holds at `location`, for a full sync.
  std::function<std::vector<std::uint64_t>(const std::string& location)> keys_of;
  // Locations to full-sync besides those this client has sent events for.
  std::vector<std::string> sync_locations;
  CommandHandlers handlers;
};

struct P2PHit {
  std::string instance_id;  // empty: no peer holds hashes[0]
  std::string location;
  std::uint64_t num_hit_chunks = 0;
  std::string peer_init_url;
};

struct WorkerCounters {
  std::uint64_t ops_sent = 0;
  std::uint64_t batches_sent = 0;
  std::uint64_t lookups = 0;
  std::uint64_t heartbeats = 0;
  std::uint64_t full_syncs = 0;
  std::uint64_t full_sync_status_polls = 0;  // FullSyncStatusMsg sent (while the controller keeps workers in freeze)
  std::uint64_t reattaches = 0;
  std::uint64_t late_replies_skipped = 0;
  std::uint64_t commands_handled = 0;
};

class Worker {
 public:
  // Attaches (waiting up to attach_timeout for the controller) and registers.
  static Result<std::unique_ptr<Worker>> Connect(WorkerOptions options);
  ~Worker();  // Close(), best effort
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void Admit(std::string_view location, std::uint64_t key);
  void Evict(std::string_view location, std::uint64_t key);
  // Many at once, in order (one lock): what a Python caller's array becomes.
  void Admit(std::string_view location, std::span<const std::uint64_t> keys);
  void Evict(std::string_view location, std::span<const std::uint64_t> keys);
  // Sends every queued op (waits for ring space up to request_timeout).
  Status Flush();
  // Which peer holds the longest prefix of `hashes` (BatchedP2PLookupMsg).
  Result<P2PHit> Lookup(std::span<const std::uint64_t> hashes, std::chrono::milliseconds timeout);
  // Timer work: flushes old queues, heartbeats when due (acting on the
  // commands: full sync), reattaches after a controller restart, and answers
  // the controller's pending ControlMsgs with the handlers.
  Status Tick();
  // One heartbeat now, acting on its commands.
  Status Heartbeat();
  // Flushes and deregisters; later calls fail.
  Status Close();
  // Runs Tick() on a thread of the Worker's own every flush_interval, and at
  // once when the controller sends a command, until Close() or destruction.
  void StartBackgroundTicks();

  WorkerCounters counters() const;
  bool attached() const;

 private:
  struct Impl;
  explicit Worker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// An orchestrator's connection: many requests in flight at once, from any
// number of threads, each answered by its own reply however the controller
// orders them (requests travel as framing::kRequest records with an id; a
// reader thread of the Orchestrator's own hands each reply to its caller).
// If the controller goes away, every waiting and later request fails with
// kUnavailable: connect again.
//
// Thread-safety: every member may be called from any thread.
class Orchestrator {
 public:
  static Result<std::unique_ptr<Orchestrator>> Connect(const std::string& name, std::chrono::milliseconds attach_timeout);
  ~Orchestrator();
  Orchestrator(const Orchestrator&) = delete;
  Orchestrator& operator=(const Orchestrator&) = delete;

  // One LMCache message (an OrchMsg, a BatchedP2PLookupMsg, ...) and its reply.
  Result<protocol::Message> Request(const protocol::Message& request, std::chrono::milliseconds timeout);
  // One kvring control request (JSON, e.g. {"op":"stats"}) and its JSON reply.
  Result<std::string> Control(const std::string& request_json, std::chrono::milliseconds timeout);
  bool alive() const;

 private:
  struct Impl;
  explicit Orchestrator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Attaches as an orchestrator, sends one LMCache message (LookupMsg,
// QueryWorkerInfoMsg, ...) to controller `name` and returns its reply: what
// `kvring lookup` and `kvring workers` use.
Result<protocol::Message> OrchestratorRequest(const std::string& name, const protocol::Message& request,
                                              std::chrono::milliseconds timeout);

// Sends one kvring control request (JSON, e.g. {"op":"stats"}) to controller
// `name` and returns its JSON reply: what `kvring stats` uses.
Result<std::string> ControlRequest(const std::string& name, const std::string& request_json,
                                   std::chrono::milliseconds timeout);
// One counter of the controller's stats reply (e.g. "kv_ops_total"), for
// tools and benchmarks that watch the controller work.
Result<std::uint64_t> StatsCounter(const std::string& name, const std::string& counter,
                                   std::chrono::milliseconds timeout);

}  // namespace kvring::client
