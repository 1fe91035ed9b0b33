// The cluster layer's shared plumbing (internal): a NATS connection with
// kvring's cluster options (reconnects forever, a first connect that fails
// goes on in the background, credentials and TLS as configured), and the
// checks, waits and metric lines the publisher and the subscriber share.
#pragma once

#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "kvring/cluster/publisher.h"
#include "kvring/status.h"

namespace kvring::cluster {

struct NatsConnection {
  natsOptions* opts = nullptr;
  natsConnection* conn = nullptr;
  jsCtx* js = nullptr;
  kvStore* leases = nullptr;  // the cluster's lease bucket, once bound
  NatsConnection() = default;
  NatsConnection(const NatsConnection&) = delete;
  NatsConnection& operator=(const NatsConnection&) = delete;
  ~NatsConnection();
  // `role` names the connection to the server ("kvringd <cluster>/<node> <role>").
  [[nodiscard]] Status Open(const PublisherOptions& options, const std::string& role);
  bool connected() const { return conn && natsConnection_Status(conn) == NATS_CONN_STATUS_CONNECTED; }
  // Binds the lease bucket KVRING_<cluster>_LEASES, creating it (TTL: the
  // lease time, one value per key) if no node has yet. False while NATS is away.
  bool BindLeases(const PublisherOptions& options);
};

std::string NatsError(natsStatus s);

// The cluster and node names of `options` (ValidClusterName), as a Status.
[[nodiscard]] Status CheckNames(const PublisherOptions& options);
// Sleeps `wait` in short steps, returning early once `stop` is set.
void SleepUnlessStopped(const std::atomic<bool>& stop, std::chrono::milliseconds wait);
// One Prometheus metric without labels: HELP, TYPE and the sample.
void AppendMetric(std::string* out, const char* name, const char* type, const char* help, std::uint64_t value);

}  // namespace kvring::cluster
