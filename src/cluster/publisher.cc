#include "kvring/cluster/publisher.h"

#include <sys/random.h>

#include <nats/nats.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kvring/cluster/delta_message.h"
#include "cluster/nats_connection.h"

namespace kvring::cluster {

struct Publisher::Nats : NatsConnection {
  DeltaWriter pending;  // the message being filled or waiting for its ack
  bool has_pending = false;
};

bool ValidClusterName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return false;
  return true;
}

Publisher::Publisher(const PublisherOptions& options, feed::ChangeFeed* feed)
    : options_(options), feed_(feed), nats_(std::make_unique<Nats>()) {}

Result<std::unique_ptr<Publisher>> Publisher::Start(const PublisherOptions& options, feed::ChangeFeed* feed) {
  if (Status s = CheckNames(options); !s.ok()) return s;
  if (options.stream_replicas < 1 || options.stream_replicas > 5)
    return Status(ErrorKind::kInvalidArgument, "stream replicas: 1 to 5");
  if (options.lease_ttl < std::chrono::milliseconds(300) || options.lease_ttl > std::chrono::minutes(10))
    return Status(ErrorKind::kInvalidArgument, "lease time: 300 ms to 10 min");
  if (options.retention.count() != 0 &&
      (options.retention < std::chrono::seconds(1) || options.retention > std::chrono::hours(24 * 365)))
    return Status(ErrorKind::kInvalidArgument, "retention: 0 (keep everything) or 1 s to a year");
  if (options.max_message_bytes < 2 * feed::kMaxRecordBytes || options.max_message_bytes > (1u << 20))
    return Status(ErrorKind::kInvalidArgument, "max message bytes: 2 records (" +
                                                   std::to_string(2 * feed::kMaxRecordBytes) + ") to 1 MiB");
  if (options.linger < std::chrono::microseconds(0) || options.linger > std::chrono::seconds(1))
    return Status(ErrorKind::kInvalidArgument, "linger: 0 to 1 s");
  if (options.min_message_bytes == 0 || options.min_message_bytes > options.max_message_bytes)
    return Status(ErrorKind::kInvalidArgument, "batch bytes: 1 to the max message bytes (" +
                                                   std::to_string(options.max_message_bytes) + ")");
  std::unique_ptr<Publisher> p(new Publisher(options, feed));
  p->subject_ = "kvring." + options.cluster + "." + options.node;
  p->stream_ = "KVRING_" + options.cluster;
  // Epochs grow with each start of the node (milliseconds of the wall clock
  // in the high bits), so a reader can tell a restart from a stale process;
  // 16 random low bits tell apart two starts within one millisecond.
  std::uint16_t salt = 0;
  if (getrandom(&salt, sizeof salt, 0) != sizeof salt) return Status(ErrorKind::kIo, "getrandom failed for the epoch");
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  p->epoch_ = (static_cast<std::uint64_t>(ms) << 16) | salt;

  if (Status s = p->nats_->Open(options, "publisher"); !s.ok()) return s;
  // A first, empty dump (the controller has no holders yet): once it is in
  // the stream, what earlier epochs of this node left there is purged.
  if (options.cut_at_dumps) p->AskForDump(feed::ResyncRequest::kSnapshot);
  // The node's history from its start is in the stream until it ages out:
  // the first dump is due before that.
  p->next_dump_ = std::chrono::steady_clock::now() + options.retention / 3;
  p->thread_ = std::thread([raw = p.get()] { raw->Run(); });
  return p;
}

Publisher::~Publisher() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
  // A clean stop gives the lease back: the others drop this node's holders
  // now rather than after the lease time.
  if (nats_->leases && nats_->connected()) (void)kvStore_Delete(nats_->leases, options_.node.c_str());
}

PublisherStats Publisher::stats() const {
  PublisherStats st;
  st.messages = messages_.load(std::memory_order_relaxed);
  st.records = records_.load(std::memory_order_relaxed);
  st.bytes = bytes_.load(std::memory_order_relaxed);
  st.publish_failures = failures_.load(std::memory_order_relaxed);
  st.last_seq = last_seq_.load(std::memory_order_relaxed);
  st.snapshots = snapshots_.load(std::memory_order_relaxed);
  st.repairs = repairs_.load(std::memory_order_relaxed);
  st.purges = purges_.load(std::memory_order_relaxed);
  st.lease_lapses = lease_lapses_.load(std::memory_order_relaxed);
  st.rebuild_from_seq = rebuild_from_.load(std::memory_order_relaxed);
  st.connected = nats_->connected();
  return st;
}

