// The waiting rule (src/shm/spin_wait.h): budgets that shrink when spinning does
// not pay and regrow when it does, a spin that ends once the thread was off
// its core, and the oversubscription hint read from the kernel.
#include "shm/spin_wait.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kvring::detail {
namespace {

using namespace std::chrono_literals;

struct ResetShrink {
  ResetShrink() { SpinShrink() = 0; }
  ~ResetShrink() { SpinShrink() = 0; }
};

// Polls a spin of `max` allows. A spin this thread is descheduled in ends
// early by design (a loaded test machine does that now and then, and under
// TSan a long spin takes many milliseconds): such a try is not counted, and
// the next one is made after a short sleep, so that it starts on a fresh time
// slice (the budget is unchanged: Done is not called).
std::uint64_t PollsUntilGiven(std::uint64_t max) {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(1ms);  // not a synchronisation: a fresh time slice
    SpinWait sw(max);
    std::uint64_t n = 0;
    while (sw.Again()) ++n;
    if (!sw.descheduled()) return n;
  }
  ADD_FAILURE() << "descheduled in 1000 spins in a row";
  return 0;
}

TEST(SpinWait, SpinsItsBudgetOfPollsThenStops) {
  ResetShrink reset;
  EXPECT_EQ(PollsUntilGiven(1000), 1000u);
}

TEST(SpinWait, WaitsThatNeverPayShrinkTheThreadsBudgetAndPayingOnesRegrowIt) {
  ResetShrink reset;
  for (unsigned i = 0; i < kMaxSpinShrink + 5; ++i) {
    SpinWait sw(1 << 16);
    sw.Done(false, 1ms);  // an idle waiter's wait that nothing ended: spinning did not pay
  }
  EXPECT_EQ(SpinShrink(), kMaxSpinShrink);
  EXPECT_EQ(PollsUntilGiven(1 << 16), (1u << 16) >> kMaxSpinShrink);
  for (unsigned i = 0; i < kMaxSpinShrink; ++i) {
    SpinWait sw(1 << 16);
    ASSERT_TRUE(sw.Again());
    sw.Done(true);  // met while spinning
  }
  EXPECT_EQ(SpinShrink(), 0u);
  EXPECT_EQ(PollsUntilGiven(1 << 16), 1u << 16);
}

TEST(SpinWait, AConditionMetLongAfterTheSpinEndedShrinksOnlyAnIdleWaitersBudget) {
  ResetShrink reset;
  {
    SpinWait sw(8);
    while (sw.Again()) {
    }
    // The condition comes long after the spin (a sleep stands for the futex
    // wait that followed): a spin of the full maximum would not have caught it.
    std::this_thread::sleep_for(2 * kMinUsefulSpin + 5ms);
    sw.Done(true, kMinUsefulSpin);
  }
  EXPECT_EQ(SpinShrink(), 1u);
  // A ring consumer cannot tell that from idleness: its budget stays.
  for (bool met : {true, false}) {
    SpinWait sw(8);
    while (sw.Again()) {
    }
    std::this_thread::sleep_for(2 * kMinUsefulSpin + 5ms);
    sw.Done(met);
  }
  EXPECT_EQ(SpinShrink(), 1u);
}

TEST(SpinWait, ASpinEndsOnceTheThreadWasOffItsCore) {
  ResetShrink reset;
  SpinWait sw(std::uint64_t{1} << 40);
  std::uint64_t polls = 0;
  bool again = true;
  while (again && polls < 1000 * kClockEvery) {
    again = sw.Again();
    ++polls;
    // Off the core for longer than kDescheduledGap, as when the kernel runs
    // another thread here (the sleep is the stimulus, not a synchronisation).
    if (polls == 100) std::this_thread::sleep_for(2 * kDescheduledGap);
  }
  EXPECT_FALSE(again);
  EXPECT_TRUE(sw.descheduled());
  EXPECT_LE(polls, 100 + kClockEvery + 1);  // noticed at the next clock read
  sw.Done(true);                             // even met, a descheduled spin did not pay
  EXPECT_EQ(SpinShrink(), 1u);
}

TEST(SpinWait, OversubscriptionIsSeenWhenMoreProcessesRunThanCores) {
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  ASSERT_GT(cores, 0);
  std::vector<pid_t> spinners;
  for (long i = 0; i < 3 * cores + 2; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      alarm(30);  // never outlives a test that died
      std::atomic<std::uint64_t> n{0};
      for (;;) n.fetch_add(1, std::memory_order_relaxed);
    }
    spinners.push_back(pid);
  }
  // The kernel's count of runnable threads is sampled; look for up to 5 s.
  bool seen = false;
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (!seen && std::chrono::steady_clock::now() < until) {
    seen = CpuOversubscribed();
    std::this_thread::yield();
  }
  for (pid_t pid : spinners) kill(pid, SIGKILL);
  for (pid_t pid : spinners) waitpid(pid, nullptr, 0);
  EXPECT_TRUE(seen);
}

}  // namespace
}  // namespace kvring::detail
