#include "kvring/http/server.h"

#include <sys/socket.h>

#include <atomic>
#include <future>
#include <list>
#include <unordered_map>
#include <optional>
#include <thread>
#include <cctype>
#include <unordered_set>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "kvring/protocol/orchestration.h"
#include "kvring/protocol/json.h"

namespace kvring::http {
namespace {

using namespace kvring::protocol;
namespace orch = kvring::orchestration;
using Json = nlohmann::ordered_json;

Response JsonResponse(int status, const Json& body) { return Response{status, "application/json", body.dump()}; }
Response Detail(int status, const std::string& detail) { return JsonResponse(status, Json{{"detail", detail}}); }

// Reads the fields of a request body, remembering the first problem.
class Fields {
 public:
  explicit Fields(const nlohmann::json& j) : j_(j) {}
  const std::string& error() const { return error_; }

  std::string Str(const char* name) {
    const nlohmann::json* v = Find(name, true);
    if (!v) return {};
    if (!v->is_string()) return Fail(name, "a string"), std::string();
    return v->get<std::string>();
  }
  // A list of integers; absent (or null) gives `fallback` when there is one.
  std::optional<std::vector<Int>> Ints(const char* name, std::optional<std::vector<Int>> fallback = std::nullopt,
                                       bool optional = false) {
    const nlohmann::json* v = Find(name, !optional);
    if (!v || v->is_null()) return fallback;
    if (!v->is_array()) return Fail(name, "a list of integers"), std::nullopt;
    std::vector<Int> out;
    out.reserve(v->size());
    for (const auto& x : *v) {
      if (x.is_number_unsigned()) out.push_back(Int::FromU64(x.get<std::uint64_t>()));
      else if (x.is_number_integer()) out.push_back(Int::FromI64(x.get<std::int64_t>()));
      else return Fail(name, "a list of integers"), std::nullopt;
    }
    return out;
  }
  StrPair Pair(const char* name) {
    const nlohmann::json* v = Find(name, true);
    if (!v) return {};
    if (!v->is_array() || v->size() != 2 || !(*v)[0].is_string() || !(*v)[1].is_string())
      return Fail(name, "a pair [instance_id, location] of strings"), StrPair{};
    return StrPair{(*v)[0].get<std::string>(), (*v)[1].get<std::string>()};
  }
  std::optional<bool> Bool(const char* name) {
    const nlohmann::json* v = Find(name, false);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_boolean()) return Fail(name, "true or false"), std::nullopt;
    return v->get<bool>();
  }

 private:
  const nlohmann::json* Find(const char* name, bool required) {
    auto it = j_.find(name);
    if (it == j_.end()) {
      if (required && error_.empty()) error_ = std::string("field '") + name + "' is required";
      return nullptr;
    }
    return &*it;
  }
  void Fail(const char* name, const char* what) {
    if (error_.empty()) error_ = std::string("field '") + name + "' must be " + what;
  }
  const nlohmann::json& j_;
  std::string error_;
};

int StatusOf(const std::string& error) {
  switch (orch::ErrorClassOf(error)) {
    case orch::ErrorClass::kUnknownInstance:
    case orch::ErrorClass::kUnknownEvent: return 404;
    case orch::ErrorClass::kDeadline: return 504;
    case orch::ErrorClass::kWorkerFailed: return 502;
    case orch::ErrorClass::kInvalid: return 400;
    case orch::ErrorClass::kOther: break;
  }
  return 500;
}

// Sends `m` and shapes the reply: `fields` of the reply's JSON view, in that order.
Response Ask(client::Orchestrator& o, const Message& m, const Options& opt, const std::vector<const char*>& fields) {
  auto r = o.Request(m, opt.request_timeout);
  if (!r.ok()) {
    if (r.status().kind() == ErrorKind::kTimeout)
      return Detail(504, "controller '" + opt.controller + "' did not answer within " +
                             std::to_string(opt.request_timeout.count()) + " ms");
    return Detail(503, "controller '" + opt.controller + "' is unreachable: " + r.status().message());
  }
  if (auto* e = std::get_if<ErrorMsg>(&*r)) return Detail(StatusOf(e->error), e->error);
  Json view = ToJson(*r);
  Json out = Json::object();
  for (const char* f : fields) out[f] = view[f];
  return JsonResponse(200, out);
}

Response Metrics(client::Orchestrator& o, const Options& opt) {
  auto r = o.Control(R"({"op":"metrics"})", opt.request_timeout);
  if (!r.ok()) return Detail(r.status().kind() == ErrorKind::kTimeout ? 504 : 503, r.status().message());
  auto j = nlohmann::json::parse(*r, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("metrics") || !j["metrics"].is_string())
    return Detail(502, "the controller's metrics reply is malformed");
  return Response{200, "text/plain; version=0.0.4; charset=utf-8", j["metrics"].get<std::string>()};
}

// Walks a body as SAX events, without building anything, and stops at the
// first value past the depth or element limit: the tree is built only for a
// body within both, so its size is bounded by them, not by the body's shape.
class BoundedJson : public nlohmann::json_sax<nlohmann::json> {
 public:
  BoundedJson(std::size_t max_depth, std::size_t max_elements) : max_depth_(max_depth), max_elements_(max_elements) {}
  std::string problem;  // set when a limit stopped the walk

