// Cross-process transport benchmarks. Two processes, pinned to CPUs 0 and 1,
// share one MAP_SHARED mapping; the child echoes or drains.
//
//   BM_Floor_CacheLinePingPong     the floor: a bare atomic word bounced between the cores
//   BM_Floor_FutexPingPong         the blocking floor: a bare futex wake there and back, both
//                                  sides asleep (what BM_Ring_PingPong_Blocking cannot beat)
//   BM_Ring_PingPong_Spin          64-byte record there and back over two kvring rings, spinning
//   BM_Ring_PingPong_Blocking      the same, both sides asleep on a futex between messages
//   BM_BoostSpsc_PingPong          boost::lockfree::spsc_queue of fixed 64-byte elements, spinning
//   BM_Ring_Throughput/64, /4096   one-way records/s, producer publishing every 32 records
//   BM_BoostSpsc_Throughput        one-way 64-byte elements/s
//   BM_Zmq_ReqRep_PingPong         ZeroMQ ipc:// REQ/REP, 64-byte message (LMCache's transport)
//   BM_Zmq_PushPull_Throughput     ZeroMQ ipc:// PUSH/PULL, one-way 64-byte messages/s
//
// Round trips report p50/p99/p99.9 in ns as counters (per-iteration clock
// reads are included in every row alike, the floor too).
#include <benchmark/benchmark.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/lockfree/spsc_queue.hpp>
#include <zmq.h>
#include <chrono>
#include <cstring>
#include <new>
#include <vector>

#include "bench_util.h"
#include "shm/futex.h"
#include "kvring/shm/ring.h"

namespace {

using namespace kvring::ring;
using namespace kvring::bench;

void BM_Floor_CacheLinePingPong(benchmark::State& state) { CacheLinePingPong(state); }
BENCHMARK(BM_Floor_CacheLinePingPong)->UseRealTime()->MinTime(1.0);

// The word counts hand-offs: odd = the child's turn, even = the parent's.
// Each side sleeps in FUTEX_WAIT until the other stores its turn and wakes it.
void WaitForTurn(std::atomic<std::uint32_t>* word, std::uint32_t turn) {
  for (std::uint32_t v; (v = word->load(std::memory_order_acquire)) != turn;)  // pairs with PassTurn
    kvring::detail::FutexWait(word, v, std::chrono::seconds(1));
}
void PassTurn(std::atomic<std::uint32_t>* word, std::uint32_t turn) {
  word->store(turn, std::memory_order_release);  // pairs with WaitForTurn's acquire
  kvring::detail::FutexWakeAll(word);
}

void BM_Floor_FutexPingPong(benchmark::State& state) {
  auto* word = new (SharedMap(4096)) std::atomic<std::uint32_t>(0);
  std::uint32_t turn = 0;
  RoundTripsBetweenCores(
      state,
      [word] {
        for (std::uint32_t t = 1;; t += 2) {
          WaitForTurn(word, t);
          PassTurn(word, t + 1);
        }
      },
      [word, &turn] {
        PassTurn(word, ++turn);
        WaitForTurn(word, ++turn);
      });
}
BENCHMARK(BM_Floor_FutexPingPong)->UseRealTime()->MinTime(1.0);

// ---- kvring rings ------------------------------------------------------------------

constexpr std::size_t kCap = 1 << 16;
constexpr std::uint32_t kType = 1;  // any type but padding (0)

template <bool kBlocking>
void RingPingPong(benchmark::State& state) {
  char* mem = static_cast<char*>(SharedMap(2 * RegionBytes(kCap)));
  void* a = mem;                      // parent -> child
  void* b = mem + RegionBytes(kCap);  // child -> parent
  (void)InitializeRegion(a, kCap);
  (void)InitializeRegion(b, kCap);
  const std::uint32_t spin = kBlocking ? 0 : UINT32_MAX;
  const auto wait = std::chrono::seconds(10);
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    Consumer in(a, kCap, DefaultMaxRecord(kCap));
    Producer out(b, kCap, DefaultMaxRecord(kCap));
    for (;;) {
      if (!in.WaitForData(wait, spin)) continue;
      Record r;
      while (in.Peek(&r) == PollResult::kRecord) {
        (void)out.TryWrite(r.payload, kType);
        in.Release();
      }
      in.PublishHead();
      out.Publish();
    }
  }
  Pin(0);
  Producer out(a, kCap, DefaultMaxRecord(kCap));
  Consumer in(b, kCap, DefaultMaxRecord(kCap));
  std::array<std::uint8_t, 64> msg{};
  std::vector<std::int64_t> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) {
    auto t0 = Clock::now();
    (void)out.TryWrite(msg, kType);
    out.Publish();
    while (!in.WaitForData(wait, spin)) {}
    in.Drain(1, SIZE_MAX, [](const Record&) {});
    if (ns.size() < ns.capacity()) ns.push_back((Clock::now() - t0).count());
  }
  ReportPercentiles(state, ns);
}
void BM_Ring_PingPong_Spin(benchmark::State& state) { RingPingPong<false>(state); }
void BM_Ring_PingPong_Blocking(benchmark::State& state) { RingPingPong<true>(state); }
BENCHMARK(BM_Ring_PingPong_Spin)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_Ring_PingPong_Blocking)->UseRealTime()->MinTime(1.0);

