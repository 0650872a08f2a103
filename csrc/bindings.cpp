/// bindings.cpp — the only file that includes Python: pybind11 module `pystream._core`.
///
/// Inputs arrive as C-contiguous NumPy arrays (no copy when the Python layer already made
/// them int64/float64). The GIL is released around each batch kernel and only there. Outputs
/// are C++ vectors moved into NumPy arrays (a capsule owns the buffer), so nothing is copied
/// and no view into engine state ever escapes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <vector>

#include "calendar_engine.h"
#include "count_engine.h"
#include "global_engine.h"
#include "py_numpy.h"
#include "radix_sort.h"
#include "route.h"
#include "session_engine.h"
#include "stream_ops.h"
#include "tuple_interner.h"
#include "window_engine.h"

namespace py = pybind11;
using namespace pystream;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

using pystream::to_numpy;

/// Output columns: NumPy takes the pooled buffer; the capsule gives it back to the pool.
template <class T>
py::array_t<T> to_numpy(OutBuf<T>&& v) {
  const py::ssize_t n = static_cast<py::ssize_t>(v.size());
  if (n == 0) return py::array_t<T>(0);
  struct Owned {
    T* ptr;
    size_t bytes;
  };
  auto* owned = new Owned{nullptr, 0};
  owned->ptr = v.release(owned->bytes);
  py::capsule owner(owned, [](void* p) {
    auto* o = static_cast<Owned*>(p);
    BufferPool::instance().release(o->ptr, o->bytes);
    delete o;
  });
  return py::array_t<T>({n}, {sizeof(T)}, owned->ptr, owner);
}

/// A pooled uint8 buffer as a NumPy array of another one-byte dtype (bool), without the
/// `view` call that parsed the dtype's name on every batch.
py::array to_numpy_as(OutBuf<uint8_t>&& v, const py::dtype& dtype) {
  py::array_t<uint8_t> a = to_numpy(std::move(v));
  return py::array(dtype, {a.size()}, {py::ssize_t{1}}, a.data(), a);
}

/// The names of an engine call's output, made once: interned str objects (never freed; the
/// module lives as long as the interpreter), so a call does not build and hash ten strings.
struct OutNames {
  py::handle key, start, end, update, early, cols, late, invalid, invalid_reason, handles;
  py::handle bool_dtype;
};

const OutNames& out_names() {
  static const OutNames names = [] {
    auto name = [](const char* s) { return py::handle(PyUnicode_InternFromString(s)); };
    return OutNames{name("key"), name("start"), name("end"), name("update"), name("early"), name("cols"),
                    name("late"), name("invalid"), name("invalid_reason"), name("handles"),
                    py::dtype::of<bool>().release()};
  }();
  return names;
}

py::dict emit_to_dict(EmitBuffer&& b, bool keyed) {
  const OutNames& n = out_names();
  const py::dtype bool_dtype = py::reinterpret_borrow<py::dtype>(n.bool_dtype);
  py::dict d;
  d[n.key] = keyed ? py::object(to_numpy(std::move(b.key))) : py::object(py::none());
  d[n.start] = to_numpy(std::move(b.start));
  d[n.end] = to_numpy(std::move(b.end));
  d[n.update] = to_numpy_as(std::move(b.update), bool_dtype);
  d[n.early] = to_numpy_as(std::move(b.early), bool_dtype);
  py::list cols;
  for (OutColumn& c : b.cols) {
    if (c.paired) {
      cols.append(py::make_tuple(to_numpy(std::move(c.f)), to_numpy(std::move(c.i))));
    } else if (c.is_int) {
      cols.append(to_numpy(std::move(c.i)));
    } else {
      cols.append(to_numpy(std::move(c.f)));
    }
  }
  d[n.cols] = cols;
  d[n.late] = to_numpy(std::move(b.late_rows));
  const bool reasons = b.invalid_reason.size() == b.invalid_rows.size() && b.invalid_reason.size() > 0;
  d[n.invalid] = to_numpy(std::move(b.invalid_rows));
  d[n.invalid_reason] = reasons ? py::object(to_numpy(std::move(b.invalid_reason))) : py::object(py::none());
  return d;
}

template <class T>
std::vector<T> from_numpy(const py::array_t<T, py::array::c_style | py::array::forcecast>& a) {
  return std::vector<T>(a.data(), a.data() + a.size());
}

/// Aggregation specs as tuples (kind, ddof, iparam, iparam2, fparam, fparam2, share) — see
/// AggParams; trailing fields may be left out ((kind,) or (kind, ddof) for the basic ones).
using AggTuple = py::tuple;

std::vector<AggSpec> parse_aggs(const std::vector<AggTuple>& aggs) {
  std::vector<AggSpec> specs;
  for (const py::tuple& t : aggs) {
    if (t.size() < 1 || t.size() > 7) fail("an aggregation spec is a tuple of 1 to 7 fields, got " + std::to_string(t.size()));
    const int kind = t[0].cast<int>();
    if (kind < 0 || kind > static_cast<int>(AggKind::kHandle)) fail("unknown aggregation kind " + std::to_string(kind));
    AggParams p;
    if (t.size() > 1) p.ddof = t[1].cast<int>();
    if (t.size() > 2) p.iparam = t[2].cast<int>();
    if (t.size() > 3) p.iparam2 = t[3].cast<int>();
    if (t.size() > 4) p.fparam = t[4].cast<double>();
    if (t.size() > 5) p.fparam2 = t[5].cast<double>();
    if (t.size() > 6) p.share = t[6].cast<int>();
    specs.push_back(AggSpec{static_cast<AggKind>(kind), p});
  }
  return specs;
}

/// Per spec, the operation log of a handle column as an (n, 3) int64 array (None for other
/// aggregations); None when the operator has no handle column.
py::object handle_logs(const RowLayout& layout) {
  py::list logs;
  bool any = false;
  for (size_t s = 0; s < layout.col_of_spec.size(); ++s) {
    const int c = layout.col_of_spec[s];
    const auto* h = c < 0 ? nullptr : dynamic_cast<const HandleColumn*>(layout.cols[static_cast<size_t>(c)].get());
    if (h == nullptr) {
      logs.append(py::none());
      continue;
    }
    any = true;
    logs.append(to_numpy(h->take_log()).attr("reshape")(-1, 3));
  }
  return any ? py::object(logs) : py::object(py::none());
}

/// The nonzero handles of spec `spec` over all of an engine's state rows.
template <class E>
py::array_t<int64_t> live_handles(const E& e, int spec) {
  const RowLayout& layout = e.layout();
  if (spec < 0 || spec >= static_cast<int>(layout.col_of_spec.size())) fail("no aggregation spec " + std::to_string(spec));
  const int c = layout.col_of_spec[static_cast<size_t>(spec)];
  const auto* h = c < 0 ? nullptr : dynamic_cast<const HandleColumn*>(layout.cols[static_cast<size_t>(c)].get());
  if (h == nullptr) fail("aggregation spec " + std::to_string(spec) + " is not a custom aggregation");
  return to_numpy(h->live(e.state_data(), e.state_rows(), layout.row_bytes));
}

void partitions_to_dict(const std::vector<PartitionState>& parts, py::dict& d) {
  std::vector<int64_t> pid, pmax;
  std::vector<uint8_t> phas, pidle;
  for (const auto& p : parts) {
    pid.push_back(p.id);
    pmax.push_back(p.max_ts);
    phas.push_back(p.has_max);
    pidle.push_back(p.idle);
  }
  d["part_id"] = to_numpy(std::move(pid));
  d["part_max"] = to_numpy(std::move(pmax));
  d["part_has"] = to_numpy(std::move(phas));
  d["part_idle"] = to_numpy(std::move(pidle));
}

std::vector<PartitionState> partitions_from_dict(const py::dict& d) {
  auto pid = from_numpy(d["part_id"].cast<I64Array>());
  auto pmax = from_numpy(d["part_max"].cast<I64Array>());
  auto phas = from_numpy(d["part_has"].cast<U8Array>());
  auto pidle = from_numpy(d["part_idle"].cast<U8Array>());
  if (pmax.size() != pid.size() || phas.size() != pid.size() || pidle.size() != pid.size()) {
    fail("corrupt snapshot: partition arrays differ in length");
  }
  std::vector<PartitionState> parts;
  for (size_t i = 0; i < pid.size(); ++i) parts.push_back(PartitionState{pid[i], pmax[i], phas[i] != 0, pidle[i] != 0});
  return parts;
}

