// pystream._kafka: a Kafka consumer over librdkafka's C API that hands out whole batches:
// values joined into one newline-separated buffer plus partition/offset/timestamp columns,
// with no Python object per message (confluent-kafka's consume() makes one, ~1 us each).
//
// librdkafka is not linked: the library that confluent-kafka ships (or the system's) is
// opened at run time by path, and the few functions used here are looked up by name. The
// declarations below are the public, ABI-stable part of rdkafka.h they need.
#include <dlfcn.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "py_numpy.h"

namespace py = pybind11;
using pystream::to_numpy;

extern "C" {
typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_conf_s rd_kafka_conf_t;
typedef struct rd_kafka_queue_s rd_kafka_queue_t;
typedef struct rd_kafka_topic_s rd_kafka_topic_t;
typedef struct rd_kafka_message_s {
  int err;
  rd_kafka_topic_t* rkt;
  int32_t partition;
  void* payload;
  size_t len;
  void* key;
  size_t key_len;
  int64_t offset;
  void* _private;
} rd_kafka_message_t;
typedef struct rd_kafka_topic_partition_s {
  char* topic;
  int32_t partition;
  int64_t offset;
  void* metadata;
  size_t metadata_size;
  void* opaque;
  int err;
  void* _private;
} rd_kafka_topic_partition_t;
typedef struct rd_kafka_topic_partition_list_s {
  int cnt;
  int size;
  rd_kafka_topic_partition_t* elems;
} rd_kafka_topic_partition_list_t;
}

namespace {

constexpr int kConsumer = 1;             // RD_KAFKA_CONSUMER
constexpr int kPartitionEof = -191;      // RD_KAFKA_RESP_ERR__PARTITION_EOF
constexpr size_t kErrLen = 512;

/// The librdkafka functions used, looked up once per library path.
struct Api {
  rd_kafka_conf_t* (*conf_new)();
  int (*conf_set)(rd_kafka_conf_t*, const char*, const char*, char*, size_t);
  void (*conf_destroy)(rd_kafka_conf_t*);
  rd_kafka_t* (*kafka_new)(int, rd_kafka_conf_t*, char*, size_t);
  void (*kafka_destroy)(rd_kafka_t*);
  int (*poll_set_consumer)(rd_kafka_t*);
  rd_kafka_topic_partition_list_t* (*list_new)(int);
  rd_kafka_topic_partition_t* (*list_add)(rd_kafka_topic_partition_list_t*, const char*, int32_t);
  void (*list_destroy)(rd_kafka_topic_partition_list_t*);
  int (*assign)(rd_kafka_t*, const rd_kafka_topic_partition_list_t*);
  int (*position)(rd_kafka_t*, rd_kafka_topic_partition_list_t*);
  rd_kafka_queue_t* (*queue_get_consumer)(rd_kafka_t*);
  void (*queue_destroy)(rd_kafka_queue_t*);
  ssize_t (*consume_batch_queue)(rd_kafka_queue_t*, int, rd_kafka_message_t**, size_t);
  void (*message_destroy)(rd_kafka_message_t*);
  int64_t (*message_timestamp)(const rd_kafka_message_t*, int*);
  const char* (*err2str)(int);
  int (*consumer_close)(rd_kafka_t*);

  explicit Api(const std::string& path) {
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed: librdkafka keeps threads
    if (h == nullptr) throw std::runtime_error("cannot load librdkafka from " + path + ": " + dlerror());
    find(h, conf_new, "rd_kafka_conf_new");
    find(h, conf_set, "rd_kafka_conf_set");
    find(h, conf_destroy, "rd_kafka_conf_destroy");
    find(h, kafka_new, "rd_kafka_new");
    find(h, kafka_destroy, "rd_kafka_destroy");
    find(h, poll_set_consumer, "rd_kafka_poll_set_consumer");
    find(h, list_new, "rd_kafka_topic_partition_list_new");
    find(h, list_add, "rd_kafka_topic_partition_list_add");
    find(h, list_destroy, "rd_kafka_topic_partition_list_destroy");
    find(h, assign, "rd_kafka_assign");
    find(h, position, "rd_kafka_position");
    find(h, queue_get_consumer, "rd_kafka_queue_get_consumer");
    find(h, queue_destroy, "rd_kafka_queue_destroy");
    find(h, consume_batch_queue, "rd_kafka_consume_batch_queue");
    find(h, message_destroy, "rd_kafka_message_destroy");
    find(h, message_timestamp, "rd_kafka_message_timestamp");
    find(h, err2str, "rd_kafka_err2str");
    find(h, consumer_close, "rd_kafka_consumer_close");
  }

