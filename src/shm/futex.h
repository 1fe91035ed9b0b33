// Futex wait/wake on a 32-bit word that may live in memory shared between
// processes (no FUTEX_PRIVATE_FLAG).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>

namespace kvring::detail {

// Sleeps while *word == expected, at most `timeout`. Spurious returns are
// possible; callers re-check their condition.
inline void FutexWait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                      std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return;
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1000000000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1000000000);
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

inline void FutexWakeAll(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

// Called on every poll of a spin loop. Deliberately no PAUSE: measured
// (docs/PERFORMANCE.md), on the Firecracker/KVM guests kvring runs on even one
// PAUSE every 64 polls made a ring round trip 5x slower (p50 ~900 ns against
// ~170 ns without), as pause-loop exiting hands the vCPU back to the host.
// The spin budget, not PAUSE, bounds what spinning costs.
inline void SpinPoll(std::uint32_t) {}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace kvring::detail
