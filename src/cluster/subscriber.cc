#include "kvring/cluster/subscriber.h"

#include <algorithm>
#include <string>
#include <vector>

#include "cluster/nats_connection.h"
#include "kvring/cluster/delta_message.h"

namespace kvring::cluster {

struct Subscriber::Nats : NatsConnection {
  natsSubscription* sub = nullptr;
  ~Nats() { natsSubscription_Destroy(sub); }
};

Subscriber::Subscriber(const PublisherOptions& options, feed::RemoteFeed* feed)
    : options_(options), feed_(feed), nats_(std::make_unique<Nats>()), prefix_("kvring." + options.cluster + ".") {}

Result<std::unique_ptr<Subscriber>> Subscriber::Start(const PublisherOptions& options, feed::RemoteFeed* feed) {
  if (Status st = CheckNames(options); !st.ok()) return st;
  std::unique_ptr<Subscriber> s(new Subscriber(options, feed));
  if (Status st = s->nats_->Open(options, "subscriber"); !st.ok()) return st;
  s->thread_ = std::thread([raw = s.get()] { raw->Run(); });
  return s;
}

Subscriber::~Subscriber() {
  stop_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
}

SubscriberStats Subscriber::stats() const {
  SubscriberStats st;
  st.messages = messages_.load(std::memory_order_relaxed);
  st.records = records_.load(std::memory_order_relaxed);
  st.garbage = garbage_.load(std::memory_order_relaxed);
  st.own = own_.load(std::memory_order_relaxed);
  st.nodes_gone = nodes_gone_.load(std::memory_order_relaxed);
  st.last_lag_us = last_lag_us_.load(std::memory_order_relaxed);
  st.purges = purges_.load(std::memory_order_relaxed);
  st.start_seq = start_seq_.load(std::memory_order_relaxed);
  st.subscribed = subscribed_.load(std::memory_order_relaxed) && nats_->connected();
  return st;
}

std::string Subscriber::StatsJson() const {
  const SubscriberStats st = stats();
  return std::string("{\"subscribed\": ") + (st.subscribed ? "true" : "false") +
         ", \"remote_messages\": " + std::to_string(st.messages) + ", \"remote_records\": " +
         std::to_string(st.records) + ", \"garbage_messages\": " + std::to_string(st.garbage) +
         ", \"nodes_gone\": " + std::to_string(st.nodes_gone) + ", \"gone_nodes_purged\": " + std::to_string(st.purges) +
         ", \"start_seq\": " + std::to_string(st.start_seq) +
         ", \"last_message_lag_ms\": " + std::to_string(static_cast<double>(st.last_lag_us) / 1000.0) + "}";
}

std::string Subscriber::MetricsText() const {
  const SubscriberStats st = stats();
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, std::uint64_t v) {
    AppendMetric(&out, name, type, help, v);
  };
  metric("kvring_cluster_subscribed", "gauge", "1 while the subscriber reads the cluster's stream", st.subscribed);
  metric("kvring_cluster_remote_messages_total", "counter", "other nodes' delta messages received", st.messages);
  metric("kvring_cluster_garbage_messages_total", "counter", "delta messages refused as invalid", st.garbage);
  metric("kvring_cluster_last_message_lag_microseconds", "gauge",
         "from the last remote message's arrival in the stream to its delivery here", st.last_lag_us);
  return out;
}

// Retries `push` (a write into the remote feed) until it succeeds, waiting
// for the controller to make room for `bytes`; false if stopped first.
template <typename Push>
bool Subscriber::PushWhenRoom(std::size_t bytes, Push&& push) {
  while (!push()) {
    feed_->Publish();  // what is already in: the controller may be waiting for it
    if (stop_.load(std::memory_order_relaxed)) return false;
    (void)feed_->WaitForSpace(bytes, std::chrono::milliseconds(50));
  }
  return true;
}