  template <class F>
  static void find(void* h, F& f, const char* name) {
    void* p = dlsym(h, name);
    if (p == nullptr) throw std::runtime_error(std::string("librdkafka lacks ") + name);
    f = reinterpret_cast<F>(p);
  }
};

inline bool blank(char c) { return c == ' ' || c == '\t'; }

/// The reason a value is not one JSON object on one line (by its first and last non-blank
/// bytes), or nullptr: the same rule as pystream._messages.first_non_object.
const char* not_an_object(const char* p, size_t n) {
  if (std::memchr(p, '\n', n) != nullptr || std::memchr(p, '\r', n) != nullptr) return "spans several lines";
  size_t a = 0, b = n;
  while (a < n && blank(p[a])) ++a;
  while (b > a && blank(p[b - 1])) --b;
  if (a >= n || p[a] != '{' || p[b - 1] != '}') return "is not a JSON object";
  return nullptr;
}

struct Batch {
  std::vector<uint8_t> values;    // value i is values[bounds[i] : bounds[i+1] - 1], then '\n'
  std::vector<int64_t> bounds{0};
  std::vector<int64_t> partition, offset, timestamp;
  int64_t bad = -1;               // first value that is not one JSON object on one line
  std::string bad_reason, error;  // error: a message error (the batch is dropped)
};

class Consumer {
 public:
  Consumer(const std::string& library, const std::vector<std::pair<std::string, std::string>>& config)
      : api_(library) {
    char err[kErrLen];
    rd_kafka_conf_t* conf = api_.conf_new();
    for (const auto& [k, v] : config) {
      if (api_.conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != 0) {
        api_.conf_destroy(conf);
        throw std::invalid_argument("Kafka consumer setting " + k + "=" + v + ": " + err);
      }
    }
    rk_ = api_.kafka_new(kConsumer, conf, err, sizeof err);  // takes conf on success
    if (rk_ == nullptr) {
      api_.conf_destroy(conf);
      throw std::runtime_error(std::string("cannot create a Kafka consumer: ") + err);
    }
    api_.poll_set_consumer(rk_);
    queue_ = api_.queue_get_consumer(rk_);
    msgs_.resize(1024);
  }

  ~Consumer() { close(); }

  void assign(const std::string& topic, const std::vector<int32_t>& partitions, const std::vector<int64_t>& offsets) {
    if (partitions.size() != offsets.size()) throw std::invalid_argument("assign: one offset per partition");
    live();
    rd_kafka_topic_partition_list_t* list = api_.list_new(static_cast<int>(partitions.size()));
    for (size_t i = 0; i < partitions.size(); ++i) api_.list_add(list, topic.c_str(), partitions[i])->offset = offsets[i];
    const int rc = api_.assign(rk_, list);
    api_.list_destroy(list);
    if (rc != 0) throw std::runtime_error("Kafka assign failed: " + std::string(api_.err2str(rc)));
  }

  std::vector<int64_t> positions(const std::string& topic, const std::vector<int32_t>& partitions) {
    live();
    rd_kafka_topic_partition_list_t* list = api_.list_new(static_cast<int>(partitions.size()));
    for (int32_t p : partitions) api_.list_add(list, topic.c_str(), p);
    api_.position(rk_, list);
    std::vector<int64_t> out;
    for (int i = 0; i < list->cnt; ++i) out.push_back(list->elems[i].offset);
    api_.list_destroy(list);
    return out;
  }

