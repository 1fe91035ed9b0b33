// kvring cluster: what a kvringd started with --cluster knows of its cluster:
// this node (epoch, NATS connection, what it published and what is still to
// be acknowledged) and every other node it hears from (epoch, next sequence
// number, holders, keys).
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kvring/client/client.h"

namespace kvring::tools {

Command AddCluster(CLI::App& app) {
  struct State {
    std::string name = "kvring";
    bool json = false;
    int timeout_ms = 1000;
  };
  auto st = std::make_shared<State>();
  app.description(
      "Show a cluster node's view of its cluster (kvringd --cluster): this node's epoch, NATS state,\n"
      "published records, replication lag in records and of the last remote message in ms; each other node's epoch, sequence, holders\n"
      "and keys. Exit 0 when the controller answered, 1 when none runs or it is not in a cluster.");
  app.add_option("--name", st->name, "Controller name")->capture_default_str();
  app.add_flag("--json", st->json, "One JSON object: {\"this\": {...}, \"nodes\": [...]}");
  app.add_option("--timeout", st->timeout_ms, "Milliseconds to wait for the controller")->check(CLI::Range(1, 600000));
  return [st]() -> int {
    auto r = client::ControlRequest(st->name, R"({"op":"stats"})", std::chrono::milliseconds(st->timeout_ms));
    if (!r.ok()) {
      std::cerr << "error: " << r.status().message() << "\n";
      return 1;
    }
    auto j = nlohmann::json::parse(*r, nullptr, false);
    if (!j.is_object() || !j.contains("cluster") || !j["cluster"].is_object()) {
      std::cerr << "error: controller '" << st->name << "' is not a cluster node (kvringd --cluster)\n";
      return 1;
    }
    nlohmann::json out = {{"this", j["cluster"]},
                          {"nodes", j.value("cluster_nodes", nlohmann::json::array())},
                          {"remote_refused", j.value("remote_refused", 0)},
                          {"remote_seq_gaps", j.value("remote_seq_gaps", 0)},
                          {"remote_before_dump", j.value("remote_before_dump", 0)}};
    if (st->json) {
      std::cout << out.dump() << std::endl;
      return 0;
    }
    const auto& me = out["this"];
    std::cout << "cluster " << me.value("cluster", "?") << ", node " << me.value("node", "?") << " (epoch "
              << me.value("epoch", "?") << "), NATS " << (me.value("connected", false) ? "connected" : "NOT connected")
              << ", stream " << (me.value("subscribed", false) ? "read" : "NOT read") << "\n"
              << "published " << me.value("published_records", 0) << " records in " << me.value("published_messages", 0)
              << " messages; lag " << me.value("lag_records", 0) << " records; feed overflows "
              << me.value("feed_overflows", 0) << "; garbage messages " << me.value("garbage_messages", 0)
              << "; last remote message " << me.value("last_message_lag_ms", 0.0) << " ms behind\n"
              << "dumps " << me.value("snapshots", 0) << " (repairs " << me.value("repairs", 0)
              << "); the stream rebuilds this node from seq " << me.value("rebuild_from_seq", 0)
              << "; read here from seq " << me.value("start_seq", 0) << "; records before a dump skipped "
              << out.value("remote_before_dump", 0) << "\n";
    std::cout << "node                 epoch               next seq   holders       keys\n";
    for (const auto& n : out["nodes"]) {
      std::printf("%-20s %-19s %10llu %9llu %10llu\n", n.value("node", "").c_str(), n.value("epoch", "").c_str(),
                  static_cast<unsigned long long>(n.value("next_seq", 0ULL)),
                  static_cast<unsigned long long>(n.value("holders", 0ULL)),
                  static_cast<unsigned long long>(n.value("keys", 0ULL)));
    }
    return 0;
  };
}

}  // namespace kvring::tools
