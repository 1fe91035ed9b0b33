#include "kvring/http_api.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <cctype>
#include <unordered_set>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "kvring/orchestration.h"
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

struct Server::Impl {
  Options o;
  std::unique_ptr<client::Orchestrator> controller;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread accepting;
  std::mutex mu;
  std::condition_variable idle;
  std::unordered_set<int> open;  // sockets being served (shut down on stop)
  bool stopping = false;

  static void Write(tcp::socket& s, unsigned version, const Response& r, bool keep_alive, beast::error_code& ec) {
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), version};
    res.set(bhttp::field::server, "kvring");
    res.set(bhttp::field::content_type, r.content_type);
    if (r.bearer_challenge) res.set(bhttp::field::www_authenticate, "Bearer realm=\"kvring\"");
    res.keep_alive(keep_alive);
    res.body() = r.body;
    res.prepare_payload();
    bhttp::write(s, res, ec);
  }

  void Serve(tcp::socket& s) {
    timeval tv{static_cast<time_t>(o.idle_timeout.count() / 1000),
               static_cast<suseconds_t>(o.idle_timeout.count() % 1000 * 1000)};
    setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);  // idle keep-alive connections end
    beast::flat_buffer buf;
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.body_limit(o.max_body_bytes);
      beast::error_code ec;
      bhttp::read(s, buf, parser, ec);
      if (ec == bhttp::error::body_limit) {
        Write(s, 11, Detail(413, "the body exceeds " + std::to_string(o.max_body_bytes) + " bytes"), false, ec);
        // Lingering close: the client may still be sending its body; closing
        // with unread data would reset the connection before it reads the 413.
        s.shutdown(tcp::socket::shutdown_send, ec);
        char sink[65536];
        for (std::size_t drained = 0; drained < 4 * o.max_body_bytes;) {
          std::size_t n = s.read_some(asio::buffer(sink), ec);
          if (ec) break;
          drained += n;
        }
        break;
      }
      if (ec == bhttp::error::end_of_stream || ec == asio::error::eof) break;
      if (ec) {
        if (ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category())
          Write(s, 11, Detail(400, "malformed HTTP request: " + ec.message()), false, ec);
        break;  // also: idle timeout, reset, shutdown
      }
      const auto& req = parser.get();
      Response r = Handle(*controller, std::string_view(req.method_string().data(), req.method_string().size()),
                          std::string_view(req.target().data(), req.target().size()),
                          std::string_view(req.body().data(), req.body().size()), o,
                          std::string_view(req[bhttp::field::authorization].data(), req[bhttp::field::authorization].size()));
      const bool keep = req.keep_alive();
      Write(s, req.version(), r, keep, ec);
      if (ec || !keep) break;
    }
    beast::error_code ignored;
    s.shutdown(tcp::socket::shutdown_both, ignored);
  }

  void Accept() {
    for (;;) {
      beast::error_code ec;
      tcp::socket s(io);
      acceptor.accept(s, ec);
      std::unique_lock lock(mu);
      if (stopping) return;
      if (ec) continue;  // e.g. the peer reset before accept
      if (open.size() >= o.max_connections) {
        lock.unlock();
        Write(s, 11, Detail(503, "too many connections (" + std::to_string(o.max_connections) + ")"), false, ec);
        continue;
      }
      int fd = s.native_handle();
      open.insert(fd);
      std::thread([this, fd, sock = std::move(s)]() mutable {
        Serve(sock);
        std::lock_guard l(mu);
        open.erase(fd);  // before the close: the destructor never shuts down a reused descriptor
        beast::error_code ignored;
        sock.close(ignored);
        idle.notify_all();
      }).detach();  // the destructor waits for `open` to empty, so none outlives the Impl
    }
  }
};

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
  Impl* raw = impl.get();
  impl->accepting = std::thread([raw] { raw->Accept(); });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

std::uint16_t Server::port() const { return impl_->acceptor.local_endpoint().port(); }

Server::~Server() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    for (int fd : impl_->open) ::shutdown(fd, SHUT_RDWR);  // wakes each connection's blocking read
  }
  ::shutdown(impl_->acceptor.native_handle(), SHUT_RDWR);  // wakes the blocking accept
  if (impl_->accepting.joinable()) impl_->accepting.join();
  std::unique_lock lock(impl_->mu);
  impl_->idle.wait(lock, [&] { return impl_->open.empty(); });
}

}  // namespace kvring::http