  /// Up to max_messages messages, waiting at most timeout_ms for the first.
  Batch consume(int64_t max_messages, int timeout_ms) {
    live();
    if (max_messages < 1) throw std::invalid_argument("consume: max_messages must be >= 1");
    if (msgs_.size() < static_cast<size_t>(max_messages)) msgs_.resize(static_cast<size_t>(max_messages));
    Batch b;
    const ssize_t n = api_.consume_batch_queue(queue_, timeout_ms, msgs_.data(), static_cast<size_t>(max_messages));
    if (n < 0) {
      b.error = "consume failed";
      return b;
    }
    size_t bytes = 0;
    for (ssize_t i = 0; i < n; ++i) bytes += msgs_[i]->len + 1;
    b.values.reserve(bytes);
    for (ssize_t i = 0; i < n; ++i) {
      rd_kafka_message_t* m = msgs_[i];
      if (m->err != 0 && m->err != kPartitionEof && b.error.empty()) {
        b.error = "partition " + std::to_string(m->partition) + " offset " + std::to_string(m->offset) + ": " +
                  api_.err2str(m->err);
      }
      if (m->err == 0 && b.error.empty()) {
        const char* p = m->payload ? static_cast<const char*>(m->payload) : "";
        if (b.bad < 0) {
          if (const char* why = not_an_object(p, m->len)) {
            b.bad = static_cast<int64_t>(b.partition.size());
            b.bad_reason = why;
          }
        }
        b.values.insert(b.values.end(), p, p + m->len);
        b.values.push_back('\n');
        b.bounds.push_back(static_cast<int64_t>(b.values.size()));
        b.partition.push_back(m->partition);
        b.offset.push_back(m->offset);
        int type = 0;
        b.timestamp.push_back(api_.message_timestamp(m, &type));
      }
      api_.message_destroy(m);
    }
    return b;
  }

  void close() {
    if (rk_ == nullptr) return;
    api_.consumer_close(rk_);
    api_.queue_destroy(queue_);
    api_.kafka_destroy(rk_);
    rk_ = nullptr;
    queue_ = nullptr;
  }

 private:
  void live() const {
    if (rk_ == nullptr) throw std::runtime_error("the Kafka consumer is closed");
  }

  Api api_;
  rd_kafka_t* rk_ = nullptr;
  rd_kafka_queue_t* queue_ = nullptr;
  std::vector<rd_kafka_message_t*> msgs_;
};

}  // namespace

PYBIND11_MODULE(_kafka, m) {
  m.doc() = "pystream native Kafka consumer: whole batches from librdkafka, no Python object per message";
  py::class_<Consumer>(m, "Consumer")
      .def(py::init<const std::string&, const std::vector<std::pair<std::string, std::string>>&>(),
           py::arg("library"), py::arg("config"))
      .def("assign", &Consumer::assign, py::arg("topic"), py::arg("partitions"), py::arg("offsets"),
           py::call_guard<py::gil_scoped_release>())
      .def("positions", &Consumer::positions, py::arg("topic"), py::arg("partitions"),
           py::call_guard<py::gil_scoped_release>())
      .def("consume",
           [](Consumer& c, int64_t max_messages, int timeout_ms) {
             Batch b;
             {
               py::gil_scoped_release release;
               b = c.consume(max_messages, timeout_ms);
             }
             py::dict d;
             d["values"] = to_numpy(std::move(b.values));
             d["bounds"] = to_numpy(std::move(b.bounds));
             d["partition"] = to_numpy(std::move(b.partition));
             d["offset"] = to_numpy(std::move(b.offset));
             d["timestamp"] = to_numpy(std::move(b.timestamp));
             d["bad"] = b.bad;
             d["bad_reason"] = b.bad_reason;
             d["error"] = b.error;
             return d;
           },
           py::arg("max_messages"), py::arg("timeout_ms"),
           "Up to max_messages messages: values (uint8, each value then a newline), bounds (int64, n + 1 value "
           "starts), partition, offset, timestamp (int64), bad/bad_reason (first value that is not one JSON "
           "object on one line, -1 if none), error (a message error; '' if none).")
      .def("close", &Consumer::close, py::call_guard<py::gil_scoped_release>());
}
