// _kvring: the CPython extension behind the `kvring` Python package
// (python/kvring/__init__.py wraps it). It binds the client layer (Worker,
// Orchestrator) and the protocol layer (msgspec's bytes, chunk hashes), and
// nothing else of kvring: the layering rule of src/ holds here too.
//
// Rules of this file:
//   - everything from Python is checked before use: wrong types, ints out of
//     range, buffers of the wrong format or itemsize raise ValueError or
//     TypeError, never reach the C++ API;
//   - every wait (attach, flush, lookup, heartbeat, close, a request)
//     releases the GIL; every Python callable (command handlers, keys_of)
//     is called with the GIL taken, on the Worker's background thread;
//   - a Python exception inside a callable becomes the ErrorMsg LMCache's
//     worker would send ("Worker error: ..."), never a C++ exception escaping
//     into the client library's threads;
//   - kvring's Status becomes kvring.Error (TimeoutError for kTimeout,
//     ValueError for bad input), with kvring's message.
#include <Python.h>
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvring/client/client.h"
#include "kvring/protocol/chunk_hash.h"
#include "kvring/protocol/codec.h"
#include "kvring/protocol/json.h"
#include "kvring/version.h"

namespace py = pybind11;

namespace {

using kvring::ErrorKind;
using kvring::Status;

PyObject* g_error = nullptr;  // kvring.Error

[[noreturn]] void Raise(const Status& s) {
  switch (s.kind()) {
    case ErrorKind::kTimeout:
      PyErr_SetString(PyExc_TimeoutError, s.ToString().c_str());
      throw py::error_already_set();
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kProtocol: throw py::value_error(s.ToString());
    default: break;
  }
  PyErr_SetString(g_error, s.ToString().c_str());
  throw py::error_already_set();
}

template <typename T>
T Take(kvring::Result<T>&& r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}

void Check(const Status& s) {
  if (!s.ok()) Raise(s);
}

std::chrono::milliseconds Millis(double seconds, const char* what) {
  if (!(seconds >= 0) || seconds > 86400.0 * 365)
    throw py::value_error(std::string(what) + " must be a number of seconds in [0, 1 year]");
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0 + 0.5));
}

// A Python int as the 64-bit pattern of a chunk hash: [-2^63, 2^64 - 1],
// negative ones two's complement (as Int::bits(): -1 and 2^64-1 are one chunk).
std::uint64_t HashBits(PyObject* o) {
  if (!PyLong_Check(o)) throw py::type_error("a chunk hash must be an int");
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (overflow == 0) {
    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
    return static_cast<std::uint64_t>(v);
  }
  if (overflow < 0) throw py::value_error("a chunk hash must be within [-2**63, 2**64 - 1]");
  const unsigned long long u = PyLong_AsUnsignedLongLong(o);
  if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error("a chunk hash must be within [-2**63, 2**64 - 1]");
  }
  return u;
}