void BM_Ring_Throughput(benchmark::State& state) {
  const std::size_t size = static_cast<std::size_t>(state.range(0));
  constexpr std::size_t kBigCap = 1 << 20;
  void* region = SharedMap(RegionBytes(kBigCap));
  (void)InitializeRegion(region, kBigCap);
  auto* done = new (SharedMap(4096)) std::atomic<std::uint64_t>(0);
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    Consumer in(region, kBigCap, DefaultMaxRecord(kBigCap));
    std::uint64_t n = 0;
    volatile std::uint8_t sink = 0;
    for (;;) {
      n += in.Drain(256, SIZE_MAX, [&](const Record& r) {
        // Read every cache line of it, as a decoder would.
        std::uint8_t sum = 0;
        for (std::size_t i = 0; i < r.payload.size(); i += kCacheLine) sum = static_cast<std::uint8_t>(sum + r.payload[i]);
        sink = sum;
      });
      done->store(n, std::memory_order_release);  // pairs with the parent's acquire
    }
  }
  Pin(0);
  Producer out(region, kBigCap, DefaultMaxRecord(kBigCap));
  std::vector<std::uint8_t> msg(size, 7);
  std::uint64_t sent = 0;
  for (auto _ : state) {
    while (out.TryWrite(msg, kType) != ClaimResult::kOk) out.Publish();
    if (++sent % 32 == 0) out.Publish();
  }
  out.Publish();
  while (done->load(std::memory_order_acquire) < sent) {}  // count only delivered records
  state.SetItemsProcessed(static_cast<std::int64_t>(sent));
  state.SetBytesProcessed(static_cast<std::int64_t>(sent * size));
}
BENCHMARK(BM_Ring_Throughput)->Arg(64)->Arg(4096)->UseRealTime()->MinTime(1.0);

// ---- boost::lockfree::spsc_queue, fixed 64-byte elements -----------------------------

using Elem = std::array<std::uint8_t, 64>;
using BoostQueue = boost::lockfree::spsc_queue<Elem, boost::lockfree::capacity<1024>>;

void BM_BoostSpsc_PingPong(benchmark::State& state) {
  char* mem = static_cast<char*>(SharedMap(2 * sizeof(BoostQueue) + 128));
  auto* to_child = new (mem) BoostQueue();
  auto* to_parent = new (mem + sizeof(BoostQueue) + 64) BoostQueue();
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    Elem e;
    for (;;)
      if (to_child->pop(e)) while (!to_parent->push(e)) {}
  }
  Pin(0);
  Elem e{};
  std::vector<std::int64_t> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) {
    auto t0 = Clock::now();
    while (!to_child->push(e)) {}
    while (!to_parent->pop(e)) {}
    if (ns.size() < ns.capacity()) ns.push_back((Clock::now() - t0).count());
  }
  ReportPercentiles(state, ns);
}
BENCHMARK(BM_BoostSpsc_PingPong)->UseRealTime()->MinTime(1.0);

