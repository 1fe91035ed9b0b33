// A minimal blocking HTTP/1.1 client over one keep-alive TCP connection
// (Boost.Beast): what the tests, the HTTP benchmark and tools use to talk to
// kvringd --http. Not a general-purpose client: no TLS, no redirects.
//
// Thread-safety: one HttpClient per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kvring/status.h"

namespace kvring::http {

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string body;
};

class HttpClient {
 public:
  static Result<std::unique_ptr<HttpClient>> Connect(const std::string& host, std::uint16_t port,
                                                     std::chrono::milliseconds timeout = std::chrono::seconds(10));
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // One request on the kept-alive connection (reconnects once if the server
  // closed it). An empty body with "GET".
  Result<HttpReply> Send(std::string_view method, std::string_view path, std::string_view body = {});
  Result<HttpReply> Post(std::string_view path, std::string_view json) { return Send("POST", path, json); }
  // Sent as "Authorization: Bearer <token>" with every request (empty: none).
  void SetBearerToken(std::string token);

 private:
  struct Impl;
  explicit HttpClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvring::http