std::string Publisher::StatsJson() const {
  const PublisherStats st = stats();
  char epoch[19];
  std::snprintf(epoch, sizeof epoch, "0x%016llx", static_cast<unsigned long long>(epoch_));
  return std::string("{\"cluster\": \"") + options_.cluster + "\", \"node\": \"" + options_.node + "\", \"epoch\": \"" +
         epoch + "\", \"subject\": \"" + subject_ + "\", \"connected\": " + (st.connected ? "true" : "false") +
         ", \"published_messages\": " + std::to_string(st.messages) + ", \"published_records\": " +
         std::to_string(st.records) + ", \"published_bytes\": " + std::to_string(st.bytes) +
         ", \"publish_failures\": " + std::to_string(st.publish_failures) + ", \"last_seq\": " +
         std::to_string(st.last_seq) + ", \"feed_records\": " + std::to_string(feed_->records()) +
         ", \"feed_overflows\": " + std::to_string(feed_->overflows()) +
         ", \"buffered_bytes\": " + std::to_string(feed_->buffered_bytes()) + ", \"lag_records\": " +
         std::to_string(feed_->records() - st.records) + ", \"snapshots\": " + std::to_string(st.snapshots) +
         ", \"repairs\": " + std::to_string(st.repairs) + ", \"purges\": " + std::to_string(st.purges) +
         ", \"lease_lapses\": " + std::to_string(st.lease_lapses) +
         ", \"rebuild_from_seq\": " + std::to_string(st.rebuild_from_seq) + "}";
}

std::string Publisher::MetricsText() const {
  const PublisherStats st = stats();
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, std::uint64_t v) {
    AppendMetric(&out, name, type, help, v);
  };
  metric("kvring_cluster_connected", "gauge", "1 while the publisher is connected to NATS", st.connected ? 1 : 0);
  metric("kvring_cluster_published_messages_total", "counter", "delta messages acknowledged by the stream", st.messages);
  metric("kvring_cluster_published_records_total", "counter", "change records in them", st.records);
  metric("kvring_cluster_published_bytes_total", "counter", "their bytes", st.bytes);
  metric("kvring_cluster_publish_failures_total", "counter", "publish attempts that failed (each retried)",
         st.publish_failures);
  metric("kvring_cluster_lag_records", "gauge", "change records written by the controller, not yet acknowledged",
         feed_->records() - st.records);
  metric("kvring_cluster_buffered_bytes", "gauge",
         "change-feed bytes the publisher has yet to take (the buffer while NATS is slow or away)",
         feed_->buffered_bytes());
  metric("kvring_cluster_snapshots_total", "counter", "dumps of the local holders asked for as the log grew",
         st.snapshots);
  metric("kvring_cluster_repairs_total", "counter",
         "forced dumps asked for (the change feed overflowed, or the lease lapsed)", st.repairs);
  metric("kvring_cluster_purges_total", "counter", "this node's subject cut below a dump", st.purges);
  metric("kvring_cluster_lease_lapses_total", "counter", "the lease found gone while this node was alive",
         st.lease_lapses);
  return out;
}

bool Publisher::EnsureStream() {
  if (stream_ready_) return true;
  const std::string subjects = "kvring." + options_.cluster + ".>";
  const char* subject_list[] = {subjects.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = stream_.c_str();
  cfg.Subjects = subject_list;
  cfg.SubjectsLen = 1;
  cfg.Storage = js_FileStorage;
  cfg.Replicas = options_.stream_replicas;
  cfg.MaxAge = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.retention).count();  // 0: none
  jsErrCode jerr = static_cast<jsErrCode>(0);
  jsStreamInfo* info = nullptr;
  natsStatus s = js_AddStream(&info, nats_->js, &cfg, nullptr, &jerr);
  jsStreamInfo_Destroy(info);
  if (s == NATS_OK || jerr == JSStreamNameExistErr) {  // created (or the same), or made by another node
    if (s != NATS_OK && options_.log)  // another configuration: the stream's own stays (nodes should agree)
      options_.log("cluster: stream " + stream_ + " exists with another configuration (replicas " +
                   std::to_string(options_.stream_replicas) + ", retention " +
                   std::to_string(options_.retention.count()) + " ms asked here): it is kept as it is");
    stream_ready_ = true;
    return true;
  }
  if (options_.log && failures_.load(std::memory_order_relaxed) == 0)
    options_.log("cluster: stream " + stream_ + " not ready yet: " + NatsError(s));
  return false;
}