// Hashes given as a buffer of 8-byte integers (a numpy int64/uint64 array,
// array('q'), bytes of a memoryview cast to 'Q'): used in place, nothing
// copied element by element; or as any iterable of ints.
class Hashes {
 public:
  explicit Hashes(const py::handle& obj) {
    if (PyObject_CheckBuffer(obj.ptr()) && !PyBytes_Check(obj.ptr()) && !PyUnicode_Check(obj.ptr())) {
      if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) != 0) throw py::error_already_set();
      held_ = true;
      const std::string f = view_.format ? view_.format : "B";
      const char kind = f.empty() ? 'B' : f.back();
      const bool native = f.size() == 1 || f[0] == '@' || f[0] == '=' || f[0] == '<';
      if (view_.itemsize != 8 || !native || (kind != 'q' && kind != 'Q' && kind != 'l' && kind != 'L')) {
        Release();
        throw py::type_error("hashes as a buffer must hold 8-byte integers (int64 or uint64), got format '" + f +
                             "' of itemsize " + std::to_string(view_.itemsize));
      }
      span_ = std::span(static_cast<const std::uint64_t*>(view_.buf), static_cast<std::size_t>(view_.len / 8));
      signed_ = kind == 'q' || kind == 'l';
      return;
    }
    if (PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()))
      throw py::type_error("hashes must be a sequence of ints or a buffer of 8-byte integers, not str/bytes");
    py::iterator it = py::iter(obj);  // TypeError if not iterable
    for (; it != py::iterator::sentinel(); ++it) copy_.push_back(HashBits(it->ptr()));
    span_ = copy_;
  }
  ~Hashes() { Release(); }
  Hashes(const Hashes&) = delete;
  Hashes& operator=(const Hashes&) = delete;
  std::span<const std::uint64_t> span() const { return span_; }
  bool is_signed() const { return signed_; }  // a buffer of int64 (a list's ints are checked one by one)

 private:
  void Release() {
    if (held_) PyBuffer_Release(&view_);
    held_ = false;
  }
  Py_buffer view_{};
  bool held_ = false;
  std::vector<std::uint64_t> copy_;
  std::span<const std::uint64_t> span_;
  bool signed_ = false;
};

// Message <-> JSON text (msgspec's to_builtins shape); the package turns the
// text into dicts with Python's json module.
std::string ToJsonText(const kvring::protocol::Message& m) { return kvring::protocol::ToJson(m).dump(); }

kvring::protocol::Message FromJsonText(const std::string& text) {
  auto j = kvring::protocol::ParseJson(text);
  if (!j.ok()) throw py::value_error(j.status().ToString());
  auto m = kvring::protocol::MessageFromJson(*j);
  if (!m.ok()) throw py::value_error(m.status().ToString());
  return std::move(m).value();
}

py::bytes Encode(const std::string& json_text) {
  std::string bytes = kvring::protocol::Encode(FromJsonText(json_text));
  return py::bytes(bytes);
}

std::string Decode(const py::bytes& data) {
  std::string_view b = data;  // pybind11: a view of the bytes object
  auto m = kvring::protocol::Decode(std::span(reinterpret_cast<const std::uint8_t*>(b.data()), b.size()));
  if (!m.ok()) throw py::value_error(m.status().ToString());
  return ToJsonText(*m);
}

// A Python object kept by a C++ callable that the client library owns: it
// may be destroyed on any thread, with or without the GIL (a Worker closed
// with the GIL released), so its last reference is dropped with the GIL taken.
struct PyRef {
  explicit PyRef(py::object o) : obj(std::move(o)) {}
  ~PyRef() {
    py::gil_scoped_acquire gil;
    obj = py::object();
  }
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  py::object obj;
};

// ---- command handlers --------------------------------------------------------

