#include "kvring/cluster/publisher.h"

#include <sys/random.h>

#include <nats/nats.h>

#include <cstdio>
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
  if (!ValidClusterName(options.cluster) || !ValidClusterName(options.node))
    return Status(ErrorKind::kInvalidArgument, "cluster and node names: 1 to 64 of A-Z a-z 0-9 _ -");
  if (options.stream_replicas < 1 || options.stream_replicas > 5)
    return Status(ErrorKind::kInvalidArgument, "stream replicas: 1 to 5");
  if (options.lease_ttl < std::chrono::milliseconds(300) || options.lease_ttl > std::chrono::minutes(10))
    return Status(ErrorKind::kInvalidArgument, "lease time: 300 ms to 10 min");
  if (options.max_message_bytes < 2 * feed::kMaxRecordBytes || options.max_message_bytes > (1u << 20))
    return Status(ErrorKind::kInvalidArgument, "max message bytes: 2 records (" +
                                                   std::to_string(2 * feed::kMaxRecordBytes) + ") to 1 MiB");
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
         ", \"feed_overflows\": " + std::to_string(feed_->overflows()) + ", \"lag_records\": " +
         std::to_string(feed_->records() - st.records) + "}";
}

std::string Publisher::MetricsText() const {
  const PublisherStats st = stats();
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, std::uint64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(v) + "\n";
  };
  metric("kvring_cluster_connected", "gauge", "1 while the publisher is connected to NATS", st.connected ? 1 : 0);
  metric("kvring_cluster_published_messages_total", "counter", "delta messages acknowledged by the stream", st.messages);
  metric("kvring_cluster_published_records_total", "counter", "change records in them", st.records);
  metric("kvring_cluster_published_bytes_total", "counter", "their bytes", st.bytes);
  metric("kvring_cluster_publish_failures_total", "counter", "publish attempts that failed (each retried)",
         st.publish_failures);
  metric("kvring_cluster_lag_records", "gauge", "change records written by the controller, not yet acknowledged",
         feed_->records() - st.records);
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
  jsErrCode jerr = static_cast<jsErrCode>(0);
  jsStreamInfo* info = nullptr;
  natsStatus s = js_AddStream(&info, nats_->js, &cfg, nullptr, &jerr);
  jsStreamInfo_Destroy(info);
  if (s == NATS_OK || jerr == JSStreamNameExistErr) {  // created, or made by another node
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
  char epoch[19];
  std::snprintf(epoch, sizeof epoch, "0x%016llx", static_cast<unsigned long long>(epoch_));
  std::uint64_t rev = 0;
  if (kvStore_PutString(&rev, nats_->leases, options_.node.c_str(), epoch) == NATS_OK)
    next_lease_ = now + options_.lease_ttl / 3;
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
  return true;
}

void Publisher::Run() {
  Nats& n = *nats_;
  // After stop: keep publishing while NATS accepts and the feed has records,
  // for at most this long.
  std::chrono::steady_clock::time_point drain_deadline{};
  auto wait_retry = [&] {
    for (auto until = std::chrono::steady_clock::now() + options_.retry_wait;
         std::chrono::steady_clock::now() < until && !stop_.load(std::memory_order_relaxed);)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  };
  for (;;) {
    const bool stopping = stop_.load(std::memory_order_relaxed);
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
    if (!stopping) RefreshLease();  // before the first message: readers find the lease of any node they hear
    if (n.has_pending) {
      if (!PublishPending()) {
        if (stopping) return;
        wait_retry();
      }
      continue;
    }
    // Fill one message from the feed: records as they come, up to the size bound.
    n.pending.Begin(epoch_, next_seq_);
    // Drain counts payload bytes and stops once past its budget: a record
    // (>= 5 bytes) and its length word take under twice its payload, plus
    // one last record of at most kMaxRecordBytes: the message stays within
    // max_message_bytes.
    feed_->Drain(SIZE_MAX, (options_.max_message_bytes - kDeltaHeaderBytes - 4 - feed::kMaxRecordBytes) / 2,
                 [&](std::span<const std::uint8_t> record) {
      n.pending.Add(record);
      ++next_seq_;
    });
    if (n.pending.records() > 0) {
      n.has_pending = true;
      continue;
    }
    if (stopping) return;  // nothing left
    (void)feed_->WaitForData(std::chrono::milliseconds(50));  // bounded: the stop flag is looked at again
  }
}

}  // namespace kvring::cluster
