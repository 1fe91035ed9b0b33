// Runs a program as a real child process (fork/exec) with the given stdin,
// capturing stdout, stderr and the exit status; and (where the test defines
// KVRINGD_PATH) a kvringd running in the background.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace kvring::testing {

struct ProcessResult {
  int exit_code = -1;  // -1 if killed by a signal
  std::string out;
  std::string err;
};

inline ProcessResult RunProcess(const std::vector<std::string>& argv, const std::string& input = "") {
  int in[2], out[2], err[2];
  if (pipe(in) || pipe(out) || pipe(err)) return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) close(fd);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  // Feed stdin and drain both outputs together so neither pipe can fill up.
  ProcessResult r;
  std::size_t written = 0;
  int in_fd = in[1];
  if (input.empty()) { close(in_fd); in_fd = -1; }
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  bool out_open = true, err_open = true;
  while (out_open || err_open || in_fd >= 0) {
    pollfd fds[3];
    int n = 0;
    if (out_open) fds[n++] = {out[0], POLLIN, 0};
    if (err_open) fds[n++] = {err[0], POLLIN, 0};
    if (in_fd >= 0) fds[n++] = {in_fd, POLLOUT, 0};
    if (poll(fds, n, -1) < 0) break;
    for (int i = 0; i < n; ++i) {
      if (!fds[i].revents) continue;
      if (fds[i].fd == in_fd) {
        ssize_t w = write(in_fd, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        if (w < 0 || written == input.size()) { close(in_fd); in_fd = -1; }
        continue;
      }
      char buf[65536];
      ssize_t k = read(fds[i].fd, buf, sizeof buf);
      std::string& dst = fds[i].fd == out[0] ? r.out : r.err;
      if (k > 0) dst.append(buf, static_cast<std::size_t>(k));
      else if (k == 0) (fds[i].fd == out[0] ? out_open : err_open) = false;
    }
  }
  close(out[0]);
  close(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Runs `body` in a forked child (killed if the test process dies); the
// child's exit code is body's return value.
inline pid_t Spawn(const std::function<int()>& body) {
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    _exit(body());
  }
  return pid;
}

// Runs an in-process controller (anything with PollOnce(milliseconds)) until
// the child `pid` exits; the child's exit code, or -1 if it did not exit.
template <typename Controller>
int RunUntilExit(Controller& ctl, pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) ctl.PollOnce(std::chrono::milliseconds(1));
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#ifdef KVRINGD_PATH
// A kvringd in the background, its stderr in a log file; killed (SIGKILL) if
// the test does not stop it.
struct Daemon {
  pid_t pid = -1;
  std::string log;
  Daemon() = default;
  Daemon(Daemon&& o) noexcept : pid(std::exchange(o.pid, -1)), log(std::move(o.log)) {}
  Daemon(const Daemon&) = delete;
  Daemon& operator=(Daemon&& o) noexcept {
    if (this != &o) {
      if (pid > 0) Stop(SIGKILL);
      pid = std::exchange(o.pid, -1);
      log = std::move(o.log);
    }
    return *this;
  }
  static Daemon Start(const std::string& name, std::vector<std::string> extra = {}) {
    Daemon d;
    d.log = "/tmp/kvringd-test-" + name + ".log";
    unlink(d.log.c_str());
    std::vector<std::string> argv{KVRINGD_PATH, "--name", name, "--stats-interval", "0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    int fd = open(d.log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    d.pid = fork();
    if (d.pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(fd, 2);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fd);
    return d;
  }
  // The log once it contains `needle` (woken by inotify as the daemon writes),
  // or "" when `timeout` passes first.
  std::string AwaitLog(const std::string& needle, std::chrono::milliseconds timeout) const {
    int in = inotify_init1(IN_CLOEXEC);
    inotify_add_watch(in, log.c_str(), IN_MODIFY);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string text;
    for (;;) {
      std::ifstream f(log);
      std::stringstream all;
      all << f.rdbuf();
      text = all.str();
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (text.find(needle) != std::string::npos || left.count() <= 0) break;
      pollfd p{in, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) > 0) {
        char buf[4096];
        (void)!read(in, buf, sizeof buf);
      }
    }
    close(in);
    return text.find(needle) != std::string::npos ? text : "";
  }
  int Stop(int sig) {
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }
  ~Daemon() {
    if (pid > 0) Stop(SIGKILL);
  }
};
#endif

}  // namespace kvring::testing