// What a Python handler returns becomes the worker's ControlRetMsg: an int
// (num_tokens, or Health's error_code), a str (CheckFinish's status), or a
// dict of the whole reply in the to_builtins shape.
template <typename Ret, typename Msg>
std::function<Ret(const Msg&)> Handler(py::object fn) {
  if (fn.is_none()) return {};
  if (!PyCallable_Check(fn.ptr())) throw py::type_error(std::string("the handler for ") + std::string(Msg::kTag) +
                                                        " must be callable");
  auto shared = std::make_shared<PyRef>(std::move(fn));
  return [shared](const Msg& m) -> Ret {
    py::gil_scoped_acquire gil;
    try {
      py::object json = py::module_::import("json");
      py::object arg = json.attr("loads")(ToJsonText(kvring::protocol::Message(m)));
      py::object r = shared->obj(arg);
      if constexpr (std::is_same_v<Ret, kvring::protocol::CheckFinishWorkerRetMsg>) {
        if (py::isinstance<py::str>(r)) return Ret{r.cast<std::string>()};
      } else {
        if (py::isinstance<py::int_>(r) && !py::isinstance<py::bool_>(r)) {
          auto v = kvring::protocol::Int::FromI64(r.cast<std::int64_t>());
          return Ret{v};
        }
      }
      if (py::isinstance<py::dict>(r)) {
        py::dict d = r;
        if (!d.contains("type")) d["type"] = std::string(Ret::kTag);
        auto msg = FromJsonText(json.attr("dumps")(d).cast<std::string>());
        if (auto* ret = std::get_if<Ret>(&msg)) return *ret;
        throw std::runtime_error("the handler returned a " + std::string(kvring::protocol::TagOf(msg)) + ", not a " +
                                 std::string(Ret::kTag));
      }
      throw std::runtime_error("the handler for " + std::string(Msg::kTag) + " returned " +
                               py::str(py::type::of(r)).cast<std::string>() + ", not " +
                               (std::is_same_v<Ret, kvring::protocol::CheckFinishWorkerRetMsg> ? "a str" : "an int") +
                               " or a dict");
    } catch (py::error_already_set& e) {
      // str(exception), as LMCache's worker puts it in "Worker error: {e}";
      // the exception object itself must not outlive the GIL.
      const std::string what = py::str(e.value()).cast<std::string>();
      e.restore();
      PyErr_Clear();
      throw std::runtime_error(what);
    }
  };
}

// Runs `call` with the GIL released (every wait of the client library) and
// returns what it returns; the GIL is taken again before the caller goes on.
template <typename Call>
auto WithoutGil(Call call) {
  py::gil_scoped_release nogil;
  return call();
}

// The C++ object behind a Python wrapper. A call takes a reference under the
// GIL for its whole length, so a close() from another Python thread never
// frees the object under a running call; the last reference destroys it with
// the GIL released (its threads may need the GIL to finish: handlers).
template <typename T>
class Held {
 public:
  void Set(std::unique_ptr<T> p) { p_ = std::shared_ptr<T>(p.release(), Destroy); }
  std::shared_ptr<T> Take() { return std::move(p_); }
  std::shared_ptr<T> Get(const char* what) const {
    if (!p_) throw py::value_error(std::string(what) + " is closed");
    return p_;
  }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  static void Destroy(T* p) {
    if (PyGILState_Check()) {
      py::gil_scoped_release nogil;
      delete p;
    } else {
      delete p;
    }
  }
  std::shared_ptr<T> p_;
};

// ---- Worker ---------------------------------------------------------------

