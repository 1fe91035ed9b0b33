// Helpers shared by the cross-process benchmarks: CPU pinning, shared
// anonymous mappings, a forked child that is killed with the benchmark, a
// forked controller process, the steady ingest loop, round trip percentiles,
// and the floor every cross-process latency is judged against (a bare cache
// line bounced between the same two cores).
#pragma once

#include <benchmark/benchmark.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <sys/prctl.h>

#include "kvring/client/client.h"
#include "kvring/controller/controller.h"
#include "kvring/index/index.h"

namespace kvring::bench {

using Clock = std::chrono::steady_clock;

inline void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))), &set);
  sched_setaffinity(0, sizeof set, &set);
}

// Every thread of process `pid` (0: this thread only) may run on every
// online CPU but `avoid` (-1: on all of them). Threads the process makes
// later inherit the mask of the thread that makes them.
inline void AvoidCpu(pid_t pid, int avoid) {
  const int cpus = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c = 0; c < cpus; ++c)
    if (c != avoid || cpus == 1) CPU_SET(c, &set);
  if (pid == 0) return void(sched_setaffinity(0, sizeof set, &set));
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec))
    sched_setaffinity(static_cast<pid_t>(std::stol(task.path().filename().string())), sizeof set, &set);
}

// Resident bytes of process `pid` (0: this one), from /proc/<pid>/statm
// (its second field, in pages); 0 if it cannot be read.
inline std::size_t ResidentBytes(pid_t pid = 0) {
  const std::string path = pid ? "/proc/" + std::to_string(pid) + "/statm" : "/proc/self/statm";
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  const bool ok = std::fscanf(f, "%lu %lu", &size, &resident) == 2;
  std::fclose(f);
  return ok ? resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

inline void* SharedMap(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  return p;
}

struct Child {
  pid_t pid = -1;
  int stop_signal = SIGKILL;  // SIGTERM for a controller: it removes its segments (RunController)
  Child() = default;
  Child(const Child&) = delete;
  ~Child() { Stop(); }
  void Stop() {
    if (pid > 0) {
      kill(pid, stop_signal);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
};

// In a forked child: runs `ctl` until SIGTERM, then returns (the caller
// destroys the controller, which marks its segments closed for the clients).
template <typename Controller>
void RunController(Controller& ctl, std::uint32_t spin_passes) {
  static std::atomic<bool> stop{false};
  static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");
  signal(SIGTERM, [](int) { stop.store(true, std::memory_order_relaxed); });  // relaxed: a flag
  ctl.Run(stop, spin_passes);
}

// What a forked controller process does besides serving, each run in the child.
struct ControllerHooks {
  // Before the controller starts: options beyond the name (feeds, index
  // reserve, ...). Objects the controller refers to must outlive it: keep
  // them in the caller's frame (the child has its own copy of it).
  std::function<void(controller::Options&)> configure;
  // Once it serves (e.g. a stats source, an HTTP server's thread).
  std::function<void(controller::Controller&)> started;
  // After SIGTERM, before the controller is destroyed.
  std::function<void()> stopping;
};

// Forks a controller process named `name` (no full sync on start), pinned to
// `cpu` after configure() (-1: unpinned), running with `spin_passes`
// (UINT32_MAX: spins as a dedicated controller core; 1: sleeps at once when
// idle) until `child` is destroyed (SIGTERM: it removes its segments). It
// dies with the thread that forked it (PR_SET_PDEATHSIG).
//
// Fork early: a child forked while other threads of this process run
// inherits any lock they held (ASan's allocator lock hung such a child in
// cluster_test); benchmarks are release builds, whose glibc malloc is
// fork-safe, but a benchmark still forks its controllers before it starts
// threads of its own where it can.
inline void ForkController(Child& child, const std::string& name, int cpu, std::uint32_t spin_passes,
                           const ControllerHooks& hooks = {}) {
  child.stop_signal = SIGTERM;
  child.pid = fork();
  if (child.pid != 0) return;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  controller::Options o;
  o.listen.name = name;
  o.full_sync_on_start = false;
  if (hooks.configure) hooks.configure(o);
  if (cpu >= 0) Pin(cpu);
  auto ctl = controller::Controller::Start(o);
  if (!ctl.ok()) {
    std::fprintf(stderr, "controller %s: %s\n", name.c_str(), ctl.status().ToString().c_str());
    _exit(1);
  }
  if (hooks.started) hooks.started(**ctl);
  RunController(**ctl, spin_passes);
  if (hooks.stopping) hooks.stopping();
  ctl = Status(ErrorKind::kUnavailable, "stopped");  // removes the segments
  _exit(0);
}

// The steady ingest every ingest figure is taken with: `keys` keys admitted
// through `w` first (not timed), `after_prefill()` run, then per iteration
// 32 Ki fresh keys admitted and the 32 Ki oldest evicted (the index stays at
// `keys`), closed by a heartbeat (its reply comes after every event before
// it was applied, so an iteration's time covers applying its ops).
template <typename AfterPrefill>
void SteadyChurnIngest(benchmark::State& state, client::Worker& w, std::size_t keys, AfterPrefill after_prefill) {
  const char* const location = "LocalCPUBackend";
  std::uint64_t next = 0, oldest = 0;
  for (; next < keys; ++next) w.Admit(location, index::ChunkIndex::Mix(next));
  if (!w.Heartbeat().ok()) state.SkipWithError("prefill failed");
  after_prefill();
  constexpr std::size_t kOpsPerIteration = 1 << 16;
  for (auto _ : state) {
    for (std::size_t i = 0; i < kOpsPerIteration / 2; ++i) {
      w.Admit(location, index::ChunkIndex::Mix(next++));
      w.Evict(location, index::ChunkIndex::Mix(oldest++));
    }
    if (!w.Heartbeat().ok()) state.SkipWithError("heartbeat failed");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kOpsPerIteration));
}

// The memory floor of an index operation: for each of `n` fresh random keys
// per iteration, the two cache lines a probe touches (a random 16-byte slot
// and the line after it) in a 256 MiB table, prefetched `ahead` keys ahead,
// with nothing else to do: read (a lookup) or read and written (an admit or
// evict). `huge`: the table on 2 MiB huge pages, else on 4 KiB pages (a page
// walk per probe). `lines` = 1: one random line a key instead (what any
// layout must read at least: the floor of a one-line probe).
inline void RandomLinePairsFloor(benchmark::State& state, std::size_t n, bool huge, std::size_t ahead, bool write,
                                 std::size_t lines = 2) {
  constexpr std::size_t kBytes = std::size_t{256} << 20, kHuge = std::size_t{2} << 20;
  void* raw = mmap(nullptr, kBytes + 2 * kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return state.SkipWithError("mmap failed");
  auto* table = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(raw) + kHuge - 1) & ~(kHuge - 1));
  (void)madvise(table, kBytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  for (std::size_t off = 0; off < kBytes; off += 4096) table[off] = 1;
  // Fresh random lines every time (a fixed set would end up cached), from
  // the same mixer the index uses: address arithmetic comparable to a probe's.
  const std::size_t second = lines > 1 ? 64 : 0;  // 0: the same line again (already there)
  auto line_of = [&](std::uint64_t c) {
    const std::uint64_t m = index::ChunkIndex::Mix(c);
    return second ? table + (m & (kBytes / 16 - 1)) * 16 : table + (m & (kBytes / 64 - 1)) * 64;
  };
  auto prefetch = [&](std::uint64_t c) {
    __builtin_prefetch(line_of(c));
    if (second) __builtin_prefetch(line_of(c) + second);
  };
  std::uint64_t sink = 0, base = 0;
  for (auto _ : state) {
    for (std::size_t i = 0; i < n && i < ahead; ++i) prefetch(base + i);
    for (std::size_t i = 0; i < n; ++i) {
      if (i + ahead < n) prefetch(base + i + ahead);
      unsigned char* p = line_of(base + i);
      if (write) {
        ++p[0];
        ++p[second];
      } else {
        sink += p[0] + p[second];
      }
    }
    base += n;
  }
  benchmark::DoNotOptimize(sink);
  munmap(raw, kBytes + 2 * kHuge);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

// The q-quantile of `sorted` (ascending, not empty).
inline double Quantile(const std::vector<std::int64_t>& sorted, double q) {
  return static_cast<double>(sorted[std::min(sorted.size() - 1, static_cast<std::size_t>(q * sorted.size()))]);
}

inline void ReportPercentiles(benchmark::State& state, std::vector<std::int64_t>& ns) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = Quantile(ns, 0.50);
  state.counters["p99_ns"] = Quantile(ns, 0.99);
  state.counters["p999_ns"] = Quantile(ns, 0.999);
}

// Times `ask()` (one round trip) per iteration on CPU 0 while a forked child
// on CPU 1 runs `echo()` (never returns); the caller's affinity is restored
// afterwards, so later benchmarks start unpinned.
template <typename Echo, typename Ask>
void RoundTripsBetweenCores(benchmark::State& state, Echo echo, Ask ask) {
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    Pin(1);
    echo();
    _exit(0);
  }
  cpu_set_t before;
  sched_getaffinity(0, sizeof before, &before);
  Pin(0);
  std::vector<std::int64_t> ns;
  ns.reserve(1 << 20);
  for (auto _ : state) {
    auto t0 = Clock::now();
    ask();
    if (ns.size() < ns.capacity()) ns.push_back((Clock::now() - t0).count());
  }
  sched_setaffinity(0, sizeof before, &before);
  ReportPercentiles(state, ns);
}

// The floor: an atomic word bounced between CPUs 0 (this process) and 1 (a child).
inline void CacheLinePingPong(benchmark::State& state) {
  auto* word = new (SharedMap(4096)) std::atomic<std::uint64_t>(0);
  std::uint64_t v = 0;
  RoundTripsBetweenCores(
      state,
      [word] {
        for (std::uint64_t expect = 1;; expect += 2) {
          while (word->load(std::memory_order_acquire) != expect) {}  // pairs with the parent's release
          word->store(expect + 1, std::memory_order_release);          // pairs with the parent's acquire
        }
      },
      [word, &v] {
        word->store(++v, std::memory_order_release);
        while (word->load(std::memory_order_acquire) != v + 1) {}
        ++v;
      });
}

// A TCP port on 127.0.0.1 free a moment ago (for a server this run starts).
inline int FreePort() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(s);
  return port;
}

// A worker of instance `inst` attached to `controller` (aborts the run if it cannot).
inline std::unique_ptr<client::Worker> Connect(const std::string& controller, const std::string& inst) {
  client::WorkerOptions o;
  o.controller = controller;
  o.instance_id = inst;
  o.peer_init_url = inst + ":8200";
  o.attach_timeout = std::chrono::milliseconds(10000);
  o.request_timeout = std::chrono::milliseconds(10000);
  auto w = client::Worker::Connect(o);
  if (!w.ok()) {
    std::fprintf(stderr, "worker %s: %s\n", inst.c_str(), w.status().ToString().c_str());
    std::abort();
  }
  return std::move(w).value();
}

}  // namespace kvring::bench
