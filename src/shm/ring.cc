#include "kvring/shm/ring.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstring>
#include <new>

#include "shm/futex.h"
#include "shm/spin_wait.h"

#include <sched.h>

namespace kvring::ring {
namespace {

RingControl* ControlOf(void* region) { return static_cast<RingControl*>(region); }
std::uint8_t* DataOf(void* region) { return static_cast<std::uint8_t*>(region) + kRingDataOffset; }

struct Header {
  std::uint32_t length;
  std::uint32_t type;
};
static_assert(sizeof(Header) == kRecordHeaderBytes);

// A record header is one 8-byte word (length in the low half, type in the
// high half), so it is stored and loaded in one access: it is both the
// record's description and its publication (ring_descriptor.h). Loaded once:
// a faulty peer may be writing it concurrently, only the copy is examined.
Header LoadHeader(const std::uint8_t* p) {
  // acquire: pairs with the release in PublishHeader; the payload below it is then complete.
  const std::uint64_t w = __atomic_load_n(reinterpret_cast<const std::uint64_t*>(p), __ATOMIC_ACQUIRE);
  return Header{static_cast<std::uint32_t>(w), static_cast<std::uint32_t>(w >> 32)};
}
void PublishHeader(std::uint8_t* p, std::uint32_t length, std::uint32_t type) {
  // release: pairs with LoadHeader's acquire; makes the payload written before it visible.
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(p))
      .store(std::uint64_t{length} | std::uint64_t{type} << 32, std::memory_order_release);
}
// Marks a header slot "nothing here yet". Relaxed: the release store of the
// record before it (PublishHeader) orders it for the consumer.
void ClearHeader(std::uint8_t* p) {
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(p)).store(0, std::memory_order_relaxed);
}
// Every rule a record header must follow, in one place for the consumer and
// the read-only inspector. `available`: bytes the record may span from `pos`
// on (what is published, or for the consumer, what is not known to be free).
// Returns whether the header is sound; only a failure builds text (the
// consumer calls this once per record).
bool CheckRecord(const Header& h, std::uint64_t pos, std::size_t offset, std::size_t available,
                 std::size_t capacity, std::size_t max_record, std::string* problem) {
  const std::size_t aligned = Align8(h.length);
  if (h.length < kRecordHeaderBytes || aligned > available || aligned > capacity - offset) {
    *problem = "record at position " + std::to_string(pos) + " has length " + std::to_string(h.length) + " (" +
           std::to_string(available) + " bytes available, " + std::to_string(capacity - offset) +
           " before the end)";
    return false;
  }
  if (h.type == kRecordPadding) {
    if (offset + aligned == capacity) return true;
    *problem = "padding record at position " + std::to_string(pos) + " does not reach the end";
    return false;
  }
  // Any other type is the ring user's to judge (the transport's framing.h).
  if (h.length - kRecordHeaderBytes > max_record) {
    *problem = "record at position " + std::to_string(pos) + " has type " + std::to_string(h.type) +
               " and length " + std::to_string(h.length) + " (max record " + std::to_string(max_record) + ")";
    return false;
  }
  return true;
}

using Clock = std::chrono::steady_clock;

// Makes `value` the published position and wakes the peer if it announced
// that it sleeps. The seq_cst store of the position and the seq_cst load of
// the waiting word pair (Dekker) with the sleeper's seq_cst store of the
// waiting word and load of the position in SpinThenSleep: one of the two
// always sees the other, so a wake-up is never lost. The store is also the
// release that makes the records (or the freed space) visible.
void PublishAndWake(std::atomic<std::uint64_t>* position, std::uint64_t value,
                    std::atomic<std::uint32_t>* peer_waiting) {
  position->store(value, std::memory_order_seq_cst);
  if (peer_waiting->load(std::memory_order_seq_cst) != 0) {
    peer_waiting->store(0, std::memory_order_relaxed);
    detail::FutexWakeAll(peer_waiting);
  }
}