class PyWorker {
 public:
  PyWorker(std::string controller, std::string instance_id, std::int64_t worker_id,
           std::optional<std::string> peer_init_url, std::string ip, std::int64_t port, py::object keys_of,
           py::object on_clear, py::object on_pin, py::object on_compress, py::object on_decompress,
           py::object on_move, py::object on_health, py::object on_check_finish, double attach_timeout,
           double request_timeout, std::size_t batch_ops, double flush_interval,
           std::optional<unsigned> controller_uid, bool background) {
    kvring::client::WorkerOptions o;
    o.controller = std::move(controller);
    o.instance_id = std::move(instance_id);
    o.worker_id = worker_id;
    o.peer_init_url = std::move(peer_init_url);
    o.ip = std::move(ip);
    o.port = port;
    o.attach_timeout = Millis(attach_timeout, "attach_timeout");
    o.request_timeout = Millis(request_timeout, "request_timeout");
    if (batch_ops == 0 || batch_ops > 100000) throw py::value_error("batch_ops must be within [1, 100000]");
    o.batch_ops = batch_ops;
    if (!(flush_interval > 0) || flush_interval > 60) throw py::value_error("flush_interval must be within (0, 60] s");
    o.flush_interval = std::chrono::microseconds(static_cast<std::int64_t>(flush_interval * 1e6));
    o.controller_uid = controller_uid;
    if (!keys_of.is_none()) {
      if (!PyCallable_Check(keys_of.ptr())) throw py::type_error("keys_of must be callable (location -> hashes)");
      auto fn = std::make_shared<PyRef>(std::move(keys_of));
      o.keys_of = [fn](const std::string& location) -> std::vector<std::uint64_t> {
        py::gil_scoped_acquire gil;
        try {
          py::object r = fn->obj(location);
          Hashes h(r);
          return {h.span().begin(), h.span().end()};
        } catch (py::error_already_set& e) {
          // A worker that cannot list its keys syncs none (and logs nothing
          // here: the exception is reported by Python's unraisable hook).
          e.discard_as_unraisable("kvring.Worker keys_of");
          return {};
        } catch (const std::exception& e) {
          PyErr_WarnEx(PyExc_RuntimeWarning, (std::string("kvring.Worker keys_of: ") + e.what()).c_str(), 1);
          return {};
        }
      };
    }
    namespace p = kvring::protocol;
    o.handlers.clear = Handler<p::ClearWorkerRetMsg, p::ClearWorkerMsg>(std::move(on_clear));
    o.handlers.pin = Handler<p::PinWorkerRetMsg, p::PinWorkerMsg>(std::move(on_pin));
    o.handlers.compress = Handler<p::CompressWorkerRetMsg, p::CompressWorkerMsg>(std::move(on_compress));
    o.handlers.decompress = Handler<p::DecompressWorkerRetMsg, p::DecompressWorkerMsg>(std::move(on_decompress));
    o.handlers.move = Handler<p::MoveWorkerRetMsg, p::MoveWorkerMsg>(std::move(on_move));
    o.handlers.health = Handler<p::HealthWorkerRetMsg, p::HealthWorkerMsg>(std::move(on_health));
    o.handlers.check_finish = Handler<p::CheckFinishWorkerRetMsg, p::CheckFinishWorkerMsg>(std::move(on_check_finish));
    {
      py::gil_scoped_release nogil;
      auto w = kvring::client::Worker::Connect(std::move(o));
      if (!w.ok()) {
        py::gil_scoped_acquire gil;
        Raise(w.status());
      }
      if (background) (*w)->StartBackgroundTicks();
      worker_.Set(std::move(w).value());
    }
  }

  ~PyWorker() { (void)worker_.Take(); }  // destroyed without the GIL (Held)

  void Admit(const std::string& location, const py::handle& hashes) { Apply(location, hashes, true); }
  void Evict(const std::string& location, const py::handle& hashes) { Apply(location, hashes, false); }

  void Flush() {
    auto w = Live();
    Check(WithoutGil([&] { return w->Flush(); }));
  }

  // LMCache's shape: [(instance_id, location, num_hit_chunks, peer_init_url)],
  // one tuple (a miss: instance_id "" and 0 chunks).
  py::list Lookup(const py::handle& hashes, double timeout) {
    Hashes h(hashes);
    const auto t = Millis(timeout, "timeout");
    auto w = Live();
    kvring::client::P2PHit hit = Take(WithoutGil([&] { return w->Lookup(h.span(), t); }));
    py::list out;
    out.append(py::make_tuple(hit.instance_id, hit.location, hit.num_hit_chunks, hit.peer_init_url));
    return out;
  }

  void Heartbeat() {
    auto w = Live();
    Check(WithoutGil([&] { return w->Heartbeat(); }));
  }

  void Close() {
    std::shared_ptr<kvring::client::Worker> w = worker_.Take();
    if (!w) return;
    Status s;
    {
      py::gil_scoped_release nogil;
      s = w->Close();  // other threads' calls in flight fail ("worker closed"); theirs is the last reference
    }
    w.reset();
    // A controller already gone is not an error for the caller that closes.
    if (!s.ok() && s.kind() != ErrorKind::kUnavailable) Raise(s);
  }

