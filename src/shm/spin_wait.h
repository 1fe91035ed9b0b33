// Waiting that gives way: a spin budget that adapts per thread, an end to a
// spin as soon as the thread finds it was descheduled, and a hint for when
// the machine has more runnable threads than cores.
//
// Why: a waiter spins because the answer is usually microseconds away, on
// another core. With more runnable threads than cores that is false, and the
// spin takes the very core the answer needs (8 load workers on 2 cores made
// the controller's ingest fall to a fifth of one worker's). The signals:
//   - being descheduled: consecutive clock reads inside a spin loop are well
//     under a microsecond apart; a gap over kDescheduledGap means the kernel
//     ran something else on this core meanwhile (another thread wanted it, or
//     the hypervisor took the vCPU). The spin ends at once. Free: the clock
//     is a vDSO read every kClockEvery polls.
//   - paying off: a wait whose condition came during the spin, or soon
//     enough after it that a spin of the caller's full maximum would have
//     caught it, doubles the thread's budget (up to that maximum); one that
//     was descheduled halves it, and so does, for a waiter whose waits start
//     when it is otherwise idle (the controller), one that waited longer. A
//     ring consumer cannot tell its idle time from its waits, so for it a
//     late condition or a timeout changes nothing (an orchestrator's reader
//     thread, idle between requests, would otherwise shrink its spin to
//     nothing and then pay a scheduler tick per reply).
//   - oversubscription: CpuOversubscribed() (a /proc/loadavg read at most
//     every 10 ms per thread) tells a waiter to yield for a while before it
//     sleeps on a futex (ring.cc, SpinThenSleep), unless the peer it waits
//     for is seen running (its progress word moves): then a yield would only
//     hand this core to another process until that one's slice ends, long
//     after the answer came.
// No PAUSE: on the Firecracker/KVM guests kvring runs on, pause-loop exiting
// hands the vCPU back to the host (see futex.h, SpinPoll).
//
// Thread-safety: a SpinWait is used by one thread; the adaptive budget is
// thread_local, shared by the spins of one thread.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace kvring::detail {

inline constexpr std::chrono::nanoseconds kDescheduledGap{50'000};
inline constexpr std::chrono::nanoseconds kMinUsefulSpin{10'000};
inline constexpr unsigned kMaxSpinShrink = 12;  // a budget shrinks to max / 4096 at most
inline constexpr std::uint64_t kClockEvery = 8;  // polls between two clock reads
// How long a waiter on an oversubscribed machine yields before it sleeps.
inline constexpr std::chrono::microseconds kYieldPhase{1000};
// A peer's progress word that has not moved for this long means the peer is
// not running (descheduled, or asleep): a waiter then yields rather than
// polls. Longer than the controller's longest ordinary pass.
inline constexpr std::chrono::microseconds kProgressStill{20};

// Whether more threads are runnable than there are cores (the machine's
// count of runnable threads in /proc/loadavg, the caller included), read at
// most every 10 ms per thread (a read costs ~1 us). Spinning then only takes
// a core from a thread that is waiting for one. spin_wait.cc.
bool CpuOversubscribed();

// How much of a caller's maximum this thread may spin: max >> shrink.
inline unsigned& SpinShrink() {
  thread_local unsigned shrink = 0;
  return shrink;
}

// One wait: poll while Again(), then (if still not ready) sleep, then Done().
class SpinWait {
 public:
  using Clock = std::chrono::steady_clock;

  // `max_polls`: the most this spin may poll when spinning pays off.
  explicit SpinWait(std::uint64_t max_polls)
      : start_(Clock::now()),
        last_(start_),
        budget_(std::max<std::uint64_t>(1, max_polls >> SpinShrink())) {}

  // Whether to poll again: false once the thread's budget of polls is spent
  // or the thread was descheduled while spinning (then the caller should
  // sleep rather than spin on: someone else wants this core).
  bool Again() {
    if (polls_ >= budget_ || descheduled_) return End();
    if (++polls_ % kClockEvery == 0) {
      const Clock::time_point now = Clock::now();
      if (now - last_ > kDescheduledGap) {
        descheduled_ = true;
        return End();
      }
      last_ = now;
    }
    return true;
  }

  bool descheduled() const { return descheduled_; }

  // The caller ends the spin by a rule of its own (then sleeps).
  void Stop() { (void)End(); }

  // The wait's outcome, for the thread's budget, for a waiter that cannot
  // tell idle time from waiting time (a ring consumer that waits in a loop,
  // idle or not): the budget shrinks only when the thread was descheduled
  // while spinning (the sure sign that spinning took a core someone wanted),
  // and grows when a spin of the caller's full maximum would have caught the
  // condition (estimated from this spin's polls per second). A timeout, or a
  // condition that came long after, changes nothing: that was idleness.
  void Done(bool met) const {
    unsigned& s = SpinShrink();
    if (descheduled_) {
      s = std::min(s + 1, kMaxSpinShrink);
      return;
    }
    if (!met) return;
    bool caught = !ended_;
    if (!caught && polls_ > 0) {
      const auto full_spin = std::chrono::duration_cast<Clock::duration>(
          (spin_end_ - start_) * (static_cast<double>(budget_ << s) / static_cast<double>(polls_)));
      caught = Clock::now() - start_ <= std::max<Clock::duration>(full_spin, kMinUsefulSpin);
    }
    if (caught) s = s > 0 ? s - 1 : 0;
  }

  // This spin's full maximum in time, estimated from its polls per second.
  Clock::duration EstimatedFullSpin() const {
    if (polls_ == 0) return Clock::duration::zero();
    const Clock::time_point end = ended_ ? spin_end_ : Clock::now();
    return std::chrono::duration_cast<Clock::duration>(
        (end - start_) * (static_cast<double>(budget_ << SpinShrink()) / static_cast<double>(polls_)));
  }

  // The same for a waiter whose wait starts with what it waits for: a reply
  // to the request just sent, room the consumer is making, the controller's
  // idle passes, the ZeroMQ front's reply spin. There a condition that came
  // later than `full_spin` (the caller's maximum in time), or never, means
  // spinning does not pay at this traffic, and the budget shrinks too.
  void Done(bool met, Clock::duration full_spin) const {
    unsigned& s = SpinShrink();
    bool paid = met && !descheduled_;
    if (paid && ended_) paid = Clock::now() - start_ <= std::max<Clock::duration>(full_spin, kMinUsefulSpin);
    if (paid)
      s = s > 0 ? s - 1 : 0;
    else
      s = std::min(s + 1, kMaxSpinShrink);
  }

 private:
  bool End() {
    if (!ended_) {
      ended_ = true;
      spin_end_ = Clock::now();
    }
    return false;
  }

  Clock::time_point start_, last_, spin_end_{};
  std::uint64_t budget_, polls_ = 0;
  bool descheduled_ = false, ended_ = false;
};

}  // namespace kvring::detail