  bool null() override { return Value(); }
  bool boolean(bool) override { return Value(); }
  bool number_integer(number_integer_t) override { return Value(); }
  bool number_unsigned(number_unsigned_t) override { return Value(); }
  bool number_float(number_float_t, const string_t&) override { return Value(); }
  bool string(string_t&) override { return Value(); }
  bool binary(binary_t&) override { return Value(); }
  bool start_object(std::size_t) override { return Value() && Enter(); }
  bool end_object() override { return Leave(); }
  bool start_array(std::size_t) override { return Value() && Enter(); }
  bool end_array() override { return Leave(); }
  bool key(string_t&) override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  bool Value() {
    if (++elements_ <= max_elements_) return true;
    problem = "the body has more than " + std::to_string(max_elements_) + " JSON values";
    return false;
  }
  bool Enter() {
    if (++depth_ <= max_depth_) return true;
    problem = "the body nests JSON deeper than " + std::to_string(max_depth_) + " levels";
    return false;
  }
  bool Leave() {
    --depth_;
    return true;
  }
  std::size_t max_depth_, max_elements_;
  std::size_t depth_ = 0, elements_ = 0;
};

}  // namespace

namespace {

// Whether `authorization` is "Bearer <token>"; compared in time that does
// not depend on where a guess goes wrong.
bool BearerMatches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() < kScheme.size()) return false;
  for (std::size_t i = 0; i < kScheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != std::tolower(static_cast<unsigned char>(kScheme[i])))
      return false;
  const std::string_view given = authorization.substr(kScheme.size());
  unsigned char diff = given.size() == token.size() ? 0 : 1;
  for (std::size_t i = 0; i < token.size(); ++i)
    diff |= static_cast<unsigned char>(token[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

Response Unauthorized() {
  Response r = Detail(401, "this endpoint needs \"Authorization: Bearer <token>\" (kvringd --http-token-file)");
  r.bearer_challenge = true;
  return r;
}

}  // namespace

Response Handle(client::Orchestrator& o, std::string_view method, std::string_view target, std::string_view body,
                const Options& opt, std::string_view authorization) {
  std::string_view path = target.substr(0, target.find('?'));
  static const std::unordered_set<std::string_view> kPostPaths = {
      "/lookup", "/clear", "/pin", "/compress", "/decompress", "/move", "/health", "/check_finish",
      "/query_instance", "/query_worker_info"};
  static const std::unordered_set<std::string_view> kMutating = {"/clear", "/pin", "/compress", "/decompress", "/move"};
  const bool authorized = opt.bearer_token.empty() || BearerMatches(authorization, opt.bearer_token);
  if (path == "/metrics") {
    if (method != "GET") return Detail(405, "Method Not Allowed");
    if (opt.metrics_need_token && !authorized) return Unauthorized();
    return Metrics(o, opt);
  }
  if (!kPostPaths.count(path)) return Detail(404, "Not Found");
  if (method != "POST") return Detail(405, "Method Not Allowed");
  if (kMutating.count(path) && !authorized) return Unauthorized();

  BoundedJson bounds(opt.max_json_depth, opt.max_json_elements);
  if (!nlohmann::json::sax_parse(body.begin(), body.end(), &bounds, nlohmann::json::input_format_t::json,
                                 /*strict=*/true, /*ignore_comments=*/false))
    return bounds.problem.empty() ? Detail(400, "the body is not valid JSON") : Detail(413, bounds.problem);
  auto j = nlohmann::json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Detail(400, "the body is not valid JSON");
  if (!j.is_object()) return Detail(400, "the body must be a JSON object");
  Fields f(j);
  Message m;
  std::vector<const char*> shape = {"event_id", "num_tokens"};
  if (path == "/lookup") {
    m = LookupMsg{orch::NewEventId("Lookup"), f.Ints("tokens").value_or(std::vector<Int>{})};
    shape = {"event_id", "layout_info"};
  } else if (path == "/clear") {
    std::string instance = f.Str("instance_id");
    m = ClearMsg{orch::NewEventId("Clear"), instance, f.Str("location")};
  } else if (path == "/pin") {
    std::string instance = f.Str("instance_id");
    std::string location = f.Str("location");
    m = PinMsg{orch::NewEventId("Pin"), instance, location, f.Ints("tokens").value_or(std::vector<Int>{})};
  } else if (path == "/compress" || path == "/decompress") {
    std::string instance = f.Str("instance_id");
    std::string method_name = f.Str("method");
    std::string location = f.Str("location");
    auto tokens = f.Ints("tokens", std::vector<Int>{}, /*optional=*/true);  // LMCache's HTTP default: []
    if (path == "/compress") m = CompressMsg{orch::NewEventId("Compress"), instance, method_name, location, tokens};
    else m = DecompressMsg{orch::NewEventId("Decompress"), instance, method_name, location, tokens};
  } else if (path == "/move") {
    StrPair from = f.Pair("old_position");
    StrPair to = f.Pair("new_position");
    auto tokens = f.Ints("tokens", std::vector<Int>{}, /*optional=*/true);
    // Newer LMCache names the flag should_copy, older ones copy.
    std::optional<bool> copy = f.Bool("should_copy");
    if (!copy) copy = f.Bool("copy");
    m = MoveMsg{orch::NewEventId("Move"), from, to, tokens, copy.value_or(false)};
  } else if (path == "/health") {
    m = HealthMsg{orch::NewEventId("health"), f.Str("instance_id")};
    shape = {"event_id", "error_codes"};
  } else if (path == "/check_finish") {
    m = CheckFinishMsg{f.Str("event_id")};
    shape = {"status"};
  } else if (path == "/query_instance") {
    m = QueryInstMsg{orch::NewEventId("QueryInst"), f.Str("ip")};  // the body's event_id is ignored, as LMCache
    if (!f.error().empty()) return Detail(400, f.error());
    Response r = Ask(o, m, opt, {"event_id", "instance_id"});
    if (r.status != 200) return r;
    auto view = Json::parse(r.body);
    // LMCache declares res: str, so a miss is its HTTP 500; here a clear 404.
    if (view["instance_id"].is_null())
      return Detail(404, "no registered instance has a worker with ip '" + std::get<QueryInstMsg>(m).ip + "'");
    return JsonResponse(200, Json{{"event_id", view["event_id"]}, {"res", view["instance_id"]}});
  } else {  // /query_worker_info
    std::string instance = f.Str("instance_id");
    m = QueryWorkerInfoMsg{orch::NewEventId("QueryWorkerInfo"), instance, f.Ints("worker_ids", std::nullopt, true)};
    shape = {"event_id", "worker_infos"};
  }
  if (!f.error().empty()) return Detail(400, f.error());
  return Ask(o, m, opt, shape);
}

// ---- the server ------------------------------------------------------------------

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

// One thread runs every socket's I/O and timers (asynchronous: a slow or
// silent peer holds no thread); requests, once whole, go to a small pool
// where Handle() may wait on the controller (up to request_timeout), and
// their replies come back to the I/O thread to be written. Every phase has a
// deadline: the first byte of a request (idle_timeout), the rest of it
// (read_timeout), the reply's write (read_timeout). Connections are bounded
// in total and per client address; when a bound is reached, the oldest
// connection still waiting for or reading a request is closed to make room,
// so connections that trickle bytes (slowloris) cannot lock real clients out.
struct Server::Impl {
  struct Session;
  Options o;
  std::unique_ptr<client::Orchestrator> controller;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  std::thread io_thread;
  std::unique_ptr<asio::thread_pool> handlers;
  std::atomic<std::size_t> in_handlers{0};
  // I/O thread only:
  std::list<std::shared_ptr<Session>> sessions;  // oldest first
  std::unordered_map<std::string, std::size_t> per_address;
  std::size_t body_bytes_reserved = 0;
  bool stopping = false;

  void Accept();
  void Admit(tcp::socket sock);
  bool EvictOldestReader(const std::string* address);
  void Forget(Session* s);
};

struct Server::Impl::Session : std::enable_shared_from_this<Session> {
  enum class State { kWaiting, kReading, kHandling, kWriting, kClosed };
  Impl& srv;
  beast::tcp_stream stream;
  std::string address;
  std::list<std::shared_ptr<Session>>::iterator at;
  beast::flat_buffer buf;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser;
  bhttp::response<bhttp::string_body> res;
  State state = State::kWaiting;
  std::size_t reserved = 0;  // of the server's body budget
  std::size_t drained = 0;
  char sink[16384];

  Session(Impl& s, tcp::socket sock, std::string addr)
      : srv(s), stream(std::move(sock)), address(std::move(addr)) {}

  bool evictable() const { return state == State::kWaiting || state == State::kReading; }

  void ReadRequest() {
    parser.emplace();
    parser->body_limit(srv.o.max_body_bytes);
    parser->header_limit(static_cast<std::uint32_t>(srv.o.max_header_bytes));
    state = State::kWaiting;
    if (buf.size() > 0) return ReadRest();  // pipelined: the next request has begun
    stream.expires_after(srv.o.idle_timeout);
    stream.async_read_some(buf.prepare(4096), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      if (ec || self->state == State::kClosed) return self->Close();
      self->buf.commit(n);
      self->ReadRest();
    });
  }

  void ReadRest() {
    state = State::kReading;
    stream.expires_after(srv.o.read_timeout);
    bhttp::async_read_header(stream, buf, *parser, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec || self->state == State::kClosed) return self->OnRead(ec);
      self->ReadBody();
    });
  }

  // The body's memory is reserved from the server's budget before it is
  // read: connections that each send a large body at once cannot together
  // take more than max_body_memory.
  void ReadBody() {
    const std::size_t want = std::min<std::size_t>(
        parser->content_length() ? static_cast<std::size_t>(*parser->content_length()) : srv.o.max_body_bytes,
        srv.o.max_body_bytes);
    if (want > 0) {
      if (srv.body_bytes_reserved + want > srv.o.max_body_memory)
        return Respond(Detail(503, "the server is reading too many bodies at once; try again"), parser->get().version(),
                       false, true);
      srv.body_bytes_reserved += want;
      reserved = want;
    }
    bhttp::async_read(stream, buf, *parser, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->OnRead(ec);
    });
  }

  void Unreserve() {
    srv.body_bytes_reserved -= reserved;
    reserved = 0;
  }

  void OnRead(beast::error_code ec) {
    if (state == State::kClosed) return;
    if (ec == bhttp::error::body_limit)
      return Respond(Detail(413, "the body exceeds " + std::to_string(srv.o.max_body_bytes) + " bytes"), 11, false, true);
    if (ec == bhttp::error::header_limit)
      return Respond(Detail(431, "the header exceeds " + std::to_string(srv.o.max_header_bytes) + " bytes"), 11, false,
                     true);
    if (ec) {
      if (ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category())
        return Respond(Detail(400, "malformed HTTP request: " + ec.message()), 11, false, false);
      return Close();  // end of stream, reset, or a deadline passed
    }
    if (srv.in_handlers.load(std::memory_order_relaxed) >= srv.o.max_queued_requests)
      return Respond(Detail(503, "too many requests in progress (" + std::to_string(srv.o.max_queued_requests) + ")"),
                     parser->get().version(), false, false);
    state = State::kHandling;
    stream.expires_never();
    srv.in_handlers.fetch_add(1, std::memory_order_relaxed);
    asio::post(*srv.handlers, [self = shared_from_this()] {
      // The parser is this thread's alone while the session is kHandling:
      // the I/O thread starts nothing on the session until the reply is back.
      const auto& req = self->parser->get();
      Response r = Handle(*self->srv.controller, std::string_view(req.method_string().data(), req.method_string().size()),
                          std::string_view(req.target().data(), req.target().size()),
                          std::string_view(req.body().data(), req.body().size()), self->srv.o,
                          std::string_view(req[bhttp::field::authorization].data(),
                                           req[bhttp::field::authorization].size()));
      const unsigned version = req.version();
      const bool keep = req.keep_alive();
      asio::post(self->srv.io, [self, r = std::move(r), version, keep] {
        self->srv.in_handlers.fetch_sub(1, std::memory_order_relaxed);
        self->Unreserve();
        if (self->state == State::kClosed) return;
        self->Respond(r, version, keep, false);
      });
    });
  }

  void Respond(const Response& r, unsigned version, bool keep_alive, bool linger) {
    state = State::kWriting;
    res = bhttp::response<bhttp::string_body>{static_cast<bhttp::status>(r.status), version};
    res.set(bhttp::field::server, "kvring");
    res.set(bhttp::field::content_type, r.content_type);
    if (r.bearer_challenge) res.set(bhttp::field::www_authenticate, "Bearer realm=\"kvring\"");
    res.keep_alive(keep_alive && !srv.stopping);
    res.body() = r.body;
    res.prepare_payload();
    stream.expires_after(srv.o.read_timeout);
    bhttp::async_write(stream, res, [self = shared_from_this(), linger](beast::error_code ec, std::size_t) {
      if (self->state == State::kClosed) return;
      if (!ec && linger) return self->Linger();
      if (ec || !self->res.keep_alive()) return self->Close();
      self->ReadRequest();
    });
  }

  // After a 413: the client may still be sending its body; closing with
  // unread data would reset the connection before it reads the answer.
  void Linger() {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.expires_after(std::chrono::seconds(2));
    DrainSome();
  }
  void DrainSome() {
    stream.async_read_some(asio::buffer(sink), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->drained += n;
      if (ec || self->state == State::kClosed || self->drained > 4 * self->srv.o.max_body_bytes) return self->Close();
      self->DrainSome();
    });
  }

  void Close() {
    if (state == State::kClosed) return;
    if (state != State::kHandling) Unreserve();  // a handler still reads the body: released when it is done
    state = State::kClosed;
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.close();
    srv.Forget(this);
  }
};