  py::dict Counters() {
    const auto c = Live()->counters();
    py::dict d;
    d["ops_sent"] = c.ops_sent;
    d["batches_sent"] = c.batches_sent;
    d["lookups"] = c.lookups;
    d["heartbeats"] = c.heartbeats;
    d["full_syncs"] = c.full_syncs;
    d["full_sync_status_polls"] = c.full_sync_status_polls;
    d["reattaches"] = c.reattaches;
    d["late_replies_skipped"] = c.late_replies_skipped;
    d["commands_handled"] = c.commands_handled;
    return d;
  }

  bool closed() const { return !worker_; }

 private:
  std::shared_ptr<kvring::client::Worker> Live() const { return worker_.Get("kvring.Worker"); }
  void Apply(const std::string& location, const py::handle& hashes, bool admit) {
    Hashes h(hashes);
    auto w = Live();
    py::gil_scoped_release nogil;  // a full batch is sent (and may wait for ring space)
    if (admit) w->Admit(location, h.span());
    else w->Evict(location, h.span());
  }
  Held<kvring::client::Worker> worker_;
};

// ---- Orchestrator ------------------------------------------------------------

class PyOrchestrator {
 public:
  PyOrchestrator(const std::string& controller, double attach_timeout) {
    const auto t = Millis(attach_timeout, "attach_timeout");
    o_.Set(Take(WithoutGil([&] { return kvring::client::Orchestrator::Connect(controller, t); })));
  }
  ~PyOrchestrator() { (void)o_.Take(); }  // its reader thread stops without the GIL (Held)
  // One LMCache message as JSON text; its reply as JSON text.
  std::string Request(const std::string& json_text, double timeout) {
    kvring::protocol::Message m = FromJsonText(json_text);
    const auto t = Millis(timeout, "timeout");
    auto o = Live();
    return ToJsonText(Take(WithoutGil([&] { return o->Request(m, t); })));
  }
  std::string Control(const std::string& json_text, double timeout) {
    const auto t = Millis(timeout, "timeout");
    auto o = Live();
    return Take(WithoutGil([&] { return o->Control(json_text, t); }));
  }
  void Close() { (void)o_.Take(); }
  bool alive() const { return o_ && o_.Get("kvring.Orchestrator")->alive(); }

 private:
  std::shared_ptr<kvring::client::Orchestrator> Live() const { return o_.Get("kvring.Orchestrator"); }
  Held<kvring::client::Orchestrator> o_;
};

// ---- chunk hashes ----------------------------------------------------------

// [(start, end, hash)] for `tokens` (a sequence of ints or a buffer of
// 8-byte ints), as LMCache's ChunkedTokenDatabase with the builtin hash.
// `none_item_hash` is hash(NONE_HASH) (the package computes it).
py::list ChunkHashes(const py::handle& tokens, std::uint32_t chunk_size, std::int64_t none_item_hash) {
  if (chunk_size == 0) throw py::value_error("chunk_size must be > 0");
  std::vector<std::int64_t> t;
  if (PyObject_CheckBuffer(tokens.ptr()) && !PyBytes_Check(tokens.ptr())) {
    Hashes h(tokens);  // 8-byte integers; a token above 2**63 - 1 is refused below
    for (std::uint64_t v : h.span()) {
      if (!h.is_signed() && v > static_cast<std::uint64_t>(INT64_MAX))
        throw py::value_error("a token must be within [-2**63, 2**63 - 1]");
      t.push_back(static_cast<std::int64_t>(v));
    }
  } else {
    if (PyUnicode_Check(tokens.ptr()) || PyBytes_Check(tokens.ptr()))
      throw py::type_error("tokens must be a sequence of ints or a buffer of 8-byte integers");
    for (py::handle x : py::iter(tokens)) {
      if (!PyLong_Check(x.ptr())) throw py::type_error("a token must be an int");
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(x.ptr(), &overflow);
      if (overflow != 0) throw py::value_error("a token must be within [-2**63, 2**63 - 1]");
      t.push_back(v);
    }
  }
  kvring::ChunkHasher hasher(chunk_size, none_item_hash);
  std::vector<kvring::ChunkHash> chunks;
  {
    py::gil_scoped_release nogil;
    chunks = hasher.Hash(t);
  }
  py::list out;
  for (const auto& c : chunks) out.append(py::make_tuple(c.start, c.end, c.hash));
  return out;
}