void Publisher::RefreshLease() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_lease_ || !nats_->BindLeases(options_)) return;
  const std::string value = EncodeLease({epoch_, rebuild_from_.load(std::memory_order_relaxed)});
  std::uint64_t rev = 0;
  // After the first write, each refresh names the revision it replaces: if
  // the lease expired meanwhile (NATS slow or away for a lease time, this
  // process stalled) the update fails, the others have dropped this node,
  // and a forced dump puts its holders back everywhere.
  if (lease_rev_ != 0 && kvStore_UpdateString(&rev, nats_->leases, options_.node.c_str(), value.c_str(), lease_rev_) == NATS_OK) {
    lease_rev_ = rev;
    next_lease_ = now + options_.lease_ttl / 3;
    return;
  }
  if (!nats_->connected()) return;  // cannot tell: try again
  if (kvStore_PutString(&rev, nats_->leases, options_.node.c_str(), value.c_str()) != NATS_OK) return;
  if (lease_rev_ != 0) {
    lease_lapses_.fetch_add(1, std::memory_order_relaxed);
    if (options_.log) options_.log("cluster: this node's lease had lapsed: the others dropped it; republishing its holders");
    AskForDump(feed::ResyncRequest::kForced);
  }
  lease_rev_ = rev;
  next_lease_ = now + options_.lease_ttl / 3;
}

void Publisher::AskForDump(feed::ResyncRequest r) {
  (r == feed::ResyncRequest::kForced ? repairs_ : snapshots_).fetch_add(1, std::memory_order_relaxed);
  dump_asked_ = true;
  feed_->RequestResync(r);
}

void Publisher::NoteRecord(std::span<const std::uint8_t> record) {
  // The controller's own records (this process): the kind and, for keys,
  // the count are read from the header without validating every entry again.
  if (record.size() < feed::kRecordHeadBytes) return;
  const auto kind = static_cast<feed::ChangeKind>(record[0]);
  std::uint32_t count = 0;
  if (kind == feed::ChangeKind::kKeys && record.size() >= feed::kRecordHeadBytes + 4)
    std::memcpy(&count, record.data() + feed::kRecordHeadBytes, 4);
  switch (kind) {
    case feed::ChangeKind::kResync:
      next_dump_ = std::chrono::steady_clock::now() + options_.retention / 3;
      pending_has_resync_ = true;
      in_dump_ = true;
      dump_asked_ = false;
      dump_keys_ = 0;
      keys_since_dump_ = 0;
      break;
    case feed::ChangeKind::kResyncEnd:
      in_dump_ = false;
      break;
    case feed::ChangeKind::kKeys:
      if (in_dump_) dump_keys_ += count;
      else keys_since_dump_ += count;
      break;
    default:
      break;
  }
  if (options_.snapshot_min_keys != 0 && !in_dump_ && !dump_asked_ &&
      keys_since_dump_ >= std::max(options_.snapshot_min_keys, dump_keys_))
    AskForDump(feed::ResyncRequest::kSnapshot);
}

void Publisher::DumpWhenDue() {
  if (options_.retention.count() == 0 || in_dump_ || dump_asked_ || std::chrono::steady_clock::now() < next_dump_)
    return;
  AskForDump(feed::ResyncRequest::kSnapshot);
}

// Everything of this node's subject below `stream_seq` (the message that
// carries a kResync) is replaced by the dump from there on.
void Publisher::PurgeBelow(std::uint64_t stream_seq) {
  // Nothing is below the stream's first message. And a purge "below 1" is
  // not a no-op: nats-server 2.9 then purges the whole subject (seen with a
  // probe against Debian's nats-server), the dump with it.
  if (stream_seq <= 1) return;
  jsOptions o;
  jsOptions_Init(&o);
  o.Stream.Purge.Subject = subject_.c_str();
  o.Stream.Purge.Sequence = stream_seq;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  const natsStatus s = js_PurgeStream(nats_->js, stream_.c_str(), &o, &jerr);
  if (s == NATS_OK) purges_.fetch_add(1, std::memory_order_relaxed);
  else if (options_.log) options_.log("cluster: purging " + subject_ + " below a dump failed (kept): " + NatsError(s));
}

void Publisher::Linger() {
  if (options_.linger.count() == 0) return;
  // A trickle goes at once: lingering pays only when messages come back to
  // back (what waits is what came in during the last publish's round trip).
  const std::size_t buffered = feed_->buffered_bytes();
  if (buffered < options_.min_message_bytes / 16 || buffered >= options_.min_message_bytes) return;
  // Polled: the controller wakes a waiting reader per record, not per size
  // reached. Eight looks per linger bound the overshoot to an eighth of it.
  const auto step = std::max<std::chrono::microseconds>(options_.linger / 8, std::chrono::microseconds(50));
  for (const auto until = std::chrono::steady_clock::now() + options_.linger;
       feed_->buffered_bytes() < options_.min_message_bytes && std::chrono::steady_clock::now() < until &&
       !stop_.load(std::memory_order_relaxed);)
    std::this_thread::sleep_for(step);
}