py::list partitions_to_list(const std::vector<PartitionState>& parts) {
  py::list l;
  for (const auto& p : parts) {
    py::dict d;
    d["id"] = p.id;
    d["max_ts"] = p.has_max ? py::object(py::int_(p.max_ts)) : py::object(py::none());
    d["idle"] = p.idle;
    l.append(d);
  }
  return l;
}

/// Pointers to the value columns of one batch (null for count), checked against its length.
std::vector<const double*> value_pointers(const std::vector<std::optional<F64Array>>& values, int64_t n, size_t naggs) {
  if (values.size() != naggs) fail("expected " + std::to_string(naggs) + " value columns, got " + std::to_string(values.size()));
  std::vector<const double*> vptr;
  for (const auto& v : values) {
    if (v && v->size() != n) {
      fail("value and timestamp columns differ in length: " + std::to_string(v->size()) + " != " + std::to_string(n));
    }
    vptr.push_back(v ? v->data() : nullptr);
  }
  return vptr;
}

/// The watermark floors of one batch (WindowEngine::process), checked before the engine sees
/// them: one per row, each kNoWatermark (none) or a time within the supported range. Null
/// without floors; `top` (where given) gets the largest. Runs without the GIL (a pass over
/// the floors).
const int64_t* checked_floors(const std::optional<I64Array>& floor, int64_t n, int64_t* top = nullptr) {
  int64_t largest = kNoWatermark;
  if (top) *top = largest;
  if (!floor) return nullptr;
  if (floor->ndim() != 1 || floor->size() != n) {
    fail("floor and timestamp columns differ in length: " + std::to_string(floor->size()) + " != " + std::to_string(n));
  }
  const int64_t* f = floor->data();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = f[i];
    if (v != kNoWatermark && (v < -kMaxAbsTime || v > kMaxAbsTime)) {
      fail("floor " + std::to_string(v) + " ns at row " + std::to_string(i) + " is out of range (|t| <= 2^62 ns, or none)");
    }
    largest = std::max(largest, v);
  }
  if (top) *top = largest;
  return f;
}

/// What the engine wrappers share: running an engine call without the GIL and handing its
/// output to Python, and the watermark and partitions as Python values.
template <class E>
class PyEngineBase {
 public:
  template <class F>
  py::dict call(F&& f) {
    EmitBuffer out;
    {
      py::gil_scoped_release release;
      f(*engine_, out);
    }
    py::dict d = emit_to_dict(std::move(out), keyed_);
    d[out_names().handles] = handle_logs(engine_->layout());
    return d;
  }
  py::array_t<int64_t> live(int spec) const { return live_handles(*engine_, spec); }
  std::optional<int64_t> watermark() const {
    if (!engine_->has_watermark()) return std::nullopt;
    return engine_->watermark();
  }
  py::list partitions() const { return partitions_to_list(engine_->partitions()); }
  const E& engine() const { return *engine_; }
  /// E::raise_partition, its time checked first (|t| <= 2^62 ns).
  py::dict raise_partition(int64_t partition, int64_t t) {
    if (t < -kMaxAbsTime || t > kMaxAbsTime) {
      fail("partition " + std::to_string(partition) + " max " + std::to_string(t) + " ns is out of range (|t| <= 2^62 ns)");
    }
    return call([=](E& e, EmitBuffer& o) { e.raise_partition(partition, t, o); });
  }

 protected:
  std::unique_ptr<E> engine_;
  bool keyed_ = true;
  size_t naggs_ = 0;
};

class PyEngine : public PyEngineBase<WindowEngine> {
 public:
  PyEngine(int64_t size, int64_t slide, int64_t offset, int64_t ooo, int64_t lateness, int64_t max_future, bool keyed,
           const std::vector<AggTuple>& aggs, int64_t out_div, int64_t early_every) {
    WindowSpec spec;
    spec.size = size;
    spec.slide = slide;
    spec.offset = offset;
    spec.ooo = ooo;
    spec.lateness = lateness;
    spec.max_future = max_future;
    spec.keyed = keyed;
    spec.out_div = out_div;
    spec.early_every = early_every;
    std::vector<AggSpec> specs = parse_aggs(aggs);
    engine_ = std::make_unique<WindowEngine>(spec, specs);
    naggs_ = specs.size();
    keyed_ = keyed;
  }

  /// A batch's times 1-D, and its keys there and as long where the operator is keyed
  /// (process and process_turns).
  void check_keys_and_times(const std::optional<I64Array>& keys, const I64Array& ts) const {
    if (ts.ndim() != 1) fail("timestamps must be a 1-D array");
    if (!engine_->spec().keyed) return;
    if (!keys) fail("a keyed window operator needs a key column");
    if (keys->size() != ts.size()) {
      fail("key and timestamp columns differ in length: " + std::to_string(keys->size()) + " != " +
           std::to_string(ts.size()));
    }
  }

  py::dict process(std::optional<I64Array> keys, const I64Array& ts, const std::vector<std::optional<F64Array>>& values,
                   int64_t unit_ns, int64_t partition, const std::optional<I64Array>& floor) {
    const bool keyed = engine_->spec().keyed;
    const int64_t n = ts.size();
    check_keys_and_times(keys, ts);
    const std::vector<const double*> vptr = value_pointers(values, n, naggs_);
    return call([&](WindowEngine& e, EmitBuffer& o) {
      int64_t top;
      const int64_t* f = checked_floors(floor, n, &top);
      e.process(keyed ? keys->data() : nullptr, ts.data(), unit_ns, vptr, n, o, partition, f, top);
    });
  }