// Polls poll() `spin` times, then announces sleep in `waiting` and sleeps on
// it in slices (a peer that dies without waking costs at most one slice)
// until ready(), broken() or the timeout. ready() is the sleeper's half of
// the Dekker pair (it must load the peer's position with seq_cst after the
// announcement); poll() may be cheaper. Returns whether ready.
template <typename Poll, typename Ready, typename Broken>
bool SpinThenSleep(std::atomic<std::uint32_t>* waiting, std::chrono::nanoseconds timeout,
                   std::uint32_t spin, Poll poll, Ready ready, Broken broken, bool for_reply,
                   const std::atomic<std::uint64_t>* peer_progress = nullptr) {
  if (poll()) return true;
  // The spin gives way (spin_wait.h): at most `spin` polls, fewer when this
  // thread's spins have not been paying, none more once it was descheduled.
  detail::SpinWait sw(spin);
  auto done = [&](bool met) {
    if (for_reply) sw.Done(met, sw.EstimatedFullSpin());
    else sw.Done(met);
  };
  for (std::uint32_t i = 0; sw.Again() && !broken(); ++i) {
    detail::SpinPoll(i);
    if (poll()) {
      done(true);
      return true;
    }
  }
  const auto deadline = Clock::now() + timeout;
  // More runnable threads than cores: yield for a while before sleeping.
  // A yield hands this core to a runnable thread (perhaps the very one that
  // will answer) and costs the answering side nothing, where a futex sleep
  // costs it a wake-up system call, an IPI on a guest: measured with 8 load
  // workers on 2 cores, ingest went from 0.7 to 2-2.8 M ops/s
  // (docs/PERFORMANCE.md "Under CPU contention").
  if (detail::CpuOversubscribed()) {
    const auto yield_until = std::min(deadline, Clock::now() + detail::kYieldPhase);
    // While the peer's progress word moves, the peer runs on another core and
    // the answer is being made: poll. Once it stands still, yield. (Measured
    // with 8 load workers on 2 cores and a controller at --nice -10: lookup
    // p99 4.2 ms with yields alone, ~0.1 ms with this; docs/PERFORMANCE.md.)
    // Relaxed: a hint; the record itself is seen through its header.
    // A word still at 0 has never moved (a controller at normal priority does
    // not store it): it changes nothing. Otherwise the first kProgressStill
    // polls, long enough to see a running peer's word move.
    std::uint64_t seen = peer_progress ? peer_progress->load(std::memory_order_relaxed) : 0;
    Clock::time_point moved_at = Clock::now() - (seen != 0 ? Clock::duration::zero() : detail::kProgressStill);
    while (!broken() && Clock::now() < yield_until) {
      bool peer_runs = false;
      if (peer_progress) {
        const Clock::time_point now = Clock::now();
        if (const std::uint64_t p = peer_progress->load(std::memory_order_relaxed); p != seen) {
          seen = p;
          moved_at = now;
        }
        peer_runs = now - moved_at < detail::kProgressStill;
      }
      if (!peer_runs) sched_yield();
      if (poll()) {
        done(true);
        return true;
      }
    }
  }
  while (!broken()) {
    waiting->store(1, std::memory_order_seq_cst);  // Dekker pair with PublishAndWake
    if (ready()) {
      waiting->store(0, std::memory_order_relaxed);
      done(true);
      return true;
    }
    auto left = deadline - Clock::now();
    if (left <= std::chrono::nanoseconds::zero()) break;
    detail::FutexWait(waiting, 1, std::min<std::chrono::nanoseconds>(left, std::chrono::milliseconds(50)));
  }
  const bool met = !broken() && ready();
  done(met);
  return met;
}

}  // namespace

