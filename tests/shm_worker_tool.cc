// A shared-memory worker driven line by line from stdin, for tests written in
// another language (tests/python): the C++ client library on real shared
// memory, beside ZeroMQ workers. Commands, one a line; one JSON line answers each:
//   admit LOCATION KEY...      -> {"ok":true}
//   evict LOCATION KEY...      -> {"ok":true}
//   lookup KEY...              -> {"instance_id":..,"location":..,"num_hit_chunks":..,"peer_init_url":..}
// Usage: shm_worker_tool CONTROLLER INSTANCE WORKER_ID PEER_INIT_URL
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvring/client/client.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: shm_worker_tool CONTROLLER INSTANCE WORKER_ID PEER_INIT_URL\n";
    return 2;
  }
  kvring::client::WorkerOptions o;
  o.controller = argv[1];
  o.instance_id = argv[2];
  o.worker_id = std::stoll(argv[3]);
  o.peer_init_url = argv[4];
  auto w = kvring::client::Worker::Connect(o);
  if (!w.ok()) {
    std::cout << nlohmann::json{{"error", w.status().message()}}.dump() << std::endl;
    return 1;
  }
  std::cout << nlohmann::json{{"ok", true}}.dump() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd, location;
    in >> cmd;
    if (cmd == "admit" || cmd == "evict") in >> location;
    std::vector<std::uint64_t> keys;
    long long k;
    while (in >> k) keys.push_back(static_cast<std::uint64_t>(k));
    nlohmann::json out;
    if (cmd == "admit" || cmd == "evict") {
      for (std::uint64_t key : keys) cmd == "admit" ? (*w)->Admit(location, key) : (*w)->Evict(location, key);
      kvring::Status s = (*w)->Flush();
      out = s.ok() ? nlohmann::json{{"ok", true}} : nlohmann::json{{"error", s.message()}};
    } else if (cmd == "lookup") {
      auto hit = (*w)->Lookup(keys, std::chrono::milliseconds(2000));
      if (hit.ok())
        out = {{"instance_id", hit->instance_id}, {"location", hit->location},
               {"num_hit_chunks", hit->num_hit_chunks}, {"peer_init_url", hit->peer_init_url}};
      else
        out = {{"error", hit.status().message()}};
    } else {
      out = {{"error", "unknown command " + cmd}};
    }
    std::cout << out.dump() << std::endl;
  }
  return 0;
}
