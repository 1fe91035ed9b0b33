// LMCache's controller HTTP API (lmcache/v1/api_server/__main__.py), served by
// kvringd --http: the same endpoints, methods, JSON bodies, response shapes
// and generated event_id prefixes, so LMCache's UI and production-stack's
// router work unchanged. Where LMCache answers a bare HTTP 500, kvring answers
// {"detail": "<what went wrong>"} with a fitting status:
//   400 malformed JSON, missing or mistyped fields, or a request the
//       controller refuses;  404 unknown instance or event id, unknown path;
//   405 wrong method;  413 body over the limit;  502 a worker failed;
//   503 controller unreachable;  504 a worker (or the controller) missed the
//   deadline.
//
// The server runs on threads of its own (one for every socket's asynchronous
// I/O and deadlines, handler_threads for requests) and reaches the controller
// as an ordinary ring client (client::Orchestrator), so the controller stays
// single-threaded.
//
// Thread-safety: Handle() may be called from any thread; a Server is started
// and destroyed by one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kvring/client/client.h"
#include "kvring/status.h"

namespace kvring::http {

struct Options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 9000;               // 0: any free port (see Server::port())
  std::string controller = "kvring";       // the controller's name
  std::size_t max_body_bytes = 8u << 20;   // larger bodies get 413
  // A body is checked against these before any JSON tree is built (413):
  // an 8 MiB body of '[' would otherwise take ~500 MB to parse.
  std::size_t max_json_depth = 64;
  std::size_t max_json_elements = 1u << 20;  // values in the whole body (a token list's length, roughly)
  std::size_t max_header_bytes = 16u << 10;  // larger request heads get 431
  // Bodies being read at once reserve their length (or max_body_bytes when
  // unknown) from this budget; past it a request gets 503.
  std::size_t max_body_memory = 128u << 20;
  // Connections in all and per client address. At either bound the oldest
  // connection still waiting for or reading a request is closed to make
  // room; when every one is busy with a request, a newcomer gets 503.
  std::size_t max_connections = 1024;
  std::size_t max_connections_per_address = 64;
  std::size_t handler_threads = 8;           // requests handled at once (each may wait on the controller)
  std::size_t max_queued_requests = 256;     // whole requests waiting or in handlers; more get 503
  std::chrono::milliseconds request_timeout{10000};  // keep above the controller's command deadline
  std::chrono::milliseconds idle_timeout{60000};     // until a request's first byte (keep-alive idle)
  std::chrono::milliseconds read_timeout{10000};     // from a request's first byte to its last; a reply's write
  // Non-empty: the endpoints that change caches (/clear, /pin, /compress,
  // /decompress, /move) want "Authorization: Bearer <token>" and answer 401
  // without it (LMCache's are open to anyone who reaches the port);
  // metrics_need_token extends that to GET /metrics. Lookups, queries,
  // /health and /check_finish stay open.
  std::string bearer_token;
  bool metrics_need_token = false;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  bool bearer_challenge = false;  // 401: send WWW-Authenticate: Bearer
};

// One request to the API: what the server does for each, without sockets.
// `authorization`: the request's Authorization header, if any.
Response Handle(client::Orchestrator& controller, std::string_view method, std::string_view path,
                std::string_view body, const Options& options, std::string_view authorization = {});

class Server {
 public:
  // Binds host:port (an error if that fails), attaches to the controller and
  // starts serving.
  static Result<std::unique_ptr<Server>> Start(const Options& options);
  ~Server();  // stops accepting, closes every connection, joins every thread
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  std::uint16_t port() const;  // the bound port

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvring::http