  /// Pieces of several batches in turn, in one call (the Ray runtime's aligned reads: an
  /// actor's part of one batch of each source in the local runtime's order). turns[t] = (b, lo,
  /// hi, partition, end): rows [lo, hi) of batch b as `process` takes them, with their floors
  /// (b = -1: none), then, where end is not kNoWatermark, raise_partition(partition, end). Late and invalid
  /// rows come back as positions in the batches laid end to end. Everything is checked before
  /// the engine runs (an engine flushed at end of input refuses the call).
  py::dict process_turns(const std::vector<std::optional<I64Array>>& keys, const std::vector<I64Array>& ts,
                         const std::vector<std::vector<std::optional<F64Array>>>& values, int64_t unit_ns,
                         const std::vector<std::optional<I64Array>>& floors, const I64Array& turns) {
    const bool keyed = engine_->spec().keyed;
    const size_t nb = ts.size();
    if (keys.size() != nb || values.size() != nb || floors.size() != nb) {
      fail("process_turns: keys, ts, values and floors must hold one entry per batch, got " + std::to_string(keys.size()) +
           ", " + std::to_string(nb) + ", " + std::to_string(values.size()) + " and " + std::to_string(floors.size()));
    }
    std::vector<std::vector<const double*>> vptr(nb);
    std::vector<int64_t> offset(nb + 1, 0), top(nb, kNoWatermark), batch_max(nb);
    std::vector<const int64_t*> fptr(nb, nullptr);
    for (size_t b = 0; b < nb; ++b) {
      const int64_t n = ts[b].size();
      check_keys_and_times(keys[b], ts[b]);
      vptr[b] = value_pointers(values[b], n, naggs_);
      offset[b + 1] = offset[b] + n;
    }
    {
      // Every batch's own checks first (not flushed, times in range, value columns, floors),
      // so that no turn fails after earlier turns fired rows that the failure would drop; the
      // turns then skip them (WindowEngine::process_checked). Passes over the rows: no GIL.
      py::gil_scoped_release release;
      for (size_t b = 0; b < nb; ++b) {
        const int64_t n = offset[b + 1] - offset[b];
        fptr[b] = checked_floors(floors[b], n, &top[b]);
        batch_max[b] = check_batch(engine_->layout(), engine_->flushed(), vptr[b], ts[b].data(), n, unit_ns);
      }
    }
    if (turns.ndim() != 2 || turns.shape(1) != 5) fail("process_turns: turns must be an (n, 5) int64 array");
    const int64_t nt = turns.shape(0);
    const int64_t* tv = turns.data();
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t b = tv[5 * t], lo = tv[5 * t + 1], hi = tv[5 * t + 2], end = tv[5 * t + 4];
      if (b == -1 && lo == 0 && hi == 0) continue;  // a raise alone
      if (b < 0 || b >= static_cast<int64_t>(nb) || lo < 0 || lo > hi || hi > offset[b + 1] - offset[b]) {
        fail("process_turns: turn " + std::to_string(t) + " = (" + std::to_string(b) + ", " + std::to_string(lo) + ", " +
             std::to_string(hi) + ") is not rows of one of the " + std::to_string(nb) + " batches");
      }
      if (end != kNoWatermark && (end < -kMaxAbsTime || end > kMaxAbsTime)) {
        fail("process_turns: turn " + std::to_string(t) + " raises to " + std::to_string(end) +
             " ns, out of range (|t| <= 2^62 ns)");
      }
    }
    return call([&](WindowEngine& e, EmitBuffer& o) {
      std::vector<const double*> vp;
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t b = tv[5 * t], lo = tv[5 * t + 1], hi = tv[5 * t + 2], partition = tv[5 * t + 3], end = tv[5 * t + 4];
        if (b >= 0) {
          vp = vptr[b];
          for (auto& p : vp) p = p ? p + lo : nullptr;
          const size_t late0 = o.late_rows.size(), invalid0 = o.invalid_rows.size();
          e.process_checked(keyed ? keys[b]->data() + lo : nullptr, ts[b].data() + lo, unit_ns, vp, hi - lo, o,
                            batch_max[b], partition, fptr[b] ? fptr[b] + lo : nullptr, top[b]);
          for (size_t k = late0; k < o.late_rows.size(); ++k) o.late_rows[k] += offset[b] + lo;
          for (size_t k = invalid0; k < o.invalid_rows.size(); ++k) o.invalid_rows[k] += offset[b] + lo;
        }
        if (end != kNoWatermark) e.raise_partition(partition, end, o);
      }
    });
  }

  py::dict advance_watermark(int64_t w) {
    return call([w](WindowEngine& e, EmitBuffer& o) { e.advance_watermark(w, o); });
  }
  py::dict set_partition_idle(int64_t partition, bool idle) {
    return call([=](WindowEngine& e, EmitBuffer& o) { e.set_partition_idle(partition, idle, o); });
  }
  py::dict flush() {
    return call([](WindowEngine& e, EmitBuffer& o) { e.flush(o); });
  }
  py::dict peek(std::optional<int64_t> key) {
    return call([key](WindowEngine& e, EmitBuffer& o) { e.peek(key.has_value(), key.value_or(0), o); });
  }

  py::dict snapshot() const {
    EngineState s = engine_->snapshot();
    py::dict d;
    d["keys"] = to_numpy(std::move(s.keys));
    partitions_to_dict(s.partitions, d);
    d["has_wm"] = s.has_wm;
    d["flushed"] = s.flushed;
    d["wm"] = s.wm;
    d["next_fire"] = s.next_fire;
    d["next_boundary"] = s.next_boundary;
    d["base"] = s.base;
    d["top"] = s.top;
    d["slice_used"] = to_numpy(std::move(s.slice_used));
    d["row_bytes"] = s.row_bytes;
    d["rows"] = py::bytes(reinterpret_cast<const char*>(s.rows.data()), s.rows.size());
    return d;
  }

  void restore(const py::dict& d) {
    EngineState s;
    s.keys = from_numpy(d["keys"].cast<I64Array>());
    s.partitions = partitions_from_dict(d);
    s.has_wm = d["has_wm"].cast<bool>();
    s.flushed = d["flushed"].cast<bool>();
    s.wm = d["wm"].cast<int64_t>();
    s.next_fire = d["next_fire"].cast<int64_t>();
    s.next_boundary = d["next_boundary"].cast<int64_t>();
    s.base = d["base"].cast<int64_t>();
    s.top = d["top"].cast<int64_t>();
    s.slice_used = from_numpy(d["slice_used"].cast<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>>());
    s.row_bytes = d["row_bytes"].cast<int64_t>();
    std::string_view rows = d["rows"].cast<std::string_view>();
    s.rows.assign(rows.begin(), rows.end());
    engine_->restore(s);
  }

};

class PyCountEngine : public PyEngineBase<CountWindowEngine> {
 public:
  PyCountEngine(int64_t n, int64_t slide, bool keyed, const std::vector<AggTuple>& aggs) {
    keyed_ = keyed;
    std::vector<AggSpec> specs = parse_aggs(aggs);
    naggs_ = specs.size();
    engine_ = std::make_unique<CountWindowEngine>(n, slide, keyed, specs);
  }

  py::dict process(std::optional<I64Array> keys, const I64Array& ts, const std::vector<std::optional<F64Array>>& values) {
    const int64_t n = ts.size();
    if (keyed_ && (!keys || keys->size() != n)) fail("a keyed count window needs a key column as long as the batch");
    const std::vector<const double*> vptr = value_pointers(values, n, naggs_);
    return call([&](CountWindowEngine& e, EmitBuffer& o) { e.process(keyed_ ? keys->data() : nullptr, ts.data(), vptr, n, o); });
  }
  py::dict peek(std::optional<int64_t> key) {
    return call([key](CountWindowEngine& e, EmitBuffer& o) { e.peek(key.has_value(), key.value_or(0), o); });
  }

  py::dict snapshot() const {
    auto s = engine_->snapshot();
    py::dict d;
    d["keys"] = to_numpy(std::move(s.keys));
    d["seen"] = to_numpy(std::move(s.seen));
    d["row_bytes"] = s.row_bytes;
    d["rows"] = py::bytes(reinterpret_cast<const char*>(s.rows.data()), s.rows.size());
    return d;
  }

  void restore(const py::dict& d) {
    CountWindowEngine::State s;
    s.keys = from_numpy(d["keys"].cast<I64Array>());
    s.seen = from_numpy(d["seen"].cast<I64Array>());
    s.row_bytes = d["row_bytes"].cast<int64_t>();
    std::string_view rows = d["rows"].cast<std::string_view>();
    s.rows.assign(rows.begin(), rows.end());
    engine_->restore(s);
  }

  int64_t num_keys() const { return engine_->num_keys(); }
  bool has_key(int64_t k) const { return engine_->has_key(k); }
};

class PySessionEngine : public PyEngineBase<SessionEngine> {
 public:
  PySessionEngine(int64_t gap, int64_t ooo, int64_t lateness, int64_t max_future, bool keyed,
                  const std::vector<AggTuple>& aggs, int64_t out_div) {
    keyed_ = keyed;
    std::vector<AggSpec> specs = parse_aggs(aggs);
    naggs_ = specs.size();
    engine_ = std::make_unique<SessionEngine>(gap, ooo, lateness, max_future, keyed, specs, out_div);
  }

  py::dict process(std::optional<I64Array> keys, const I64Array& ts, const std::vector<std::optional<F64Array>>& values,
                   int64_t unit_ns, int64_t partition, const std::optional<I64Array>& floor) {
    const int64_t n = ts.size();
    if (keyed_ && (!keys || keys->size() != n)) fail("a keyed session window needs a key column as long as the batch");
    const std::vector<const double*> vptr = value_pointers(values, n, naggs_);
    return call([&](SessionEngine& e, EmitBuffer& o) {
      const int64_t* f = checked_floors(floor, n);
      e.process(keyed_ ? keys->data() : nullptr, ts.data(), unit_ns, vptr, n, o, partition, f);
    });
  }

  py::dict flush() {
    return call([](SessionEngine& e, EmitBuffer& o) { e.flush(o); });
  }
  py::dict set_partition_idle(int64_t partition, bool idle) {
    return call([=](SessionEngine& e, EmitBuffer& o) { e.set_partition_idle(partition, idle, o); });
  }
  py::dict advance_watermark(int64_t w) {
    return call([w](SessionEngine& e, EmitBuffer& o) { e.advance_watermark(w, o); });
  }
  py::dict peek(std::optional<int64_t> key) {
    return call([key](SessionEngine& e, EmitBuffer& o) { e.peek(key.has_value(), key.value_or(0), o); });
  }

  py::dict snapshot() const {
    auto s = engine_->snapshot();
    py::dict d;
    d["keys"] = to_numpy(std::move(s.keys));
    d["start"] = to_numpy(std::move(s.start));
    d["last"] = to_numpy(std::move(s.last));
    d["slot"] = to_numpy(std::move(s.slot));
    d["emitted"] = to_numpy(std::move(s.emitted));
    d["row_bytes"] = s.row_bytes;
    d["rows"] = py::bytes(reinterpret_cast<const char*>(s.rows.data()), s.rows.size());
    d["has_wm"] = s.has_wm;
    d["wm"] = s.wm;
    d["flushed"] = s.flushed;
    partitions_to_dict(s.partitions, d);
    return d;
  }

