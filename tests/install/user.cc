// A user's program against an installed kvring: two workers of a live
// controller (its name is argv[1]); one admits a chunk, the other finds it.
#include <kvring/client/client.h>

#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  using kvring::client::Worker;
  using kvring::client::WorkerOptions;
  if (argc != 2) {
    std::cerr << "usage: kvring_user <controller name>\n";
    return 2;
  }
  auto options = [&](const char* instance) {
    WorkerOptions o;
    o.controller = argv[1];
    o.instance_id = instance;
    o.worker_id = 0;
    o.peer_init_url = std::string(instance) + ":8200";
    o.attach_timeout = std::chrono::milliseconds(5000);
    // A controller that has just started asks for a full sync: the engine's
    // own list of what it holds (here: the chain, for the holder only).
    const bool holds = std::string(instance) == "installed-a";
    o.keys_of = [holds](const std::string&) {
      return holds ? std::vector<std::uint64_t>{0x1234, 0x5678} : std::vector<std::uint64_t>{};
    };
    return o;
  };
  auto holder = Worker::Connect(options("installed-a"));
  auto asker = Worker::Connect(options("installed-b"));
  if (!holder.ok() || !asker.ok()) {
    std::cerr << "connect: " << (holder.ok() ? asker.status() : holder.status()).ToString() << "\n";
    return 1;
  }
  const std::uint64_t chain[] = {0x1234, 0x5678};
  for (std::uint64_t h : chain) (*holder)->Admit("LocalCPUBackend", h);
  // Flushed, then a heartbeat: its reply comes after the events were applied.
  if (auto s = (*holder)->Flush(); !s.ok()) return std::cerr << "flush: " << s.ToString() << "\n", 1;
  if (auto s = (*holder)->Heartbeat(); !s.ok()) return std::cerr << "heartbeat: " << s.ToString() << "\n", 1;
  auto hit = (*asker)->Lookup(chain, std::chrono::milliseconds(2000));
  if (!hit.ok()) return std::cerr << "lookup: " << hit.status().ToString() << "\n", 1;
  std::cout << "hit " << hit->instance_id << " " << hit->num_hit_chunks << "\n";
  return hit->instance_id == "installed-a" && hit->num_hit_chunks == 2 ? 0 : 1;
}