void Subscriber::Handle(std::string_view subject, std::uint64_t stream_seq, std::span<const std::uint8_t> bytes) {
  // kvring.<cluster>.<node>: anything else on the cluster's subjects is garbage.
  if (subject.substr(0, prefix_.size()) != prefix_) return void(garbage_.fetch_add(1, std::memory_order_relaxed));
  const std::string_view node = subject.substr(prefix_.size());
  if (!ValidClusterName(node)) return void(garbage_.fetch_add(1, std::memory_order_relaxed));
  if (node == options_.node) return void(own_.fetch_add(1, std::memory_order_relaxed));
  NodeSeen& seen = nodes_[std::string(node)];
  seen.gone = false;  // heard from: alive until its lease says otherwise
  seen.last_stream_seq = std::max(seen.last_stream_seq, stream_seq);
  // The whole message is validated before any record is handed on.
  std::vector<std::span<const std::uint8_t>> records;
  DeltaHeader h;
  Status s = DecodeDeltaMessage(bytes, &h, [&](const feed::Change&, std::span<const std::uint8_t> record) {
    records.push_back(record);
  });
  if (!s.ok()) {
    if (options_.log && garbage_.load(std::memory_order_relaxed) % 1000 == 0)
      options_.log("cluster: refused a message on " + std::string(subject) + ": " + s.message());
    return void(garbage_.fetch_add(1, std::memory_order_relaxed));
  }
  messages_.fetch_add(1, std::memory_order_relaxed);
  for (std::size_t i = 0; i < records.size(); ++i) {
    if (!PushWhenRoom(records[i].size() + 2 + node.size() + 16,
                      [&] { return feed_->Push(node, h.epoch, h.first_seq + i, records[i]); }))
      return;
  }
  records_.fetch_add(records.size(), std::memory_order_relaxed);
  feed_->Publish();
}

void Subscriber::CheckLeases() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_lease_check_ || nodes_.empty() || !nats_->BindLeases(options_)) return;
  next_lease_check_ = now + options_.lease_ttl / 3;
  for (auto& entry : nodes_) {
    const std::string& node = entry.first;  // not a structured binding: the lambda below captures it
    NodeSeen& seen = entry.second;
    if (seen.gone) continue;
    kvEntry* e = nullptr;
    const natsStatus s = kvStore_Get(&e, nats_->leases, node.c_str());
    kvEntry_Destroy(e);
    if (s != NATS_NOT_FOUND) continue;  // alive, or NATS cannot tell now: nobody is declared gone on doubt
    if (!PushWhenRoom(2 + node.size(), [&] { return feed_->Gone(node); })) return;
    feed_->Publish();
    seen.gone = true;
    nodes_gone_.fetch_add(1, std::memory_order_relaxed);
    if (options_.log) options_.log("cluster: node " + node + " has no lease any more: its holders are dropped");
    // Bounded retention (with cuts on: publisher.h says why only then):
    // what the gone node left in the stream goes too, up to the last message
    // read here (a newer one, the node back with a forced dump, is kept).
    // Every subscriber may do this; purging twice is harmless.
    if (!options_.cut_at_dumps) continue;
    jsOptions o;
    jsOptions_Init(&o);
    const std::string node_subject = prefix_ + node;
    o.Stream.Purge.Subject = node_subject.c_str();
    o.Stream.Purge.Sequence = seen.last_stream_seq + 1;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    if (js_PurgeStream(nats_->js, ("KVRING_" + options_.cluster).c_str(), &o, &jerr) == NATS_OK)
      purges_.fetch_add(1, std::memory_order_relaxed);
  }
}