  void restore(const py::dict& d) {
    SessionEngine::State s;
    s.keys = from_numpy(d["keys"].cast<I64Array>());
    s.start = from_numpy(d["start"].cast<I64Array>());
    s.last = from_numpy(d["last"].cast<I64Array>());
    s.slot = from_numpy(d["slot"].cast<I32Array>());
    s.emitted = from_numpy(d["emitted"].cast<U8Array>());
    s.row_bytes = d["row_bytes"].cast<int64_t>();
    std::string_view rows = d["rows"].cast<std::string_view>();
    s.rows.assign(rows.begin(), rows.end());
    s.has_wm = d["has_wm"].cast<bool>();
    s.wm = d["wm"].cast<int64_t>();
    s.flushed = d["flushed"].cast<bool>();
    s.partitions = partitions_from_dict(d);
    if (s.last.size() != s.start.size() || s.slot.size() != s.start.size() || s.emitted.size() != s.start.size()) {
      fail("corrupt snapshot: session arrays differ in length");
    }
    engine_->restore(s);
  }

  int64_t num_keys() const { return engine_->num_keys(); }
  bool has_key(int64_t k) const { return engine_->has_key(k); }
  int64_t live_sessions() const { return engine_->live_sessions(); }
};

class PyCalendarEngine : public PyEngineBase<CalendarEngine> {
 public:
  PyCalendarEngine(int64_t ooo, int64_t lateness, int64_t max_future, bool keyed, const std::vector<AggTuple>& aggs,
                   int64_t out_div, int64_t early_every) {
    keyed_ = keyed;
    CalendarSpec spec;
    spec.ooo = ooo;
    spec.lateness = lateness;
    spec.max_future = max_future;
    spec.keyed = keyed;
    spec.out_div = out_div;
    spec.early_every = early_every;
    std::vector<AggSpec> specs = parse_aggs(aggs);
    naggs_ = specs.size();
    engine_ = std::make_unique<CalendarEngine>(spec, specs);
  }

  int32_t add_zone(const I64Array& bounds) { return engine_->add_zone(from_numpy(bounds)); }

  py::dict process(std::optional<I64Array> keys, const I64Array& ts, const std::vector<std::optional<F64Array>>& values,
                   std::optional<I32Array> zones, int64_t unit_ns, int64_t partition, const std::optional<I64Array>& floor) {
    const int64_t n = ts.size();
    if (ts.ndim() != 1) fail("timestamps must be a 1-D array");
    if (keyed_ && (!keys || keys->size() != n)) fail("a keyed calendar window needs a key column as long as the batch");
    if (zones && zones->size() != n) fail("zone and timestamp columns differ in length");
    const std::vector<const double*> vptr = value_pointers(values, n, naggs_);
    return call([&](CalendarEngine& e, EmitBuffer& o) {
      const int64_t* f = checked_floors(floor, n);
      e.process(keyed_ ? keys->data() : nullptr, ts.data(), unit_ns, zones ? zones->data() : nullptr, vptr, n, o, partition, f);
    });
  }

  py::dict snapshot() const {
    CalendarEngine::State s = engine_->snapshot();
    py::dict d;
    d["keys"] = to_numpy(std::move(s.keys));
    d["zone_of_slot"] = to_numpy(std::move(s.zone_of_slot));
    partitions_to_dict(s.partitions, d);
    d["has_wm"] = s.has_wm;
    d["flushed"] = s.flushed;
    d["wm"] = s.wm;
    d["ring_cap"] = s.ring_cap;
    d["row_bytes"] = s.row_bytes;
    d["zones"] = s.zones;
    d["base"] = to_numpy(std::move(s.base));
    d["top"] = to_numpy(std::move(s.top));
    d["next_fire"] = to_numpy(std::move(s.next_fire));
    d["used"] = to_numpy(std::move(s.used));
    d["rows"] = py::bytes(reinterpret_cast<const char*>(s.rows.data()), s.rows.size());
    return d;
  }

  void restore(const py::dict& d) {
    CalendarEngine::State s;
    s.keys = from_numpy(d["keys"].cast<I64Array>());
    s.zone_of_slot = from_numpy(d["zone_of_slot"].cast<I32Array>());
    s.partitions = partitions_from_dict(d);
    s.has_wm = d["has_wm"].cast<bool>();
    s.flushed = d["flushed"].cast<bool>();
    s.wm = d["wm"].cast<int64_t>();
    s.ring_cap = d["ring_cap"].cast<int64_t>();
    s.row_bytes = d["row_bytes"].cast<int64_t>();
    s.zones = d["zones"].cast<int64_t>();
    s.base = from_numpy(d["base"].cast<I64Array>());
    s.top = from_numpy(d["top"].cast<I64Array>());
    s.next_fire = from_numpy(d["next_fire"].cast<I64Array>());
    s.used = from_numpy(d["used"].cast<U8Array>());
    std::string_view rows = d["rows"].cast<std::string_view>();
    s.rows.assign(rows.begin(), rows.end());
    engine_->restore(s);
  }
};

class PyGlobalEngine : public PyEngineBase<GlobalEngine> {
 public:
  PyGlobalEngine(int trigger, int64_t count, int64_t interval, bool purge, int64_t ooo, int64_t max_future, bool keyed,
                 const std::vector<AggTuple>& aggs) {
    keyed_ = keyed;
    GlobalSpec spec;
    spec.trigger = trigger;
    spec.count = count;
    spec.interval = interval;
    spec.purge = purge;
    spec.ooo = ooo;
    spec.max_future = max_future;
    spec.keyed = keyed;
    std::vector<AggSpec> specs = parse_aggs(aggs);
    naggs_ = specs.size();
    engine_ = std::make_unique<GlobalEngine>(spec, specs);
  }

  py::dict process(std::optional<I64Array> keys, const I64Array& ts, const std::vector<std::optional<F64Array>>& values,
                   int64_t unit_ns, int64_t partition, const std::optional<I64Array>& floor) {
    const int64_t n = ts.size();
    if (keyed_ && (!keys || keys->size() != n)) fail("a keyed global window needs a key column as long as the batch");
    const std::vector<const double*> vptr = value_pointers(values, n, naggs_);
    return call([&](GlobalEngine& e, EmitBuffer& o) {
      const int64_t* f = checked_floors(floor, n);
      e.process(keyed_ ? keys->data() : nullptr, ts.data(), unit_ns, vptr, n, o, partition, f);
    });
  }
  void first_watermark(int64_t w) { engine_->first_watermark(w); }

  py::dict snapshot() const {
    GlobalEngine::State s = engine_->snapshot();
    py::dict d;
    d["keys"] = to_numpy(std::move(s.keys));
    d["pending"] = to_numpy(std::move(s.pending));
    partitions_to_dict(s.partitions, d);
    d["row_bytes"] = s.row_bytes;
    d["rows"] = py::bytes(reinterpret_cast<const char*>(s.rows.data()), s.rows.size());
    d["wm"] = s.wm;
    d["has_wm"] = s.has_wm;
    d["next_fire"] = s.next_fire;
    d["flushed"] = s.flushed;
    return d;
  }

  void restore(const py::dict& d) {
    GlobalEngine::State s;
    s.keys = from_numpy(d["keys"].cast<I64Array>());
    s.pending = from_numpy(d["pending"].cast<I64Array>());
    s.partitions = partitions_from_dict(d);
    s.row_bytes = d["row_bytes"].cast<int64_t>();
    std::string_view rows = d["rows"].cast<std::string_view>();
    s.rows.assign(rows.begin(), rows.end());
    s.wm = d["wm"].cast<int64_t>();
    s.has_wm = d["has_wm"].cast<bool>();
    s.next_fire = d["next_fire"].cast<int64_t>();
    s.flushed = d["flushed"].cast<bool>();
    engine_->restore(s);
  }
  int64_t num_keys() const { return engine_->num_keys(); }
};