void Server::Impl::Forget(Session* s) {
  auto a = per_address.find(s->address);
  if (a != per_address.end() && --a->second == 0) per_address.erase(a);
  sessions.erase(s->at);  // the last reference may be a pending handler's
}

bool Server::Impl::EvictOldestReader(const std::string* address) {
  for (auto& s : sessions)
    if (s->evictable() && (!address || s->address == *address)) {
      s->Close();
      return true;
    }
  return false;
}

void Server::Impl::Admit(tcp::socket sock) {
  beast::error_code ec;
  const auto peer = sock.remote_endpoint(ec);
  if (ec) return;  // gone already
  std::string address = peer.address().to_string();
  const bool room_here = per_address[address] < o.max_connections_per_address || EvictOldestReader(&address);
  const bool room = room_here && (sessions.size() < o.max_connections || EvictOldestReader(nullptr));
  if (!room) {
    if (per_address[address] == 0) per_address.erase(address);
    // Everyone is busy with a request: say so, without waiting on this peer.
    const std::string body = Detail(503, "every connection is busy with a request").body;
    const std::string busy = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
                             std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    sock.non_blocking(true, ec);
    (void)sock.write_some(asio::buffer(busy), ec);
    sock.close(ec);
    return;
  }
  ++per_address[address];
  auto session = std::make_shared<Session>(*this, std::move(sock), std::move(address));
  sessions.push_back(session);
  session->at = std::prev(sessions.end());
  session->ReadRequest();
}

