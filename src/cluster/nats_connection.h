// A NATS connection with kvring's cluster options (internal to the cluster
// layer): reconnects forever, a first connect that fails goes on in the
// background, credentials and TLS as configured.
#pragma once

#include <nats/nats.h>

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

}  // namespace kvring::cluster