class PyKeyIndex {
 public:
  py::array_t<int32_t> intern(const I64Array& keys) {
    std::vector<int32_t> out(static_cast<size_t>(keys.size()));
    {
      py::gil_scoped_release release;
      idx_.intern(keys.data(), keys.size(), out.data());
    }
    return to_numpy(std::move(out));
  }
  I64Array keys() const { return to_numpy(std::vector<int64_t>(idx_.keys())); }
  void assign(const I64Array& keys) { idx_.assign(from_numpy(keys)); }
  int64_t size() const { return idx_.size(); }
  int64_t direct_size() const { return idx_.direct_size(); }

 private:
  KeyIndex idx_;
};

class PyTupleInterner {
 public:
  explicit PyTupleInterner(int width) : t_(width) {}
  I64Array intern(const std::vector<I64Array>& cols) {
    if (static_cast<int>(cols.size()) != t_.width()) fail("composite key: expected " + std::to_string(t_.width()) + " columns");
    const int64_t n = cols.empty() ? 0 : cols[0].size();
    std::vector<const int64_t*> ptr;
    for (const auto& c : cols) {
      if (c.size() != n) fail("composite key columns differ in length");
      ptr.push_back(c.data());
    }
    std::vector<int64_t> out(static_cast<size_t>(n));
    {
      py::gil_scoped_release release;
      t_.intern(ptr, n, out.data());
    }
    return to_numpy(std::move(out));
  }
  /// Column c of the given ids' rows.
  I64Array column(const I64Array& ids, int c) const {
    if (c < 0 || c >= t_.width()) throw std::out_of_range("composite key column index out of range");
    const auto& rows = t_.rows();
    const int64_t size = t_.size();
    std::vector<int64_t> out(static_cast<size_t>(ids.size()));
    const int64_t* id = ids.data();
    for (int64_t i = 0; i < ids.size(); ++i) {
      if (id[i] < 0 || id[i] >= size) throw std::out_of_range("unknown composite key id " + std::to_string(id[i]));
      out[i] = rows[id[i] * t_.width() + c];
    }
    return to_numpy(std::move(out));
  }
  int64_t find(const std::vector<int64_t>& row) const {
    if (static_cast<int>(row.size()) != t_.width()) fail("composite key: expected " + std::to_string(t_.width()) + " values");
    return t_.find(row.data());
  }
  I64Array rows() const { return to_numpy(std::vector<int64_t>(t_.rows())); }
  void assign(const I64Array& rows) { t_.assign(from_numpy(rows)); }
  int64_t size() const { return t_.size(); }

 private:
  TupleInterner t_;
};

py::tuple classify_events(EventClock& c, const I64Array& ts, int64_t unit_ns, int64_t partition) {
  std::vector<uint8_t> status(static_cast<size_t>(ts.size()));
  std::vector<int64_t> before(static_cast<size_t>(ts.size()));
  {
    py::gil_scoped_release release;
    c.classify(ts.data(), unit_ns, ts.size(), partition, status.data(), before.data());
  }
  return py::make_tuple(to_numpy(std::move(status)), to_numpy(std::move(before)));
}

py::array_t<uint8_t> insert_pairs(PairSet& s, const I64Array& a, const I64Array& b) {
  if (a.size() != b.size()) fail("pair columns differ in length");
  std::vector<uint8_t> dup(static_cast<size_t>(a.size()));
  {
    py::gil_scoped_release release;
    s.insert(a.data(), b.data(), a.size(), dup.data());
  }
  return to_numpy(std::move(dup));
}

}  // namespace

/// route_rows / route_chunks over NumPy arrays: checks at the boundary, the loops without the
/// GIL. Columns (fixed-width dtypes) come back in routed order too, scattered in one pass each.
/// Chunk c holds words[c] (one array per key column) and columns[c] (one per routed column):
/// every chunk has the same key columns and the same routed columns (count and dtypes), and
/// the rows of all chunks are routed as one batch, chunk after chunk.
using WordArray = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;

/// Where `out` is given, the routed groups and columns are laid out in it instead of in
/// arrays of their own: groups (uint16) at 0, then each column, every one starting on a
/// multiple of kRouteAlign bytes (a shared-memory segment the receivers view in place).
constexpr int64_t kRouteAlign = 64;

/// Where each routed array of `rows` rows starts in `out`: groups, then the columns by item
/// size; the last entry is the bytes needed.
std::vector<int64_t> route_layout(int64_t rows, const std::vector<int64_t>& itemsizes) {
  auto aligned = [](int64_t bytes) { return (bytes + kRouteAlign - 1) / kRouteAlign * kRouteAlign; };
  std::vector<int64_t> at{0, aligned(2 * rows)};
  for (int64_t size : itemsizes) at.push_back(at.back() + aligned(rows * size));
  return at;
}