Status ValidateGeometry(std::size_t capacity, std::size_t max_record) {
  if (capacity < kMinCapacity || capacity > kMaxCapacity || (capacity & (capacity - 1)) != 0)
    return Status(ErrorKind::kInvalidArgument,
                  "ring capacity " + std::to_string(capacity) + " must be a power of two in [" +
                      std::to_string(kMinCapacity) + ", " + std::to_string(kMaxCapacity) + "]");
  if (max_record == 0 || max_record > DefaultMaxRecord(capacity))
    return Status(ErrorKind::kInvalidArgument,
                  "max record " + std::to_string(max_record) + " must be in [1, capacity/4 - 8 = " +
                      std::to_string(DefaultMaxRecord(capacity)) + "]");
  return Status();
}

Status InitializeRegion(void* region, std::size_t capacity) {
  if (Status s = ValidateGeometry(capacity, DefaultMaxRecord(capacity)); !s.ok()) return s;
  auto* ctl = new (region) RingControl;
  ctl->tail.store(0, std::memory_order_relaxed);
  ctl->head.store(0, std::memory_order_relaxed);
  ctl->records_published.store(0, std::memory_order_relaxed);
  ctl->records_consumed.store(0, std::memory_order_relaxed);
  ctl->consumer_waiting.store(0, std::memory_order_relaxed);
  ctl->producer_waiting.store(0, std::memory_order_relaxed);
  // The first record's header slot reads "nothing here yet"; the producer
  // clears every later one before it publishes the record in front of it.
  ClearHeader(DataOf(region));
  // Publication of the region to the peer (the segment's ready word) orders these.
  return Status();
}

// ---- Producer -----------------------------------------------------------------

Producer::Producer(void* region, std::size_t capacity, std::size_t max_record)
    : ctl_(ControlOf(region)), data_(DataOf(region)), capacity_(capacity), max_record_(max_record) {
  // Resume where the ring stands (a re-attached producer continues the stream).
  tail_ = ctl_->tail.load(std::memory_order_relaxed);
  published_ = tail_;
  records_ = ctl_->records_published.load(std::memory_order_relaxed);
  if (tail_ % kRecordAlignment != 0) {
    corruption_ = "tail " + std::to_string(tail_) + " is not 8-aligned";
    return;
  }
  SkipCommittedRecords();
  if (corrupt()) return;
  if (!RefreshHead() && corruption_.empty()) corruption_ = "head is invalid";
}

void Producer::SkipCommittedRecords() {
  // A predecessor may have committed records after the tail it last
  // published: the consumer sees them (a record is visible once its header
  // is), so the stream continues after them rather than over them.
  for (std::size_t walked = 0; walked < capacity_;) {
    const std::size_t offset = static_cast<std::size_t>(tail_ & (capacity_ - 1));
    const Header h = LoadHeader(data_ + offset);
    if (h.length == 0) return;
    if (!CheckRecord(h, tail_, offset, capacity_ - walked, capacity_, max_record_, &corruption_)) return;
    tail_ += Align8(h.length);
    walked += Align8(h.length);
    if (h.type != kRecordPadding) ++records_;
  }
  corruption_ = "no free header slot after tail " + std::to_string(published_);
}

bool Producer::RefreshHead() {
  // seq_cst (a plain load on x86): pairs with Consumer::PublishHead, and is the
  // second half of the Dekker pair in WaitForSpace.
  std::uint64_t head = ctl_->head.load(std::memory_order_seq_cst);
  if (head > tail_ || tail_ - head > capacity_ || head % kRecordAlignment != 0 || head < head_cache_) {
    corruption_ = "consumer position " + std::to_string(head) + " is inconsistent with tail " +
                  std::to_string(tail_);
    return false;
  }
  head_cache_ = head;
  return true;
}