std::uint64_t Subscriber::StartSequence() {
  if (resume_seq_ != 0) return resume_seq_;
  if (!nats_->BindLeases(options_)) return 1;
  kvKeysList keys{};
  if (kvStore_Keys(&keys, nats_->leases, nullptr) != NATS_OK) return 1;  // none (NATS_NOT_FOUND), or cannot tell
  // A lease per node: far more than any cluster's nodes means a bucket that
  // is not what it should be; read everything then rather than trust it.
  constexpr int kMaxLeases = 4096;
  std::uint64_t start = keys.Count > kMaxLeases ? 1 : UINT64_MAX;
  for (int i = 0; i < keys.Count && start > 1; ++i) {
    if (keys.Keys[i] == nullptr || options_.node == keys.Keys[i]) continue;
    kvEntry* e = nullptr;
    const natsStatus s = kvStore_Get(&e, nats_->leases, keys.Keys[i]);
    if (s == NATS_NOT_FOUND) continue;  // gone since the listing: nothing of it is needed
    LeaseValue v;
    const bool known = s == NATS_OK &&
                       DecodeLease(std::string_view(static_cast<const char*>(kvEntry_Value(e)),
                                                    static_cast<std::size_t>(std::max(0, kvEntry_ValueLen(e)))),
                                   &v) &&
                       v.rebuild_from_seq != 0;
    kvEntry_Destroy(e);
    start = std::min(start, known ? v.rebuild_from_seq : 1);  // a lease that does not say: from the start
  }
  kvKeysList_Destroy(&keys);
  return start == UINT64_MAX ? 1 : start;
}

void Subscriber::Run() {
  Nats& n = *nats_;
  const std::string subject = prefix_ + "*";
  while (!stop_.load(std::memory_order_relaxed)) {
    if (!n.sub) {
      // An ordered consumer (it recreates itself, from where it was, after
      // a gap or a reconnect) from StartSequence(). The stream may not exist
      // yet (the first publisher creates it): retry.
      jsSubOptions so;
      jsSubOptions_Init(&so);
      so.Ordered = true;
      const std::uint64_t start = StartSequence();
      so.Config.DeliverPolicy = js_DeliverByStartSequence;
      so.Config.OptStartSeq = start;
      jsErrCode jerr = static_cast<jsErrCode>(0);
      if (n.connected() && js_SubscribeSync(&n.sub, n.js, subject.c_str(), nullptr, &so, &jerr) == NATS_OK) {
        subscribed_.store(true, std::memory_order_relaxed);
        start_seq_.store(start, std::memory_order_relaxed);
      } else {
        n.sub = nullptr;
        SleepUnlessStopped(stop_, options_.retry_wait);
        continue;
      }
    }
    CheckLeases();
    natsMsg* m = nullptr;
    natsStatus s = natsSubscription_NextMsg(&m, n.sub, 100);  // bounded: the stop flag is looked at again
    if (s == NATS_TIMEOUT) continue;
    if (s != NATS_OK) {  // e.g. the subscription went invalid: make a new one
      natsSubscription_Destroy(n.sub);
      n.sub = nullptr;
      subscribed_.store(false, std::memory_order_relaxed);
      continue;
    }
    // Replication lag of this message: from its arrival in the stream (the
    // NATS server's clock) to now (ours); meaningful while the consumer is
    // caught up, and only as good as the two clocks agree.
    std::uint64_t stream_seq = 0;
    if (jsMsgMetaData* meta = nullptr; natsMsg_GetMetaData(&meta, m) == NATS_OK) {
      stream_seq = meta->Sequence.Stream;
      const std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                      std::chrono::system_clock::now().time_since_epoch()).count();
      last_lag_us_.store(static_cast<std::uint64_t>(std::max<std::int64_t>(0, now_ns - meta->Timestamp) / 1000),
                         std::memory_order_relaxed);
      jsMsgMetaData_Destroy(meta);
    }
    if (stream_seq != 0) resume_seq_ = stream_seq + 1;
    const char* subj = natsMsg_GetSubject(m);
    Handle(subj ? std::string_view(subj) : std::string_view(), stream_seq,
           std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(natsMsg_GetData(m)),
                                         static_cast<std::size_t>(natsMsg_GetDataLength(m))));
    natsMsg_Destroy(m);
  }
}

}  // namespace kvring::cluster