/// With `chunk_bounds`, a fifth result: int64 (chunks + 1, parallelism), where row c gives, per
/// actor, the routed position at which chunk c's rows of that actor begin (the last row: where
/// each actor's rows end), so that each chunk's share of an actor's rows is a slice.
py::tuple route_chunk_list(const std::vector<std::vector<WordArray>>& words, int64_t n_groups, int64_t parallelism,
                           const std::vector<std::vector<py::array>>& columns, bool with_order, const char* name,
                           const py::object& out_obj, bool chunk_bounds = false) {
  const std::string fn(name);
  if (n_groups < 1 || n_groups > 65536) fail(fn + ": n_groups must be in 1..65536, got " + std::to_string(n_groups));
  if (parallelism < 1 || parallelism > n_groups)
    fail(fn + ": parallelism must be in 1..n_groups (" + std::to_string(n_groups) + "), got " + std::to_string(parallelism));
  if (columns.size() != words.size())
    fail(fn + ": every chunk needs its columns, got " + std::to_string(words.size()) + " chunks of keys and " +
         std::to_string(columns.size()) + " of columns");
  const size_t n_chunks = words.size();
  std::vector<std::vector<const uint64_t*>> ptrs(n_chunks);
  std::vector<std::vector<py::array>> ins(n_chunks);
  std::vector<int64_t> start(n_chunks + 1, 0);  // chunk c's rows are start[c]..start[c + 1]
  for (size_t c = 0; c < n_chunks; ++c) {
    if (words[c].size() != words[0].size())
      fail(fn + ": every chunk needs the same key columns, got " + std::to_string(words[0].size()) + " and " +
           std::to_string(words[c].size()));
    if (columns[c].size() != columns[0].size())
      fail(fn + ": every chunk needs the same columns, got " + std::to_string(columns[0].size()) + " and " +
           std::to_string(columns[c].size()));
    const int64_t n = words[c].empty() ? 0 : static_cast<int64_t>(words[c][0].size());
    for (const auto& w : words[c]) {
      if (w.ndim() != 1 || static_cast<int64_t>(w.size()) != n)
        fail(fn + ": key columns must be 1-d and of one length, got lengths " + std::to_string(n) + " and " +
             std::to_string(w.size()));
      ptrs[c].push_back(w.data());
    }
    for (size_t k = 0; k < columns[c].size(); ++k) {
      const py::array& col = columns[c][k];
      if (col.ndim() != 1 || static_cast<int64_t>(col.size()) != n)
        fail(fn + ": columns must be 1-d and as long as the keys (" + std::to_string(n) + "), got " +
             std::to_string(col.size()));
      if (col.dtype().kind() == 'O') fail(fn + ": object columns cannot be scattered natively; take them by `order`");
      if (!col.dtype().equal(columns[0][k].dtype()))
        fail(fn + ": column " + std::to_string(k) + " must have one dtype in every chunk, got " +
             py::str(columns[0][k].dtype()).cast<std::string>() + " and " + py::str(col.dtype()).cast<std::string>());
      ins[c].push_back(py::array::ensure(col, py::array::c_style));
    }
    start[c + 1] = start[c] + n;
  }
  const int64_t n = start[n_chunks];
  std::vector<py::array> outs;
  const std::vector<py::array> no_columns;
  const std::vector<py::array>& first = n_chunks ? columns[0] : no_columns;
  py::array_t<uint16_t> groups;
  if (out_obj.is_none()) {
    groups = py::array_t<uint16_t>(n);
    for (const py::array& col : first) outs.emplace_back(col.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)});
  } else {
    auto out = py::array::ensure(out_obj);
    if (!out || out.ndim() != 1 || out.dtype().kind() != 'u' || out.itemsize() != 1 ||
        !(out.flags() & py::array::c_style) || !out.writeable())
      fail(fn + ": out must be a writable, contiguous 1-d uint8 array");
    std::vector<int64_t> sizes;
    for (const py::array& col : first) sizes.push_back(static_cast<int64_t>(col.itemsize()));
    const std::vector<int64_t> at = route_layout(n, sizes);
    if (static_cast<int64_t>(out.size()) < at.back())
      fail(fn + ": out holds " + std::to_string(out.size()) + " bytes, the routed groups and columns of " +
           std::to_string(n) + " rows need " + std::to_string(at.back()));
    auto* base = static_cast<uint8_t*>(out.mutable_data());
    groups = py::array_t<uint16_t>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(2)},
                                   reinterpret_cast<uint16_t*>(base), out);
    for (size_t k = 0; k < first.size(); ++k)
      outs.emplace_back(first[k].dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)},
                        std::vector<py::ssize_t>{static_cast<py::ssize_t>(sizes[k])}, base + at[k + 1], out);
  }
  py::array_t<int64_t> order(with_order ? n : 0), bounds(parallelism + 1);
  const py::ssize_t cb_rows = chunk_bounds ? static_cast<py::ssize_t>(n_chunks + 1) : 0;
  py::array_t<int64_t> starts({cb_rows, static_cast<py::ssize_t>(parallelism)});
  const size_t scratch = static_cast<size_t>(std::max<int64_t>(n, 1));
  std::unique_ptr<uint16_t[]> group(new uint16_t[scratch]);  // row order
  // Every pointer and item size the loops need, taken while the GIL is held: py::array's
  // itemsize() makes a dtype object (a reference count moved), which without the GIL races
  // with other threads' Python; asked once per block, it crashed Ray actors whose window
  // thread ran Python beside a reading thread's routing.
  std::vector<size_t> item_size;
  for (const py::array& col : first) item_size.push_back(static_cast<size_t>(col.itemsize()));
  std::vector<std::vector<const uint8_t*>> in_data(n_chunks);
  for (size_t c = 0; c < n_chunks; ++c)
    for (const py::array& col : ins[c]) in_data[c].push_back(static_cast<const uint8_t*>(col.data()));
  std::vector<uint8_t*> out_data;
  for (py::array& o : outs) out_data.push_back(static_cast<uint8_t*>(o.mutable_data()));
  int64_t* order_data = with_order ? order.mutable_data() : nullptr;
  uint16_t* groups_data = groups.mutable_data();
  int64_t* b = bounds.mutable_data();
  int64_t* cb = starts.mutable_data();
  {
    py::gil_scoped_release release;
    Router router(n_groups, parallelism);
    std::fill(b, b + parallelism + 1, 0);
    for (size_t c = 0; c < n_chunks; ++c) {
      if (chunk_bounds) std::copy(b + 1, b + parallelism + 1, cb + c * parallelism);  // rows per actor before c
      router.group_rows(ptrs[c], start[c + 1] - start[c], group.get() + start[c], b);
    }
    if (chunk_bounds) std::copy(b + 1, b + parallelism + 1, cb + n_chunks * parallelism);
    router.bounds_from_counts(b);
    if (chunk_bounds)
      for (size_t c = 0; c <= n_chunks; ++c)
        for (int64_t j = 0; j < parallelism; ++j) cb[c * parallelism + j] += b[j];
    std::vector<int64_t> next(b, b + parallelism);  // each owner's next place
    auto place = [&](auto* dest) {  // a block's places (Router::kPlaceBlock), 32-bit while they fit
      for (size_t c = 0; c < n_chunks; ++c)
        for (int64_t lo = start[c]; lo < start[c + 1]; lo += Router::kPlaceBlock) {
          const int64_t len = std::min(Router::kPlaceBlock, start[c + 1] - lo);
          router.place_rows(group.get() + lo, lo, len, next.data(), dest, order_data, groups_data);
          for (size_t k = 0; k < in_data[c].size(); ++k) {
            const size_t size = item_size[k];
            Router::place_column(dest, len, in_data[c][k] + static_cast<size_t>(lo - start[c]) * size, out_data[k], size);
          }
        }
    };
    if (n <= static_cast<int64_t>(UINT32_MAX)) {
      uint32_t dest[Router::kPlaceBlock];
      place(dest);
    } else {
      int64_t dest[Router::kPlaceBlock];
      place(dest);
    }
  }
  py::list routed;
  for (auto& o : outs) routed.append(o);
  py::object maybe_order = with_order ? py::object(order) : py::object(py::none());
  if (chunk_bounds) return py::make_tuple(maybe_order, groups, bounds, routed, starts);
  return py::make_tuple(maybe_order, groups, bounds, routed);
}

py::tuple py_route_rows(const std::vector<WordArray>& words, int64_t n_groups, int64_t parallelism,
                        const std::vector<py::array>& columns, bool with_order, const py::object& out) {
  return route_chunk_list({words}, n_groups, parallelism, {columns}, with_order, "route_rows", out);
}

py::tuple py_route_chunks(const std::vector<std::vector<WordArray>>& words, int64_t n_groups, int64_t parallelism,
                          const std::vector<std::vector<py::array>>& columns, bool with_order, const py::object& out,
                          bool chunk_bounds) {
  return route_chunk_list(words, n_groups, parallelism, columns, with_order, "route_chunks", out, chunk_bounds);
}

/// An entry of the TimerQueue the tests drive directly (tests/test_timer_queue.py).
struct TestTimer {
  int64_t time;
  int32_t slot, id;
  bool operator>(const TestTimer& o) const {
    return time != o.time ? time > o.time : (slot != o.slot ? slot > o.slot : id > o.id);
  }
};

