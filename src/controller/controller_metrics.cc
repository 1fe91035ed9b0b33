// The controller's Prometheus exposition (GET /metrics) and the per-second
// rates behind its *_per_second gauges. LMCache's gauges keep their names and
// their role="controller" label, so dashboards built for LMCache keep working.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "controller/full_sync.h"
#include "kvring/controller/controller.h"

namespace kvring::controller {
namespace {

// One metric family: HELP and TYPE lines, then its samples.
class Exposition {
 public:
  void Family(const char* name, const char* type, const char* help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void Sample(const std::string& name_and_labels, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " %.17g\n", v);
    out_ += name_and_labels;
    out_ += buf;
  }
  void One(const char* name, const char* type, const char* help, double v, const char* labels = "") {
    Family(name, type, help);
    Sample(std::string(name) + labels, v);
  }
  void Histogram(const char* name, const char* help, const LatencyBuckets& h) {
    Family(name, "histogram", help);
    for (std::size_t i = 0; i < LatencyBuckets::kBounds; ++i) {
      char le[32];
      std::snprintf(le, sizeof le, "%g", LatencyBuckets::kBoundsSeconds[i]);
      Sample(std::string(name) + "_bucket{le=\"" + le + "\"}", static_cast<double>(h.le[i]));
    }
    Sample(std::string(name) + "_bucket{le=\"+Inf\"}", static_cast<double>(h.count));
    Sample(std::string(name) + "_sum", h.sum_seconds);
    Sample(std::string(name) + "_count", static_cast<double>(h.count));
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};




std::uint64_t RingKey(std::uint64_t client, int ring) { return client << 1 | static_cast<std::uint64_t>(ring); }

std::size_t RingCapacity(const transport::ListenerOptions& o, int ring) {
  return ring == segment::kRequestRing ? o.request_capacity : o.reply_capacity;
}

}  // namespace


void Controller::SampleRates(double now) {
  if (now - rate_prev_.at < 1.0) return;
  RateSample cur;
  cur.at = now;
  cur.kv_ops = stats_.kv_ops;
  cur.p2p_lookups = stats_.p2p_lookups;
  cur.token_lookups = stats_.token_lookups;
  cur.messages = stats_.messages;
  for (const auto& c : listener_->clients())
    for (int r : {segment::kRequestRing, segment::kReplyRing}) {
      cur.ring_records[RingKey(c->id, r)] =
          ring::Snapshot(c->segment.ring_region(r), RingCapacity(options_.listen, r)).records_published;
    }
  if (rate_prev_.at > 0) {
    const double dt = now - rate_prev_.at;
    auto rate = [dt](std::uint64_t a, std::uint64_t b) { return b >= a ? static_cast<double>(b - a) / dt : 0.0; };
    kv_ops_per_s_ = rate(rate_prev_.kv_ops, cur.kv_ops);
    p2p_lookups_per_s_ = rate(rate_prev_.p2p_lookups, cur.p2p_lookups);
    token_lookups_per_s_ = rate(rate_prev_.token_lookups, cur.token_lookups);
    messages_per_s_ = rate(rate_prev_.messages, cur.messages);
    ring_records_per_s_.clear();
    for (const auto& [key, n] : cur.ring_records) {
      auto prev = rate_prev_.ring_records.find(key);
      ring_records_per_s_[key] = prev == rate_prev_.ring_records.end() ? 0.0 : rate(prev->second, n);
    }
  }
  rate_prev_ = std::move(cur);
}

std::string Controller::MetricsText() const {
  Exposition e;
  auto d = [](auto v) { return static_cast<double>(v); };
  std::size_t syncing_missing = 0;
  for (std::uint32_t w = 0; w < workers_.size(); ++w)
    if (registry_.worker_live(w) && sync_->syncing(w)) syncing_missing += sync_->batches_missing(w);

  // LMCache's names (lmcache/v1/cache_controller/observability.py).
  e.One("lmcache:cache_controller_kv_pool_keys_count", "gauge", "(key, holder) pairs in the index", d(index_.pairs()), kControllerRoleLabel);
  e.One("lmcache:cache_controller_registered_workers_count", "gauge", "registered workers (live, not cached)",
        d(registry_.worker_count()), kControllerRoleLabel);
  e.One("lmcache:cache_controller_full_sync_workers_syncing", "gauge", "workers in the middle of a full sync",
        d(WorkersIn(SyncState::kSyncing)), kControllerRoleLabel);
  e.One("lmcache:cache_controller_full_sync_workers_completed", "gauge", "workers whose full sync completed",
        d(WorkersIn(SyncState::kCompleted)), kControllerRoleLabel);
  e.One("lmcache:cache_controller_full_sync_global_progress", "gauge", "fraction of workers with a completed sync",
        GlobalSyncProgress(), kControllerRoleLabel);
  e.One("lmcache:cache_controller_full_sync_missing_batches_total", "gauge", "batches still missing, over syncing workers",
        d(syncing_missing), kControllerRoleLabel);

  // kvring's own.
  e.One("kvring_clients", "gauge", "attached clients (workers and orchestrators)", d(listener_->clients().size()));
  e.One("kvring_instances", "gauge", "instances with a registered worker", d(registry_.Instances().size()));
  e.One("kvring_index_bytes", "gauge", "memory held by the chunk index", d(index_.MemoryBytes()));
  e.One("kvring_index_overflow_keys", "gauge", "index keys whose two buckets were full (kept in overflow)",
        d(index_.OverflowKeys()));
  e.One("kvring_index_grouped_keys", "gauge", "index keys with several holders (a holder group each)",
        d(index_.GroupedKeys()));
  e.One("kvring_messages_per_second", "gauge", "records handled per second (last second)", messages_per_s_);
  e.One("kvring_kv_ops_per_second", "gauge", "KV operations applied per second (last second)", kv_ops_per_s_);
  e.One("kvring_p2p_lookups_per_second", "gauge", "P2P lookups per second (last second)", p2p_lookups_per_s_);
  e.One("kvring_token_lookups_per_second", "gauge", "token lookups per second (last second)", token_lookups_per_s_);
  e.Histogram("kvring_p2p_lookup_seconds", "controller service time of a P2P lookup", stats_.p2p_latency);
  e.Histogram("kvring_token_lookup_seconds", "controller service time of a token lookup", stats_.token_lookup_latency);
  e.One("kvring_fanouts_in_flight", "gauge", "fan-outs waiting for workers", d(fanouts_in_flight()));
  // The Stats counters (one table: StatsCounters()).
  const char* family = "";
  for (const StatsCounter& c : StatsCounters()) {
    if (std::strcmp(family, c.metric) != 0) e.Family(c.metric, c.type, c.help);
    family = c.metric;
    e.Sample(std::string(c.metric) + c.labels, d(stats_.*c.member));
  }
  // Still in kvring_dropped_total (the table's last family): the index's own.
  e.Sample("kvring_dropped_total{reason=\"over_quota\"}", d(index_.over_quota()));

  // Per ring, for the first kMaxClientSeries clients: the whole text has to
  // fit one control reply record (a quarter of the reply ring).
  constexpr std::size_t kMaxClientSeries = 256;
  struct RingRow {
    std::string labels;
    double fill, records, per_second;
  };
  std::vector<RingRow> rows;
  std::vector<std::pair<std::string, double>> quarantined;
  const auto& clients = listener_->clients();
  for (std::size_t i = 0; i < std::min(clients.size(), kMaxClientSeries); ++i) {
    const transport::Client* c = clients[i].get();
    for (int r : {segment::kRequestRing, segment::kReplyRing}) {
      const std::size_t cap = RingCapacity(options_.listen, r);
      ring::RingSnapshot s = ring::Snapshot(c->segment.ring_region(r), cap);
      auto rate = ring_records_per_s_.find(RingKey(c->id, r));
      rows.push_back({"{client=\"" + std::to_string(c->id) + "\",pid=\"" + std::to_string(c->pid) + "\",role=\"" +
                          segment::RoleName(static_cast<std::uint32_t>(c->role)) + "\",ring=\"" +
                          (r == segment::kRequestRing ? "requests" : "replies") + "\"}",
                      s.problem.empty() ? d(s.pending_bytes()) / d(cap) : 1.0, d(s.records_published),
                      rate == ring_records_per_s_.end() ? 0.0 : rate->second});
    }
    quarantined.emplace_back("{client=\"" + std::to_string(c->id) + "\"}", c->quarantined ? 1.0 : 0.0);
  }
  e.Family("kvring_ring_fill_ratio", "gauge", "pending bytes / capacity, per client ring");
  for (const RingRow& row : rows) e.Sample("kvring_ring_fill_ratio" + row.labels, row.fill);
  e.Family("kvring_ring_records_total", "counter", "records published into the ring");
  for (const RingRow& row : rows) e.Sample("kvring_ring_records_total" + row.labels, row.records);
  e.Family("kvring_ring_records_per_second", "gauge", "records published per second (last second)");
  for (const RingRow& row : rows) e.Sample("kvring_ring_records_per_second" + row.labels, row.per_second);
  e.Family("kvring_client_quarantined", "gauge", "1 when a ring of the client is quarantined");
  for (const auto& [labels, v] : quarantined) e.Sample("kvring_client_quarantined" + labels, v);
  std::string text = e.Take();
  for (const Extra& x : extras_) text += x.metrics_text();
  return text;
}

}  // namespace kvring::controller