void Server::Impl::Accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket sock) {
    if (stopping) return;
    if (!ec) Admit(std::move(sock));
    Accept();  // also after an error (e.g. the peer reset before accept, EMFILE)
  });
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Server>> Server::Start(const Options& options) {
  auto impl = std::make_unique<Impl>();
  impl->o = options;
  beast::error_code ec;
  auto addr = asio::ip::make_address(options.host, ec);
  if (ec) return Status(ErrorKind::kInvalidArgument, "HTTP address '" + options.host + "': " + ec.message());
  tcp::endpoint ep(addr, options.port);
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return Status(ErrorKind::kUnavailable,
                  "cannot serve HTTP on " + options.host + ":" + std::to_string(options.port) + ": " + ec.message());
  auto c = client::Orchestrator::Connect(options.controller, std::chrono::milliseconds(5000));
  if (!c.ok()) return c.status();
  impl->controller = std::move(c).value();
  impl->handlers = std::make_unique<asio::thread_pool>(std::max<std::size_t>(1, options.handler_threads));
  Impl* raw = impl.get();
  raw->Accept();
  impl->io_thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

std::uint16_t Server::port() const { return impl_->acceptor.local_endpoint().port(); }

Server::~Server() {
  Impl& i = *impl_;
  // On the I/O thread: stop accepting and close every connection (a request
  // being handled is answered to no one).
  std::promise<void> closed;
  asio::post(i.io, [&] {
    i.stopping = true;
    beast::error_code ignored;
    i.acceptor.close(ignored);
    while (!i.sessions.empty()) i.sessions.front()->Close();
    closed.set_value();
  });
  closed.get_future().wait();
  i.handlers->join();  // handlers end within request_timeout; their replies find closed sessions
  i.work.reset();
  i.io_thread.join();  // io.run() returns once nothing is pending
}

}  // namespace kvring::http