PYBIND11_MODULE(_core, m) {
  m.doc() = "pystream native core: slice-based keyed event-time windows";
  m.def(
      "stable_argsort",
      [](const I64Array& keys) {
        const int64_t n = keys.size();
        py::array_t<int64_t> order(n);
        int64_t* out = order.mutable_data();
        const int64_t* in = keys.data();
        {
          py::gil_scoped_release release;
          stable_argsort(in, n, out);
        }
        return order;
      },
      py::arg("keys"), "Stable argsort of int64 keys (LSD radix over the keys' range): np.argsort(keys, kind='stable').");
  m.def("route_rows", &py_route_rows, py::arg("words"), py::arg("n_groups"), py::arg("parallelism"),
        py::arg("columns") = std::vector<py::array>{}, py::arg("with_order") = true, py::arg("out") = py::none(),
        "Key groups of rows and a stable counting sort by owning actor: (order or None without with_order, groups in "
        "that order, bounds, the columns in that order); with `out` (uint8), groups and columns are views of it.");
  m.def("route_chunks", &py_route_chunks, py::arg("words"), py::arg("n_groups"), py::arg("parallelism"),
        py::arg("columns"), py::arg("with_order") = true, py::arg("out") = py::none(), py::arg("chunk_bounds") = false,
        "route_rows over rows that come as chunks (words[c] and columns[c] per chunk), routed as one batch: the "
        "same result as route_rows over the chunks joined, without joining them; with chunk_bounds, also where "
        "each chunk's rows of each actor begin in the routed order (chunks + 1 rows by parallelism).");
  m.def("routed_bytes", [](int64_t rows, const std::vector<int64_t>& itemsizes) {
          if (rows < 0) fail("routed_bytes: rows must be >= 0, got " + std::to_string(rows));
          return route_layout(rows, itemsizes).back();
        }, py::arg("rows"), py::arg("itemsizes"),
        "Bytes the routed groups and columns (of these item sizes) of `rows` rows take laid out in route_rows' `out`.");
  m.def("regrowth_bytes", [] { return regrowth_bytes().load(std::memory_order_relaxed); },
        "Bytes that engines' output columns have copied, process-wide, because they outgrew their buffer (output "
        "sized up front copies none).");
  m.def(
      "watermark_floors",
      [](const I64Array& ts, int64_t unit_ns, int64_t ooo, int64_t max_future, std::optional<int64_t> carry,
         std::optional<int64_t> cap, std::optional<int64_t> wm) {
        if (ts.ndim() != 1) fail("timestamps must be a 1-D array");
        if (unit_ns < 1) fail("unit_ns must be >= 1, got " + std::to_string(unit_ns));
        if (ooo < 0 || ooo > kMaxDuration) fail("ooo must be within 0..2^60 ns, got " + std::to_string(ooo));
        if (max_future > kMaxDuration) fail("max_future must be at most 2^60 ns, got " + std::to_string(max_future));
        const int64_t c = carry.value_or(kNoWatermark);
        if (c != kNoWatermark && (c < -kMaxAbsTime || c > kMaxAbsTime)) fail("carry " + std::to_string(c) + " ns is out of range");
        const int64_t k = cap.value_or(kEndWatermark);
        if (k != kNoWatermark && k != kEndWatermark && (k < -kMaxAbsTime - kMaxDuration - 1 || k > kMaxAbsTime)) {
          fail("cap " + std::to_string(k) + " ns is out of range");
        }
        int64_t w = wm.value_or(kNoWatermark);
        if (w != kNoWatermark && (w < -kMaxAbsTime - kMaxDuration - 1 || w > kMaxAbsTime)) fail("wm " + std::to_string(w) + " ns is out of range");
        const int64_t n = ts.size();
        py::array_t<int64_t> floor(n);
        int64_t* out = floor.mutable_data();
        const int64_t* in = ts.data();
        int64_t hi;
        {
          py::gil_scoped_release release;
          hi = watermark_floors(in, unit_ns, n, ooo, max_future, c, k, w, out);
        }
        const auto opt = [](int64_t v) { return v == kNoWatermark ? py::object(py::none()) : py::object(py::int_(v)); };
        return py::make_tuple(floor, opt(hi), opt(w));
      },
      py::arg("ts"), py::arg("unit_ns"), py::arg("ooo"), py::arg("max_future"), py::arg("carry") = py::none(),
      py::arg("cap") = py::none(), py::arg("wm") = py::none(),
      "Per event of one partition, the largest event time (ns) of the accepted events before it (NO_WATERMARK: none), "
      "for engines that each hold some of its keys (WindowEngine.process's `floor`); that time after the batch (None: "
      "none), the next batch's `carry`; and the watermark after it (None: none), the next batch's `wm`. `cap`: the "
      "watermark the engines' other partitions allow (None: none holds it back; NO_WATERMARK: one has no data yet).");
  m.attr("NO_WATERMARK") = kNoWatermark;
  m.attr("ROUTE_ALIGN") = kRouteAlign;
  m.attr("MAX_ABS_TIME") = kMaxAbsTime;
  m.attr("MAX_DURATION") = kMaxDuration;

  py::class_<PyEngine>(m, "WindowEngine")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, const std::vector<AggTuple>&, int64_t, int64_t>(),
           py::arg("size"), py::arg("slide"), py::arg("offset"), py::arg("ooo"), py::arg("lateness"), py::arg("max_future"),
           py::arg("keyed"), py::arg("aggs"), py::arg("out_div") = 1, py::arg("early_every") = 0)
      .def("process", &PyEngine::process, py::arg("keys"), py::arg("ts"), py::arg("values"), py::arg("unit_ns") = 1,
           py::arg("partition") = 0, py::arg("floor") = py::none())
      .def("advance_watermark", &PyEngine::advance_watermark, py::arg("watermark"))
      .def("set_partition_idle", &PyEngine::set_partition_idle, py::arg("partition"), py::arg("idle"))
      .def("raise_partition", &PyEngine::raise_partition, py::arg("partition"), py::arg("max_ts"))
      .def("process_turns", &PyEngine::process_turns, py::arg("keys"), py::arg("ts"), py::arg("values"),
           py::arg("unit_ns"), py::arg("floors"), py::arg("turns"))
      .def_property_readonly("partitions", &PyEngine::partitions)
      .def("flush", &PyEngine::flush)
      .def("peek", &PyEngine::peek, py::arg("key") = py::none())
      .def("live_handles", &PyEngine::live)
      .def("snapshot", &PyEngine::snapshot)
      .def("restore", &PyEngine::restore, py::arg("state"))
      .def_property_readonly("watermark", &PyEngine::watermark)
      .def_property_readonly("num_keys", [](const PyEngine& e) { return e.engine().num_keys(); })
      .def("has_key", [](const PyEngine& e, int64_t k) { return e.engine().has_key(k); }, py::arg("key"))
      .def_property_readonly("state_bytes", [](const PyEngine& e) { return e.engine().state_bytes(); })
      .def_property_readonly("row_bytes", [](const PyEngine& e) { return e.engine().row_bytes(); })
      .def_property_readonly("ring_capacity", [](const PyEngine& e) { return e.engine().ring_capacity(); })
      .def_property_readonly("live_slices", [](const PyEngine& e) { return e.engine().live_slices(); })
      .def_property_readonly("open_windows", [](const PyEngine& e) { return e.engine().open_windows(); })
      .def_property_readonly("slice_width", [](const PyEngine& e) { return e.engine().slice_width(); })
      .def_property_readonly("flushed", [](const PyEngine& e) { return e.engine().flushed(); });

  py::class_<TimerQueue<TestTimer>>(m, "_TimerQueue")  // for tests: the session engine's timer queue
      .def(py::init<int>(), py::arg("shift"))
      .def("push", [](TimerQueue<TestTimer>& q, int64_t t, int32_t slot, int32_t id) { q.push(TestTimer{t, slot, id}); })
      .def("top",
           [](TimerQueue<TestTimer>& q) {
             if (q.empty()) throw py::index_error("top of an empty timer queue");
             const TestTimer& e = q.top();
             return py::make_tuple(e.time, e.slot, e.id);
           })
      .def("pop",
           [](TimerQueue<TestTimer>& q) {
             if (q.empty()) throw py::index_error("pop from an empty timer queue");
             q.pop();
           })
      .def("clear", &TimerQueue<TestTimer>::clear)
      .def("__len__", &TimerQueue<TestTimer>::size);

  py::class_<PyCountEngine>(m, "CountWindowEngine")
      .def(py::init<int64_t, int64_t, bool, const std::vector<AggTuple>&>(), py::arg("size"), py::arg("slide"),
           py::arg("keyed"), py::arg("aggs"))
      .def("process", &PyCountEngine::process, py::arg("keys"), py::arg("ts"), py::arg("values"))
      .def("peek", &PyCountEngine::peek, py::arg("key") = py::none())
      .def("live_handles", &PyCountEngine::live)
      .def("snapshot", &PyCountEngine::snapshot)
      .def("restore", &PyCountEngine::restore, py::arg("state"))
      .def_property_readonly("num_keys", &PyCountEngine::num_keys)
      .def("has_key", &PyCountEngine::has_key, py::arg("key"));

  py::class_<PySessionEngine>(m, "SessionEngine")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, bool, const std::vector<AggTuple>&, int64_t>(),
           py::arg("gap"), py::arg("ooo"), py::arg("lateness"), py::arg("max_future"), py::arg("keyed"), py::arg("aggs"),
           py::arg("out_div") = 1)
      .def("process", &PySessionEngine::process, py::arg("keys"), py::arg("ts"), py::arg("values"), py::arg("unit_ns") = 1,
           py::arg("partition") = 0, py::arg("floor") = py::none())
      .def("set_partition_idle", &PySessionEngine::set_partition_idle, py::arg("partition"), py::arg("idle"))
      .def("raise_partition", &PySessionEngine::raise_partition, py::arg("partition"), py::arg("max_ts"))
      .def_property_readonly("partitions", &PySessionEngine::partitions)
      .def("flush", &PySessionEngine::flush)
      .def("advance_watermark", &PySessionEngine::advance_watermark, py::arg("watermark"))
      .def("peek", &PySessionEngine::peek, py::arg("key") = py::none())
      .def("live_handles", &PySessionEngine::live)
      .def("snapshot", &PySessionEngine::snapshot)
      .def("restore", &PySessionEngine::restore, py::arg("state"))
      .def_property_readonly("watermark", &PySessionEngine::watermark)
      .def_property_readonly("num_keys", &PySessionEngine::num_keys)
      .def("has_key", &PySessionEngine::has_key, py::arg("key"))
      .def_property_readonly("live_sessions", &PySessionEngine::live_sessions);

  py::class_<PyCalendarEngine>(m, "CalendarEngine")
      .def(py::init<int64_t, int64_t, int64_t, bool, const std::vector<AggTuple>&, int64_t, int64_t>(), py::arg("ooo"),
           py::arg("lateness"), py::arg("max_future"), py::arg("keyed"), py::arg("aggs"), py::arg("out_div") = 1,
           py::arg("early_every") = 0)
      .def("add_zone", &PyCalendarEngine::add_zone, py::arg("bounds"))
      .def("process", &PyCalendarEngine::process, py::arg("keys"), py::arg("ts"), py::arg("values"), py::arg("zones") = py::none(),
           py::arg("unit_ns") = 1, py::arg("partition") = 0, py::arg("floor") = py::none())
      .def("advance_watermark",
           [](PyCalendarEngine& e, int64_t w) { return e.call([w](CalendarEngine& c, EmitBuffer& o) { c.advance_watermark(w, o); }); },
           py::arg("watermark"))
      .def("set_partition_idle",
           [](PyCalendarEngine& e, int64_t p, bool idle) {
             return e.call([p, idle](CalendarEngine& c, EmitBuffer& o) { c.set_partition_idle(p, idle, o); });
           },
           py::arg("partition"), py::arg("idle"))
      .def("raise_partition", &PyCalendarEngine::raise_partition, py::arg("partition"), py::arg("max_ts"))
      .def("flush", [](PyCalendarEngine& e) { return e.call([](CalendarEngine& c, EmitBuffer& o) { c.flush(o); }); })
      .def("peek",
           [](PyCalendarEngine& e, std::optional<int64_t> key) {
             return e.call([key](CalendarEngine& c, EmitBuffer& o) { c.peek(key.has_value(), key.value_or(0), o); });
           },
           py::arg("key") = py::none())
      .def_property_readonly("partitions", &PyCalendarEngine::partitions)
      .def("live_handles", &PyCalendarEngine::live)
      .def("snapshot", &PyCalendarEngine::snapshot)
      .def("restore", &PyCalendarEngine::restore, py::arg("state"))
      .def_property_readonly("watermark", &PyCalendarEngine::watermark)
      .def_property_readonly("num_keys", [](const PyCalendarEngine& e) { return e.engine().num_keys(); })
      .def("has_key", [](const PyCalendarEngine& e, int64_t k) { return e.engine().has_key(k); }, py::arg("key"))
      .def_property_readonly("num_zones", [](const PyCalendarEngine& e) { return e.engine().num_zones(); })
      .def_property_readonly("state_bytes", [](const PyCalendarEngine& e) { return e.engine().state_bytes(); })
      .def_property_readonly("ring_capacity", [](const PyCalendarEngine& e) { return e.engine().ring_capacity(); })
      .def_property_readonly("open_windows", [](const PyCalendarEngine& e) { return e.engine().open_windows(); });

  py::class_<PyGlobalEngine>(m, "GlobalEngine")
      .def(py::init<int, int64_t, int64_t, bool, int64_t, int64_t, bool, const std::vector<AggTuple>&>(),
           py::arg("trigger"), py::arg("count"), py::arg("interval"), py::arg("purge"), py::arg("ooo"), py::arg("max_future"),
           py::arg("keyed"), py::arg("aggs"))
      .def("process", &PyGlobalEngine::process, py::arg("keys"), py::arg("ts"), py::arg("values"), py::arg("unit_ns") = 1,
           py::arg("partition") = 0, py::arg("floor") = py::none())
      .def("advance_watermark",
           [](PyGlobalEngine& e, int64_t w) { return e.call([w](GlobalEngine& g, EmitBuffer& o) { g.advance_watermark(w, o); }); },
           py::arg("watermark"))
      .def("set_partition_idle",
           [](PyGlobalEngine& e, int64_t p, bool idle) {
             return e.call([p, idle](GlobalEngine& g, EmitBuffer& o) { g.set_partition_idle(p, idle, o); });
           },
           py::arg("partition"), py::arg("idle"))
      .def("raise_partition", &PyGlobalEngine::raise_partition, py::arg("partition"), py::arg("max_ts"))
      .def(
          "first_watermark",
          [](PyGlobalEngine& e, int64_t w) {
            if (w < -kMaxAbsTime - kMaxDuration - 1 || w > kMaxAbsTime) fail("first watermark " + std::to_string(w) + " ns is out of range");
            e.first_watermark(w);
          },
          py::arg("watermark"))
      .def("fire", [](PyGlobalEngine& e) { return e.call([](GlobalEngine& g, EmitBuffer& o) { g.fire(o); }); })
      .def("peek",
           [](PyGlobalEngine& e, std::optional<int64_t> key) {
             return e.call([key](GlobalEngine& g, EmitBuffer& o) { g.peek(key.has_value(), key.value_or(0), o); });
           },
           py::arg("key") = py::none())
      .def("flush", [](PyGlobalEngine& e) { return e.call([](GlobalEngine& g, EmitBuffer& o) { g.flush(o); }); })
      .def_property_readonly("partitions", &PyGlobalEngine::partitions)
      .def("live_handles", &PyGlobalEngine::live)
      .def("snapshot", &PyGlobalEngine::snapshot)
      .def("restore", &PyGlobalEngine::restore, py::arg("state"))
      .def_property_readonly("watermark", &PyGlobalEngine::watermark)
      .def_property_readonly("num_keys", &PyGlobalEngine::num_keys)
      .def("has_key", [](const PyGlobalEngine& e, int64_t k) { return e.engine().has_key(k); }, py::arg("key"));

  py::class_<EventClock>(m, "EventClock")
      .def(py::init<int64_t, int64_t>(), py::arg("ooo"), py::arg("max_future"))
      .def("classify", &classify_events, py::arg("ts"), py::arg("unit_ns") = 1, py::arg("partition") = 0)
      .def("set_partition_idle", &EventClock::set_partition_idle, py::arg("partition"), py::arg("idle"))
      .def(
          "raise_partition",
          [](EventClock& c, int64_t partition, int64_t t) {
            if (t < -kMaxAbsTime || t > kMaxAbsTime) {
              fail("partition " + std::to_string(partition) + " max " + std::to_string(t) +
                   " ns is out of range (|t| <= 2^62 ns)");
            }
            c.raise_partition(partition, t);
          },
          py::arg("partition"), py::arg("t"))
      .def("advance", &EventClock::advance, py::arg("watermark"))
      .def_property_readonly("watermark",
                             [](const EventClock& c) -> std::optional<int64_t> {
                               if (!c.has_watermark()) return std::nullopt;
                               return c.watermark();
                             })
      .def("snapshot",
           [](const EventClock& c) {
             py::dict d;
             d["has_wm"] = c.has_watermark();
             d["wm"] = c.watermark();
             partitions_to_dict(c.partitions(), d);
             return d;
           })
      .def("restore", [](EventClock& c, const py::dict& d) {
        c.restore(d["has_wm"].cast<bool>(), d["wm"].cast<int64_t>(), partitions_from_dict(d));
      });

  py::class_<PairSet>(m, "PairSet")
      .def(py::init<>())
      .def("insert", &insert_pairs, py::arg("a"), py::arg("b"))
      .def("expire", &PairSet::expire, py::arg("cutoff"))
      .def("__len__", &PairSet::size)
      .def_property_readonly("capacity", &PairSet::capacity)
      .def("snapshot",
           [](const PairSet& s) {
             std::vector<int64_t> a, b;
             s.items(a, b);
             py::dict d;
             d["a"] = to_numpy(std::move(a));
             d["b"] = to_numpy(std::move(b));
             d["expired_before"] = s.expired_before();
             return d;
           })
      .def("restore", [](PairSet& s, const py::dict& d) {
        s.assign(from_numpy(d["a"].cast<I64Array>()), from_numpy(d["b"].cast<I64Array>()), d["expired_before"].cast<int64_t>());
      });

  py::class_<PyKeyIndex>(m, "KeyIndex")
      .def(py::init<>())
      .def("intern", &PyKeyIndex::intern, py::arg("keys"))
      .def("keys", &PyKeyIndex::keys)
      .def("assign", &PyKeyIndex::assign, py::arg("keys"))
      .def_property_readonly("direct_size", &PyKeyIndex::direct_size)
      .def("__len__", &PyKeyIndex::size);

  py::class_<PyTupleInterner>(m, "TupleInterner")
      .def(py::init<int>(), py::arg("width"))
      .def("intern", &PyTupleInterner::intern, py::arg("cols"))
      .def("column", &PyTupleInterner::column, py::arg("ids"), py::arg("c"))
      .def("rows", &PyTupleInterner::rows)
      .def("find", &PyTupleInterner::find, py::arg("row"))
      .def("assign", &PyTupleInterner::assign, py::arg("rows"))
      .def("__len__", &PyTupleInterner::size);
}