ClaimResult Producer::TryClaim(std::size_t size, std::span<std::uint8_t>* payload) {
  if (corrupt()) return ClaimResult::kCorrupt;
  if (size > max_record_) return ClaimResult::kTooLarge;
  const std::size_t record = Align8(kRecordHeaderBytes + size);
  std::size_t offset = static_cast<std::size_t>(tail_ & (capacity_ - 1));
  std::size_t to_end = capacity_ - offset;
  // The header slot after the record is cleared at commit, so it must be free too.
  std::size_t need = (record <= to_end ? record : to_end + record) + kRecordHeaderBytes;
  if (need > FreeBytes()) {
    if (!RefreshHead()) return ClaimResult::kCorrupt;
    if (need > FreeBytes()) return ClaimResult::kFull;
  }
  if (record > to_end) {
    ClearHeader(data_);  // where the record will start: not yet
    PublishHeader(data_ + offset, static_cast<std::uint32_t>(to_end), kRecordPadding);
    tail_ += to_end;
    offset = 0;
  }
  claim_pos_ = tail_;
  claim_size_ = size;
  claimed_ = true;
  *payload = std::span<std::uint8_t>(data_ + offset + kRecordHeaderBytes, size);
  return ClaimResult::kOk;
}

void Producer::Commit(std::size_t used, std::uint32_t type) {
  if (!claimed_) return;
  if (used > claim_size_) used = claim_size_;
  const std::size_t offset = static_cast<std::size_t>(claim_pos_ & (capacity_ - 1));
  const std::uint64_t next = claim_pos_ + Align8(kRecordHeaderBytes + used);
  ClearHeader(data_ + (next & (capacity_ - 1)));  // the next record: not yet (ordered by the release below)
  PublishHeader(data_ + offset, static_cast<std::uint32_t>(kRecordHeaderBytes + used), type);
  tail_ = next;
  ++records_;
  claimed_ = false;
}

namespace {
const bool kHasCldemote = [] {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 25)) != 0;
#else
  return false;
#endif
}();
}  // namespace

void Producer::DemoteLastRecord() const {
#if defined(__x86_64__)
  if (!kHasCldemote || claimed_ || records_ == 0) return;
  const std::size_t bytes = static_cast<std::size_t>(tail_ - claim_pos_);
  const std::size_t offset = static_cast<std::size_t>(claim_pos_ & (capacity_ - 1));
  // A record never wraps (a padding record takes the end instead).
  for (std::size_t at = offset & ~std::size_t{63}; at < offset + bytes; at += 64)
    asm volatile("cldemote %0" : : "m"(data_[at]));
#endif
}

void Producer::Abort() { claimed_ = false; }  // a padding record already written stays: harmless

ClaimResult Producer::TryWrite(std::span<const std::uint8_t> payload, std::uint32_t type) {
  std::span<std::uint8_t> dst;
  ClaimResult r = TryClaim(payload.size(), &dst);
  if (r != ClaimResult::kOk) return r;
  if (!payload.empty()) std::memcpy(dst.data(), payload.data(), payload.size());
  Commit(payload.size(), type);
  return r;
}

bool Producer::Publish() {
  // Nothing new: no store (a seq_cst store is a full fence) and no one to wake.
  if (tail_ == published_) return false;
  published_ = tail_;
  ctl_->records_published.store(records_, std::memory_order_relaxed);
  PublishAndWake(&ctl_->tail, tail_, &ctl_->consumer_waiting);  // pairs with Consumer::RefreshTail
  return true;
}

bool Producer::WaitForSpace(std::size_t bytes, std::chrono::nanoseconds timeout, std::uint32_t spin) {
  // worst case: padding + record + the next header slot
  const std::size_t need = Align8(kRecordHeaderBytes + bytes) * 2 + kRecordHeaderBytes;
  auto room = [&] { return RefreshHead() && FreeBytes() >= std::min(need, capacity_); };
  return SpinThenSleep(&ctl_->producer_waiting, timeout, spin, room, room, [&] { return corrupt(); }, true);
}

// ---- Consumer -----------------------------------------------------------------

