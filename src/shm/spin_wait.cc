#include "shm/spin_wait.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>

namespace kvring::detail {
namespace {

int LoadavgFd() {
  static const int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);  // once per process; -1: never oversubscribed
  return fd;
}

int Cores() {
  static const int n = [] {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? static_cast<int>(online) : 1;
  }();
  return n;
}

// "0.52 0.58 0.59 3/124 12345": the fourth field's numerator.
bool ReadOversubscribed() {
  const int fd = LoadavgFd();
  if (fd < 0) return false;
  char buf[128];
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return false;
  buf[n] = 0;
  const char* p = buf;
  for (int field = 0; field < 3; ++field) {
    while (*p && *p != ' ') ++p;
    while (*p == ' ') ++p;
  }
  char* end = nullptr;
  const long running = std::strtol(p, &end, 10);
  if (end == p || *end != '/') return false;
  return running > Cores();
}

}  // namespace

bool CpuOversubscribed() {
  using Clock = std::chrono::steady_clock;
  thread_local Clock::time_point next{};
  thread_local bool over = false;
  const Clock::time_point now = Clock::now();
  if (now >= next) {
    over = ReadOversubscribed();
    next = now + std::chrono::milliseconds(10);
  }
  return over;
}

}  // namespace kvring::detail