// Publishes the pending message; true when the stream acknowledged it.
bool Publisher::PublishPending() {
  std::span<const std::uint8_t> bytes = nats_->pending.Finish();
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 2000;  // ms: a bounded wait for the stream's ack
  jsPubAck* ack = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_Publish(&ack, nats_->js, subject_.c_str(), bytes.data(), static_cast<int>(bytes.size()), &po, &jerr);
  const std::uint64_t stream_seq = s == NATS_OK && ack ? ack->Sequence : 0;
  jsPubAck_Destroy(ack);
  if (s != NATS_OK) {
    if (options_.log && failures_.fetch_add(1, std::memory_order_relaxed) % 100 == 0)
      options_.log("cluster: publish to " + subject_ + " failed, retrying: " + NatsError(s));
    return false;
  }
  messages_.fetch_add(1, std::memory_order_relaxed);
  records_.fetch_add(nats_->pending.records(), std::memory_order_relaxed);
  bytes_.fetch_add(bytes.size(), std::memory_order_relaxed);
  last_seq_.store(next_seq_ - 1, std::memory_order_relaxed);
  nats_->has_pending = false;
  // The stream rebuilds this node from its epoch's first message, then from
  // each dump's: the lease says so at its next refresh, made now.
  if (stream_seq != 0 && (!started_ || pending_has_resync_)) {
    rebuild_from_.store(stream_seq, std::memory_order_relaxed);
    next_lease_ = {};
  }
  started_ = true;
  // Cut below a dump only when asked (publisher.h: purges stall lagging
  // consumers on nats-server 2.9).
  if (pending_has_resync_ && stream_seq != 0 && options_.cut_at_dumps) PurgeBelow(stream_seq);
  pending_has_resync_ = false;
  return true;
}

void Publisher::Run() {
  Nats& n = *nats_;
  // After stop: keep publishing while NATS accepts and the feed has records,
  // for at most this long.
  std::chrono::steady_clock::time_point drain_deadline{};
  auto wait_retry = [&] { SleepUnlessStopped(stop_, options_.retry_wait); };
  for (;;) {
    const bool stopping = stop_.load(std::memory_order_relaxed);
    // Records the controller could not write: the stream no longer tells
    // this node's whole story; a forced dump will (it waits for room in the
    // feed, i.e. for NATS to take what is buffered).
    if (const std::uint64_t lost = feed_->overflows(); lost != overflows_seen_) {
      overflows_seen_ = lost;
      AskForDump(feed::ResyncRequest::kForced);
    }
    if (stopping) {
      if (drain_deadline == std::chrono::steady_clock::time_point{})
        drain_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      else if (std::chrono::steady_clock::now() > drain_deadline)
        return;
    }
    if (!EnsureStream()) {
      if (stopping) return;
      wait_retry();
      continue;
    }
    if (!stopping) {
      RefreshLease();
      DumpWhenDue();
    }
    // Nothing is published before the lease exists: a reader that hears of
    // this node looks its lease up, and one not there yet would have it
    // declared gone (seen with a three-server NATS still electing its
    // leaders: the stream took the first message, the lease bucket not yet).
    if (lease_rev_ == 0) {
      if (stopping) return;
      wait_retry();
      continue;
    }
    if (n.has_pending) {
      if (!PublishPending()) {
        if (stopping) return;
        wait_retry();
      }
      continue;
    }
    // Fill one message from the feed: records as they come, up to the size
    // bound. The epoch's first message goes at once, records or not: where
    // the stream starts to tell this node's story (LeaseValue). Under load
    // the others wait (publisher.h: batching) for min_message_bytes or
    // `linger`.
    if (started_ && !stopping) Linger();
    n.pending.Begin(epoch_, next_seq_);
    // Drain counts payload bytes and stops once past its budget: a record
    // (>= 5 bytes) and its length word take under twice its payload, plus
    // one last record of at most kMaxRecordBytes: the message stays within
    // max_message_bytes.
    feed_->Drain(SIZE_MAX, (options_.max_message_bytes - kDeltaHeaderBytes - 4 - feed::kMaxRecordBytes) / 2,
                 [&](std::span<const std::uint8_t> record) {
      n.pending.Add(record);
      NoteRecord(record);
      ++next_seq_;
    });
    if (n.pending.records() > 0 || !started_) {
      n.has_pending = true;
      continue;
    }
    if (stopping) return;  // nothing left
    (void)feed_->WaitForData(std::chrono::milliseconds(50));  // bounded: the stop flag is looked at again
  }
}

}  // namespace kvring::cluster