void BM_BoostSpsc_Throughput(benchmark::State& state) {
  auto* q = new (SharedMap(sizeof(BoostQueue) + 64)) BoostQueue();
  auto* done = new (SharedMap(4096)) std::atomic<std::uint64_t>(0);
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    Elem e;
    std::uint64_t n = 0;
    for (;;) {
      while (q->pop(e)) ++n;
      done->store(n, std::memory_order_release);  // pairs with the parent's acquire
    }
  }
  Pin(0);
  Elem e{};
  std::uint64_t sent = 0;
  for (auto _ : state) {
    while (!q->push(e)) {}
    ++sent;
  }
  while (done->load(std::memory_order_acquire) < sent) {}
  state.SetItemsProcessed(static_cast<std::int64_t>(sent));
  state.SetBytesProcessed(static_cast<std::int64_t>(sent * sizeof(Elem)));
}
BENCHMARK(BM_BoostSpsc_Throughput)->UseRealTime()->MinTime(1.0);

// ---- ZeroMQ over ipc:// ---------------------------------------------------------------

std::string ZmqEndpoint(const char* what) {
  return "ipc:///tmp/kvring-bench-" + std::to_string(getpid()) + "-" + what;
}

void BM_Zmq_ReqRep_PingPong(benchmark::State& state) {
  const std::string ep = ZmqEndpoint("reqrep");
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    void* ctx = zmq_ctx_new();
    void* rep = zmq_socket(ctx, ZMQ_REP);
    zmq_bind(rep, ep.c_str());
    char buf[64];
    for (;;) {
      int n = zmq_recv(rep, buf, sizeof buf, 0);
      if (n >= 0) zmq_send(rep, buf, static_cast<std::size_t>(n), 0);
    }
  }
  Pin(0);
  void* ctx = zmq_ctx_new();
  void* req = zmq_socket(ctx, ZMQ_REQ);
  zmq_connect(req, ep.c_str());  // ZeroMQ queues until the child has bound
  char msg[64] = {};
  std::vector<std::int64_t> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) {
    auto t0 = Clock::now();
    zmq_send(req, msg, sizeof msg, 0);
    zmq_recv(req, msg, sizeof msg, 0);
    if (ns.size() < ns.capacity()) ns.push_back((Clock::now() - t0).count());
  }
  ReportPercentiles(state, ns);
  zmq_close(req);
  zmq_ctx_term(ctx);
  unlink(ep.substr(6).c_str());
}
BENCHMARK(BM_Zmq_ReqRep_PingPong)->UseRealTime()->MinTime(1.0);

void BM_Zmq_PushPull_Throughput(benchmark::State& state) {
  const std::string ep = ZmqEndpoint("pushpull");
  auto* done = new (SharedMap(4096)) std::atomic<std::uint64_t>(0);
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    void* ctx = zmq_ctx_new();
    void* pull = zmq_socket(ctx, ZMQ_PULL);
    zmq_bind(pull, ep.c_str());
    char buf[64];
    std::uint64_t n = 0;
    for (;;) {
      if (zmq_recv(pull, buf, sizeof buf, 0) >= 0) ++n;
      done->store(n, std::memory_order_release);  // pairs with the parent's acquire
    }
  }
  Pin(0);
  void* ctx = zmq_ctx_new();
  void* push = zmq_socket(ctx, ZMQ_PUSH);
  zmq_connect(push, ep.c_str());
  char msg[64] = {};
  std::uint64_t sent = 0;
  for (auto _ : state) {
    zmq_send(push, msg, sizeof msg, 0);
    ++sent;
  }
  while (done->load(std::memory_order_acquire) < sent) {}
  state.SetItemsProcessed(static_cast<std::int64_t>(sent));
  state.SetBytesProcessed(static_cast<std::int64_t>(sent * sizeof msg));
  zmq_close(push);
  zmq_ctx_term(ctx);
  unlink(ep.substr(6).c_str());
}
BENCHMARK(BM_Zmq_PushPull_Throughput)->UseRealTime()->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