std::int64_t HashStr(const std::string& s, std::uint32_t seed) {
  return Take(kvring::pyhash::HashStr(s, kvring::pyhash::KeyFromSeed(seed)));
}

std::int64_t HashBytes(const py::bytes& b, std::uint32_t seed) {
  std::string_view v = b;
  return kvring::pyhash::HashBytes(v, kvring::pyhash::KeyFromSeed(seed));
}

}  // namespace

PYBIND11_MODULE(_kvring, m) {
  m.doc() = "kvring's C++ client and codec (use the kvring package, which wraps this module)";
  m.attr("__version__") = KVRING_VERSION_STRING;
  static py::exception<std::runtime_error> error(m, "Error");
  g_error = error.ptr();

  m.def("encode_json", &Encode, py::arg("json_text"),
        "msgspec's msgpack bytes of one LMCache message given as JSON text (the to_builtins shape)");
  m.def("decode_json", &Decode, py::arg("data"), "One LMCache message's msgpack bytes as JSON text");
  m.def("chunk_hashes", &ChunkHashes, py::arg("tokens"), py::arg("chunk_size"), py::arg("none_item_hash"));
  m.def("hash_str", &HashStr, py::arg("s"), py::arg("python_hash_seed"), "CPython's hash(str) under PYTHONHASHSEED");
  m.def("hash_bytes", &HashBytes, py::arg("b"), py::arg("python_hash_seed"),
        "CPython's hash(bytes) under PYTHONHASHSEED");

  py::class_<PyWorker>(m, "Worker")
      .def(py::init<std::string, std::string, std::int64_t, std::optional<std::string>, std::string, std::int64_t,
                    py::object, py::object, py::object, py::object, py::object, py::object, py::object, py::object,
                    double, double, std::size_t, double, std::optional<unsigned>, bool>(),
           py::arg("controller"), py::arg("instance_id"), py::arg("worker_id"), py::arg("peer_init_url"),
           py::arg("ip"), py::arg("port"), py::arg("keys_of"), py::arg("on_clear"), py::arg("on_pin"),
           py::arg("on_compress"), py::arg("on_decompress"), py::arg("on_move"), py::arg("on_health"),
           py::arg("on_check_finish"), py::arg("attach_timeout"), py::arg("request_timeout"), py::arg("batch_ops"),
           py::arg("flush_interval"), py::arg("controller_uid"), py::arg("background"))
      .def("admit", &PyWorker::Admit, py::arg("location"), py::arg("hashes"))
      .def("evict", &PyWorker::Evict, py::arg("location"), py::arg("hashes"))
      .def("flush", &PyWorker::Flush)
      .def("lookup", &PyWorker::Lookup, py::arg("hashes"), py::arg("timeout"))
      .def("heartbeat", &PyWorker::Heartbeat)
      .def("close", &PyWorker::Close)
      .def("counters", &PyWorker::Counters)
      .def_property_readonly("closed", &PyWorker::closed);

  py::class_<PyOrchestrator>(m, "Orchestrator")
      .def(py::init<const std::string&, double>(), py::arg("controller"), py::arg("attach_timeout"))
      .def("request_json", &PyOrchestrator::Request, py::arg("json_text"), py::arg("timeout"))
      .def("control_json", &PyOrchestrator::Control, py::arg("json_text"), py::arg("timeout"))
      .def("close", &PyOrchestrator::Close)
      .def_property_readonly("alive", &PyOrchestrator::alive);
}