Consumer::Consumer(void* region, std::size_t capacity, std::size_t max_record)
    : ctl_(ControlOf(region)), data_(DataOf(region)), capacity_(capacity), max_record_(max_record) {
  head_ = ctl_->head.load(std::memory_order_relaxed);
  records_ = ctl_->records_consumed.load(std::memory_order_relaxed);
  if (head_ % kRecordAlignment != 0) MarkCorrupt("head " + std::to_string(head_) + " is not 8-aligned");
}

void Consumer::MarkCorrupt(std::string why) {
  if (corruption_.empty()) corruption_ = std::move(why);
}

bool Consumer::RefreshTail() {
  // seq_cst (a plain load on x86): pairs with Producer::Publish, and is the
  // second half of the Dekker pair in WaitForData.
  // The tail never goes back and is never more than a capacity beyond what
  // this consumer has read (the producer writes only into space it freed).
  // The consumer may be ahead of it by any amount: records are visible once
  // committed, and a producer may commit many capacities' worth between two
  // publishes. A tail lagging behind is harmless: nothing is read by it.
  std::uint64_t tail = ctl_->tail.load(std::memory_order_seq_cst);
  if (tail < tail_cache_ || (tail > head_ && tail - head_ > capacity_) || tail % kRecordAlignment != 0) {
    MarkCorrupt("producer position " + std::to_string(tail) + " is inconsistent with head " +
                std::to_string(head_) + " (capacity " + std::to_string(capacity_) + ")");
    return false;
  }
  tail_cache_ = tail;
  return true;
}

PollResult Consumer::Peek(Record* out) {
  if (corrupt()) return PollResult::kCorrupt;
  for (;;) {
    const std::size_t offset = static_cast<std::size_t>(head_ & (capacity_ - 1));
    Header h = LoadHeader(data_ + offset);
    if (h.length == 0) {
      // Nothing committed here. Now and then (the tail's line is the
      // producer's to write: polling it on every empty peek would take it
      // from the producer each time), check that the published tail agrees:
      // a tail beyond this point must mean a record appeared meanwhile (the
      // tail is stored after it).
      if (++empty_peeks_ % kTailCheckPeriod != 0) return PollResult::kEmpty;
      if (!RefreshTail()) return PollResult::kCorrupt;
      if (tail_cache_ <= head_) return PollResult::kEmpty;
      h = LoadHeader(data_ + offset);
      if (h.length == 0) {
        MarkCorrupt("producer position " + std::to_string(tail_cache_) + " is past position " +
                    std::to_string(head_) + ", where no record is");
        return PollResult::kCorrupt;
      }
    }
    if (std::string problem; !CheckRecord(h, head_, offset, capacity_ - offset, capacity_, max_record_, &problem)) {
      MarkCorrupt(std::move(problem));
      return PollResult::kCorrupt;
    }
    const std::size_t aligned = Align8(h.length);
    if (h.type == kRecordPadding) {
      head_ += aligned;
      continue;
    }
    out->type = h.type;
    out->payload = std::span<const std::uint8_t>(data_ + offset + kRecordHeaderBytes,
                                                 h.length - kRecordHeaderBytes);
    peeked_bytes_ = aligned;
    return PollResult::kRecord;
  }
}

bool Consumer::HasRecord() const {
  return !corrupt() && LoadHeader(data_ + static_cast<std::size_t>(head_ & (capacity_ - 1))).length != 0;
}

bool Consumer::HasData() {
  if (corrupt()) return false;
  if (HasRecord()) return true;
  // seq_cst load of the tail inside: the sleeper's half of the Dekker pairs.
  return RefreshTail() && tail_cache_ > head_;
}

void Consumer::Release() {
  head_ += peeked_bytes_;
  peeked_bytes_ = 0;
  ++records_;
}

