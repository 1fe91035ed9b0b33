// A worker built on the client library, in a forked process: registers with
// its command handlers, runs `setup` (admits, ...), answers commands on its
// background ticker (or, with ticks = false, never reads them) until the test
// lets it go (Release) or it is killed with the test.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>

#include "kvring/client/client.h"

namespace kvring::testing {

struct WorkerProcess {
  pid_t pid = -1;
  int release_fd = -1;
  // Tells the worker to deregister and exit. A byte, not EOF: workers forked
  // later hold copies of this pipe's write end.
  void LetGo() {
    (void)!send(release_fd, "x", 1, MSG_NOSIGNAL);  // the worker may be gone already
    close(release_fd);
  }
  // LetGo(), then the worker's exit code (0: all went well).
  int Release() {
    LetGo();
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

inline WorkerProcess StartWorker(const std::string& controller, const std::string& instance, int rank,
                                 client::CommandHandlers handlers, bool ticks = true,
                                 const std::function<bool(client::Worker&)>& setup = {}) {
  int p[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, p) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    close(p[1]);
    client::WorkerOptions o;
    o.controller = controller;
    o.instance_id = instance;
    o.worker_id = rank;
    o.peer_init_url = instance + ":" + std::to_string(8200 + rank);
    o.attach_timeout = std::chrono::milliseconds(5000);
    o.handlers = std::move(handlers);
    auto w = client::Worker::Connect(o);
    if (!w.ok()) _exit(1);
    if (setup && !setup(**w)) _exit(2);
    if (ticks) (*w)->StartBackgroundTicks();
    char c;
    (void)!read(p[0], &c, 1);  // LetGo(), or EOF when the test dies
    _exit(0);
  }
  close(p[0]);
  return {pid, p[1]};
}

}  // namespace kvring::testing
