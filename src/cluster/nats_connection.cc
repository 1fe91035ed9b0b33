#include "cluster/nats_connection.h"

#include <thread>
#include <vector>

namespace kvring::cluster {

std::string NatsError(natsStatus s) {
  const char* last = nats_GetLastError(nullptr);
  return std::string(natsStatus_GetText(s)) + (last && *last ? std::string(" (") + last + ")" : "");
}

Status CheckNames(const PublisherOptions& options) {
  if (!ValidClusterName(options.cluster) || !ValidClusterName(options.node))
    return Status(ErrorKind::kInvalidArgument, "cluster and node names: 1 to 64 of A-Z a-z 0-9 _ -");
  return Status::Ok();
}

void SleepUnlessStopped(const std::atomic<bool>& stop, std::chrono::milliseconds wait) {
  // relaxed: a flag, no data rides on it
  for (auto until = std::chrono::steady_clock::now() + wait;
       std::chrono::steady_clock::now() < until && !stop.load(std::memory_order_relaxed);)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void AppendMetric(std::string* out, const char* name, const char* type, const char* help, std::uint64_t value) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
          std::to_string(value) + "\n";
}

NatsConnection::~NatsConnection() {
  kvStore_Destroy(leases);
  jsCtx_Destroy(js);
  natsConnection_Destroy(conn);
  natsOptions_Destroy(opts);
}

Status NatsConnection::Open(const PublisherOptions& options, const std::string& role) {
  natsStatus s = natsOptions_Create(&opts);
  // A comma-separated list: the servers of a NATS cluster, any of which will do.
  std::vector<std::string> urls;
  for (std::size_t at = 0; at <= options.nats_url.size();) {
    std::size_t comma = options.nats_url.find(',', at);
    if (comma == std::string::npos) comma = options.nats_url.size();
    if (comma > at) urls.push_back(options.nats_url.substr(at, comma - at));
    at = comma + 1;
  }
  if (urls.empty()) return Status(ErrorKind::kInvalidArgument, "no NATS URL");
  std::vector<const char*> list;
  for (const std::string& u : urls) list.push_back(u.c_str());
  if (s == NATS_OK) s = natsOptions_SetServers(opts, list.data(), static_cast<int>(list.size()));
  if (s == NATS_OK)
    s = natsOptions_SetName(opts, ("kvringd " + options.cluster + "/" + options.node + " " + role).c_str());
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);  // forever: NATS may come back any time
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, options.retry_wait.count());
  // With a connected callback, a first connect that fails returns at once
  // and goes on in the background (without one, cnats retries in the call).
  if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(opts, true, [](natsConnection*, void*) {}, nullptr);
  if (s == NATS_OK && !options.creds_file.empty())
    s = natsOptions_SetUserCredentialsFromFiles(opts, options.creds_file.c_str(), nullptr);
  if (s == NATS_OK && !options.tls_ca_file.empty()) {
    s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK) s = natsOptions_LoadCATrustedCertificates(opts, options.tls_ca_file.c_str());
  }
  if (s == NATS_OK && !options.tls_cert_file.empty())
    s = natsOptions_LoadCertificatesChain(opts, options.tls_cert_file.c_str(), options.tls_key_file.c_str());
  if (s != NATS_OK) return Status(ErrorKind::kInvalidArgument, "NATS options: " + NatsError(s));
  s = natsConnection_Connect(&conn, opts);
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED)
    return Status(ErrorKind::kUnavailable, "NATS at " + options.nats_url + ": " + NatsError(s));
  s = natsConnection_JetStream(&js, conn, nullptr);
  if (s != NATS_OK) return Status(ErrorKind::kInternal, "JetStream context: " + NatsError(s));
  return Status::Ok();
}

bool NatsConnection::BindLeases(const PublisherOptions& options) {
  if (leases) return true;
  if (!connected()) return false;
  const std::string bucket = "KVRING_" + options.cluster + "_LEASES";
  kvConfig cfg;
  kvConfig_Init(&cfg);
  cfg.Bucket = bucket.c_str();
  cfg.History = 1;
  // nanoseconds (cnats hands TTL to the stream as its max age): a lease not
  // refreshed for this long is gone
  cfg.TTL = std::chrono::duration_cast<std::chrono::nanoseconds>(options.lease_ttl).count();
  cfg.Replicas = options.stream_replicas;
  cfg.StorageType = js_FileStorage;
  if (js_CreateKeyValue(&leases, js, &cfg) == NATS_OK) return true;
  leases = nullptr;
  if (js_KeyValue(&leases, js, bucket.c_str()) == NATS_OK) return true;  // another node made it
  leases = nullptr;
  return false;
}

}  // namespace kvring::cluster