void Consumer::PublishHead() {
  ctl_->records_consumed.store(records_, std::memory_order_relaxed);
  // The seq_cst store of the head and the seq_cst load of the waiting word
  // pair (Dekker) with the producer's in SpinThenSleep, as in PublishAndWake.
  ctl_->head.store(head_, std::memory_order_seq_cst);  // also pairs with Producer::RefreshHead
  if (ctl_->producer_waiting.load(std::memory_order_seq_cst) == 0) return;
  // A producer waiting for space is woken once half the ring is free, not
  // on every release: a wake-up is a system call here and an IPI (a VM exit
  // on a guest) for the sleeper; with many producers kept waiting by a busy
  // consumer, waking each one per pass cost the consumer ~15 % of its time.
  // No wake-up is lost: a waiting producer adds nothing, the consumer drains
  // what is published, and an empty ring is always half free. (The published
  // tail can lag the records this consumer has read: then it wakes at once.)
  const std::uint64_t tail = ctl_->tail.load(std::memory_order_relaxed);  // an estimate: nothing is read by it
  if (tail > head_ && tail - head_ > capacity_ / 2) return;
  ctl_->producer_waiting.store(0, std::memory_order_relaxed);
  detail::FutexWakeAll(&ctl_->producer_waiting);
}

bool Consumer::WaitForData(std::chrono::nanoseconds timeout, std::uint32_t spin, bool for_reply,
                           const std::atomic<std::uint64_t>* peer_progress) {
  return SpinThenSleep(
      &ctl_->consumer_waiting, timeout, spin, [&] { return HasRecord(); }, [&] { return HasData(); },
      [&] { return corrupt(); }, for_reply, peer_progress);
}

// ---- read-only inspection -------------------------------------------------------

RingSnapshot Snapshot(const void* region, std::size_t capacity) {
  const auto* ctl = static_cast<const RingControl*>(region);
  RingSnapshot s;
  s.tail = ctl->tail.load(std::memory_order_acquire);  // pairs with Producer::Publish
  s.head = ctl->head.load(std::memory_order_acquire);  // pairs with Consumer::PublishHead
  s.records_published = ctl->records_published.load(std::memory_order_relaxed);
  s.records_consumed = ctl->records_consumed.load(std::memory_order_relaxed);
  s.consumer_waiting = ctl->consumer_waiting.load(std::memory_order_relaxed) != 0;
  s.producer_waiting = ctl->producer_waiting.load(std::memory_order_relaxed) != 0;
  // The consumer may run ahead of the published tail, by any amount (what the
  // producer committed and has not published yet: records are visible by
  // their headers).
  if (s.tail > s.head && s.tail - s.head > capacity) s.problem = "more bytes pending than the capacity";
  else if (s.head % kRecordAlignment || s.tail % kRecordAlignment) s.problem = "unaligned position";
  return s;
}

std::string PeekPending(const void* region, std::size_t capacity, std::size_t max_record,
                        std::size_t max_records, const std::function<void(const Record&)>& fn) {
  RingSnapshot s = Snapshot(region, capacity);
  if (!s.problem.empty()) return s.problem;
  const auto* data = static_cast<const std::uint8_t*>(region) + kRingDataOffset;
  std::uint64_t pos = s.head;
  std::size_t n = 0;
  while (pos < s.tail && n < max_records) {
    const std::size_t offset = static_cast<std::size_t>(pos & (capacity - 1));
    const Header h = LoadHeader(data + offset);
    std::string problem;
    if (!CheckRecord(h, pos, offset, static_cast<std::size_t>(s.tail - pos), capacity, max_record, &problem))
      return problem;
    pos += Align8(h.length);
    if (h.type == kRecordPadding) continue;
    Record r{h.type, std::span<const std::uint8_t>(data + offset + kRecordHeaderBytes,
                                                   h.length - kRecordHeaderBytes)};
    fn(r);
    ++n;
  }
  return "";
}

}  // namespace kvring::ring
