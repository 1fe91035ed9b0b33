#include "support/http_client.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace kvring::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

struct HttpClient::Impl {
  std::string host;
  std::uint16_t port = 0;
  std::chrono::milliseconds timeout{};
  std::string token;  // bearer token, or empty
  asio::io_context io;
  tcp::socket socket{io};
  beast::flat_buffer buffer;

  Status Open() {
    beast::error_code ec;
    socket.close(ec);
    socket = tcp::socket(io);
    tcp::resolver resolver(io);
    auto endpoints = resolver.resolve(host, std::to_string(port), ec);
    if (!ec) asio::connect(socket, endpoints, ec);
    if (ec) return Status(ErrorKind::kUnavailable, "cannot connect to " + host + ":" + std::to_string(port) + ": " + ec.message());
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
    setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    socket.set_option(tcp::no_delay(true), ec);
    buffer.clear();
    return Status::Ok();
  }

  Result<HttpReply> Once(std::string_view method, std::string_view path, std::string_view body, bool* retry) {
    bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(beast::string_view(method.data(), method.size())),
                                           std::string(path), 11};
    req.set(bhttp::field::host, host);
    req.set(bhttp::field::user_agent, "kvring");
    if (!token.empty()) req.set(bhttp::field::authorization, "Bearer " + token);
    if (!body.empty()) req.set(bhttp::field::content_type, "application/json");
    req.body() = std::string(body);
    req.keep_alive(true);
    req.prepare_payload();
    beast::error_code ec;
    bhttp::write(socket, req, ec);
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(std::uint64_t{1} << 30);
    if (!ec) bhttp::read(socket, buffer, parser, ec);
    if (ec) {
      *retry = ec == bhttp::error::end_of_stream || ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
               ec == asio::error::eof;
      return Status(ErrorKind::kUnavailable, "HTTP " + std::string(method) + " " + std::string(path) + ": " + ec.message());
    }
    const auto& res = parser.get();
    HttpReply out;
    out.status = static_cast<int>(res.result_int());
    out.content_type = std::string(res[bhttp::field::content_type]);
    out.body = res.body();
    if (!res.keep_alive()) (void)Open();
    return out;
  }
};

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
void HttpClient::SetBearerToken(std::string token) { impl_->token = std::move(token); }
HttpClient::~HttpClient() = default;

Result<std::unique_ptr<HttpClient>> HttpClient::Connect(const std::string& host, std::uint16_t port,
                                                         std::chrono::milliseconds timeout) {
  auto impl = std::make_unique<Impl>();
  impl->host = host;
  impl->port = port;
  impl->timeout = timeout;
  if (Status s = impl->Open(); !s.ok()) return s;
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(impl)));
}

Result<HttpReply> HttpClient::Send(std::string_view method, std::string_view path, std::string_view body) {
  bool retry = false;
  auto r = impl_->Once(method, path, body, &retry);
  if (r.ok() || !retry) return r;
  if (Status s = impl_->Open(); !s.ok()) return s;  // the server closed the kept-alive connection
  return impl_->Once(method, path, body, &retry);
}

}  // namespace kvring::http
