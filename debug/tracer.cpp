// debug/tracer.cpp — the frame-buffered NaN tracer (see tracer.h and docs/tracer.md).
#include "debug/tracer.h"

#include <algorithm>
#include <cstring>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "kernels/safetensors.h"

namespace reftrain {

// ---- statistics ----------------------------------------------------------------------------------------

namespace {

// Partial statistics of one chunk. The tensor is cut into at most kMaxChunks chunks whose size depends
// only on numel, each reduced by one thread, and the partials are combined in chunk order: the result
// is the same for any OpenMP thread count.
struct Partial {
    double sum_squares = 0.0;
    double abs_min = std::numeric_limits<double>::infinity(), abs_max = 0.0;
    int64_t nonfinite = 0;
};
constexpr int64_t kMaxChunks = 64;
// Chunks of at least 32k elements (128 KB in fp32): a (B*T, d) = (2048, 128) activation of the tiny
// config is 8 chunks, so every thread takes part; smaller tensors stay on one thread (no fork/join).
constexpr int64_t kMinChunk = 1 << 15;

// 16 lanes of T as one vector value (GCC/clang vector extensions; the attribute cannot sit on a
// template parameter, hence one typedef per type).
template <class T>
struct Lanes16;
template <>
struct Lanes16<float> {
    typedef float type __attribute__((vector_size(16 * sizeof(float))));
};
template <>
struct Lanes16<double> {
    typedef double type __attribute__((vector_size(16 * sizeof(double))));
};

// The fast path, for the rule (every value finite and of ordinary size): per-lane sums of squares in T
// flushed into per-lane fp64 sums every 256 elements, per-lane max and min of |x|, all on vector values
// and with no test per element (four or five vector operations per 16 elements, against nine for the
// careful loop). Returns false, and the caller runs the careful loop, when the chunk holds an inf or
// NaN (the sum turns non-finite: NaN and inf propagate through squares and adds), when a square
// overflows, or when the largest |x| is so small that squares lose precision.
template <class T>
bool reduce_chunk_fast(const T* p, int64_t begin, int64_t end, Partial* out) {
    using Lanes = typename Lanes16<T>::type;
    using Wide = typename Lanes16<double>::type;
    constexpr int64_t kBlock = 256;
    // Below this largest |x| the squares could underflow (1e-10 squared is 1e-20, far above FLT_MIN).
    constexpr T smallest_ordinary = sizeof(T) == 4 ? T(1e-10) : T(1e-100);
    if (end - begin < kBlock) return false;
    Wide total = {};
    Lanes hi = {}, lo = {};
    lo += std::numeric_limits<T>::infinity();
    int64_t i = begin;
    for (; i + kBlock <= end; i += kBlock) {
        Lanes sum = {};
        for (int64_t b = 0; b < kBlock; b += 16) {
            Lanes x;
            std::memcpy(&x, p + i + b, sizeof x);
            const Lanes a = x < T(0) ? -x : x;
            sum += a * a;
            hi = hi > a ? hi : a;
            lo = lo < a ? lo : a;
        }
        total += __builtin_convertvector(sum, Wide);
    }
    double sum_squares = 0.0;
    T top = 0, bottom = std::numeric_limits<T>::infinity();
    for (int j = 0; j < 16; ++j) {
        sum_squares += total[j];
        top = std::max(top, hi[j]);
        bottom = std::min(bottom, lo[j]);
    }
    for (; i < end; ++i) {  // the last partial block, element by element
        const T a = std::fabs(p[i]);
        sum_squares += static_cast<double>(a) * static_cast<double>(a);
        top = std::max(top, a);
        bottom = std::min(bottom, a);
    }
    if (!std::isfinite(sum_squares) || !(top <= std::numeric_limits<T>::max()) || (top < smallest_ordinary && top != T(0))) {
        return false;
    }
    out->sum_squares = sum_squares;
    out->abs_max = std::fabs(top);  // -0.0 (x < 0 is false for it) compares equal to 0 and may be the min
    out->abs_min = std::fabs(bottom);
    out->nonfinite = 0;
    return true;
}

// The careful loop: counts and leaves out non-finite values, and sums in fp64 where fp32 squares
// would overflow or underflow. Exact statistics for any input.
template <class T>
Partial reduce_chunk(const T* p, int64_t begin, int64_t end) {
    if (Partial fast; reduce_chunk_fast(p, begin, end, &fast)) return fast;
    // 16 independent lanes in T, flushed into fp64 every kBlock elements: a single accumulator is a
    // serial chain (one add per 4 cycles); lanes let the compiler keep vector adds in flight, and 16
    // terms per lane and flush keep the partial sums good to ~1e-6 relative. Squares of fp32 values
    // can leave fp32's range (|x| > 1.8e19 overflows, |x| < 1e-19 underflows): a block whose sum is
    // not comfortably normal is summed again in fp64, so a finite tensor never shows an infinite or
    // zero rms.
    constexpr int kLanes = 16;
    constexpr int64_t kBlock = 256;
    constexpr T largest = std::numeric_limits<T>::max();
    constexpr T tiny = std::numeric_limits<T>::min() * T(1 << 24);
    double sum_squares = 0.0;
    T lo[kLanes], hi[kLanes] = {};
    T bad[kLanes] = {};  // at most kBlock / kLanes per block: exact in T
    int64_t nonfinite = 0;
    for (int j = 0; j < kLanes; ++j) lo[j] = std::numeric_limits<T>::infinity();
    int64_t i = begin;
    for (; i + kBlock <= end; i += kBlock) {
        T sum[kLanes] = {}, block_hi_lane[kLanes] = {};
        for (int64_t b = 0; b < kBlock; b += kLanes) {
            for (int j = 0; j < kLanes; ++j) {
                // Written as selects, not std::min/max, so the compiler sees no control flow.
                const T a = std::fabs(p[i + b + j]);
                const bool finite = a <= largest;  // false for inf and NaN
                const T v = finite ? a : T(0);
                const T m = finite ? a : std::numeric_limits<T>::infinity();
                sum[j] += v * v;
                block_hi_lane[j] = block_hi_lane[j] > v ? block_hi_lane[j] : v;
                lo[j] = lo[j] < m ? lo[j] : m;
                bad[j] += finite ? T(0) : T(1);
            }
        }
        T block = 0, block_hi = 0;
        for (int j = 0; j < kLanes; ++j) {
            block += sum[j];
            block_hi = std::max(block_hi, block_hi_lane[j]);
            hi[j] = std::max(hi[j], block_hi_lane[j]);
            nonfinite += static_cast<int64_t>(bad[j]);
            bad[j] = T(0);
        }
        if (block <= largest && (block >= tiny || block_hi == T(0))) {
            sum_squares += static_cast<double>(block);
        } else {
            for (int64_t e = i; e < i + kBlock; ++e) {
                const T a = std::fabs(p[e]);
                if (a <= largest) sum_squares += static_cast<double>(a) * static_cast<double>(a);
            }
        }
    }
    for (; i < end; ++i) {
        const T a = std::fabs(p[i]);
        const bool finite = a <= largest;
        const T v = finite ? a : T(0);
        sum_squares += static_cast<double>(v) * static_cast<double>(v);
        hi[0] = std::max(hi[0], v);
        lo[0] = finite ? std::min(lo[0], a) : lo[0];
        nonfinite += !finite;
    }
    Partial r;
    r.sum_squares = sum_squares;
    r.nonfinite = nonfinite;
    for (int j = 0; j < kLanes; ++j) {
        r.abs_min = std::min(r.abs_min, static_cast<double>(lo[j]));
        r.abs_max = std::max(r.abs_max, static_cast<double>(hi[j]));
    }
    return r;
}

template <class T>
TensorStats reduce(const T* p, int64_t n) {
    const int64_t chunk = std::max(kMinChunk, (n + kMaxChunks - 1) / kMaxChunks);
    const int64_t chunks = std::max<int64_t>(1, (n + chunk - 1) / chunk);
    Partial partials[kMaxChunks];
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) partials[c] = reduce_chunk(p, c * chunk, std::min(n, (c + 1) * chunk));
    Partial total;
    for (int64_t c = 0; c < chunks; ++c) {
        total.sum_squares += partials[c].sum_squares;
        total.abs_min = std::min(total.abs_min, partials[c].abs_min);
        total.abs_max = std::max(total.abs_max, partials[c].abs_max);
        total.nonfinite += partials[c].nonfinite;
    }
    TensorStats s;
    s.nonfinite = total.nonfinite;
    const int64_t finite = n - total.nonfinite;
    if (finite > 0) {
        s.abs_min = total.abs_min;
        s.abs_max = total.abs_max;
        s.rms = std::sqrt(total.sum_squares / static_cast<double>(finite));
    }
    return s;
}

std::string file_safe(const std::string& name) {
    std::string s = name;
    for (char& ch : s) {
        if (ch == ':' || ch == '/' || ch == ' ') ch = '_';
    }
    return s;
}

nlohmann::json stats_json(const TensorStats& s) {
    return {{"abs_min", s.abs_min}, {"abs_max", s.abs_max}, {"rms", s.rms}, {"nonfinite", s.nonfinite}};
}

}  // namespace

TensorStats tensor_stats(const Tensor& t) {
    check(t.device == Device::CPU, "tensor_stats: tensor '", t.name, "' is not on the CPU");
    if (t.dtype == DType::F32) return reduce(t.ptr<float>(), t.numel());
    if (t.dtype == DType::F64) return reduce(t.ptr<double>(), t.numel());
    fail("tensor_stats: tensor '", t.name, "' has dtype ", dtype_name(t.dtype), ", expected F32 or F64");
}

// ---- the tracer ----------------------------------------------------------------------------------------

FrameTracer::FrameTracer() : FrameTracer(Options{}) {}

FrameTracer::FrameTracer(Options options) : options_(std::move(options)) {
    check(options_.frames >= 1, "FrameTracer: options.frames = ", options_.frames, ", expected >= 1");
    ring_.resize(static_cast<size_t>(options_.frames));
}

int32_t FrameTracer::intern(std::string_view name) {
    auto it = ids_.find(name);
    if (it != ids_.end()) return it->second;
    const auto id = static_cast<int32_t>(names_.size());
    names_.emplace_back(name);
    ids_.emplace(names_.back(), id);
    return id;
}

void FrameTracer::begin_step(int64_t step) {
    current_.step = step;
    current_.entries.clear();
    tripped_ = false;
}

void FrameTracer::end_step() {
    if (!options_.enabled) return;
    // Swap rather than copy: every slot keeps its entries' capacity, so steady state allocates nothing.
    std::swap(ring_[ring_head_], current_);
    current_.entries.clear();
    current_.step = -1;
    ring_head_ = (ring_head_ + 1) % ring_.size();
    ring_count_ = std::min(ring_count_ + 1, ring_.size());
}

const FrameTracer::Frame& FrameTracer::frame(size_t i) const {
    check(i < ring_count_, "FrameTracer::frame: index ", i, " but the ring holds ", ring_count_, " frames");
    return ring_[(ring_head_ + ring_.size() - ring_count_ + i) % ring_.size()];
}

std::optional<TensorStats> FrameTracer::find(const Frame& frame, const std::string& name) const {
    auto it = ids_.find(name);
    if (it == ids_.end()) return std::nullopt;
    for (auto e = frame.entries.rbegin(); e != frame.entries.rend(); ++e) {
        if (e->name == it->second) return e->stats;
    }
    return std::nullopt;
}

void FrameTracer::record(std::string_view op, std::initializer_list<const Tensor*> outputs,
                         std::initializer_list<const Tensor*> inputs) {
    record(op, std::span<const Tensor* const>(outputs.begin(), outputs.size()),
           std::span<const Tensor* const>(inputs.begin(), inputs.size()));
}

void FrameTracer::record(std::string_view op, const std::vector<Tensor>& outputs) {
    if (!options_.enabled) return;
    const int32_t op_id = intern(op);
    for (const Tensor& t : outputs) {
        const TensorStats s = tensor_stats(t);
        current_.entries.push_back(Entry{intern(t.name), op_id, s});
        if (s.nonfinite > 0 && !tripped_) {
            const Tensor* one = &t;
            trip(op, t, s, std::span<const Tensor* const>(&one, 1), {});
        }
    }
}

void FrameTracer::record(std::string_view op, std::span<const Tensor* const> outputs,
                         std::span<const Tensor* const> inputs) {
    if (!options_.enabled) return;
    const int32_t op_id = intern(op);
    for (const Tensor* t : outputs) {
        if (t == nullptr || t->data == nullptr) continue;
        const TensorStats s = tensor_stats(*t);
        current_.entries.push_back(Entry{intern(t->name), op_id, s});
        if (s.nonfinite > 0 && !tripped_) trip(op, *t, s, outputs, inputs);
    }
}

void FrameTracer::record_stats(std::string_view op, std::string_view name, const TensorStats& stats) {
    if (!options_.enabled) return;
    current_.entries.push_back(Entry{intern(name), intern(op), stats});
}

// ---- on a trip -----------------------------------------------------------------------------------------

void FrameTracer::trip(std::string_view op, const Tensor& bad, const TensorStats& stats,
                       std::span<const Tensor* const> outputs, std::span<const Tensor* const> inputs) {
    tripped_ = true;
    ++trips_;
    Incident incident;
    incident.step = current_.step;
    incident.tensor = bad.name;
    incident.op = std::string(op);
    incident.stats = stats;
    // The tensors of the table and the dump: the bad one first, then the op's other outputs, then its
    // inputs, each name once.
    std::vector<const Tensor*> involved{&bad};
    auto add = [&](const Tensor* t) {
        if (t == nullptr || t->data == nullptr) return false;
        for (const Tensor* u : involved) {
            if (u->name == t->name) return false;
        }
        involved.push_back(t);
        return true;
    };
    for (const Tensor* t : outputs) {
        if (t != nullptr && t->data != nullptr) incident.outputs.push_back(t->name);
        add(t);
    }
    std::vector<const Tensor*> table{&bad};
    for (const Tensor* t : inputs) {
        if (t == nullptr || t->data == nullptr) continue;
        incident.inputs.push_back(t->name);
        // Integer inputs (token ids, targets) go into the dump but have no float statistics to show.
        const bool floating = t->dtype == DType::F32 || t->dtype == DType::F64;
        if (add(t) && floating) table.push_back(t);
    }
    incident.runup = format_runup(incident, table);

    if (!options_.run_dir.empty()) {
        namespace fs = std::filesystem;
        const fs::path dir = fs::path(options_.run_dir) / "tracer";
        fs::create_directories(dir);
        const std::string stem = "step_" + std::to_string(incident.step) + "_" + file_safe(bad.name);
        incident.dump_path = (dir / (stem + ".safetensors")).string();
        incident.report_path = (dir / (stem + ".json")).string();
        std::vector<Tensor> dump;
        for (const Tensor* t : involved) dump.push_back(*t);
        auto join = [](const std::vector<std::string>& names) {
            std::string s;
            for (const std::string& n : names) {
                if (!s.empty()) s += ',';
                s += n;
            }
            return s;
        };
        save_safetensors(incident.dump_path, dump,
                         {{"step", std::to_string(incident.step)}, {"tensor", incident.tensor}, {"op", incident.op},
                          {"outputs", join(incident.outputs)}, {"inputs", join(incident.inputs)}});

        nlohmann::json runup = nlohmann::json::object();
        for (const Tensor* t : table) {
            nlohmann::json rows = nlohmann::json::array();
            for (size_t i = 0; i < ring_count_; ++i) {
                if (auto s = find(frame(i), t->name)) {
                    nlohmann::json row = stats_json(*s);
                    row["step"] = frame(i).step;
                    rows.push_back(row);
                }
            }
            const std::optional<TensorStats> now = find(current_, t->name);
            nlohmann::json row = stats_json(now ? *now : tensor_stats(*t));
            row["step"] = incident.step;
            rows.push_back(row);
            runup[t->name] = rows;
        }
        nlohmann::json report = {{"step", incident.step},
                                 {"tensor", incident.tensor},
                                 {"op", incident.op},
                                 {"stats", stats_json(stats)},
                                 {"numel", bad.numel()},
                                 {"outputs", incident.outputs},
                                 {"inputs", incident.inputs},
                                 {"dump", fs::path(incident.dump_path).filename().string()},
                                 {"frames_before", ring_count_},
                                 {"runup", runup}};
        const std::string text = report.dump(2) + "\n";
        write_file_atomically(incident.report_path, text.data(), text.size());
    }
    std::ostream& log = options_.log != nullptr ? *options_.log : std::cerr;
    log << incident.runup;
    if (!incident.dump_path.empty()) {
        log << "tracer: dumped the op's inputs and outputs to " << incident.dump_path << "\n"
            << "tracer: report " << incident.report_path << "\n";
    }
    log.flush();
    if (!first_incident_) first_incident_ = incident;
    incident_ = std::move(incident);
}

std::string FrameTracer::format_runup(const Incident& incident, std::span<const Tensor* const> tensors) const {
    std::string s;
    char line[256];
    std::snprintf(line, sizeof line,
                  "tracer: first non-finite value at step %lld in '%s' (op %s): %lld of %lld values are inf/nan\n",
                  static_cast<long long>(incident.step), incident.tensor.c_str(), incident.op.c_str(),
                  static_cast<long long>(incident.stats.nonfinite), static_cast<long long>(tensors[0]->numel()));
    s += line;
    std::snprintf(line, sizeof line, "tracer: run-up over the last %zu frames (|x| and rms over the finite values)\n",
                  ring_count_ + 1);
    s += line;
    for (size_t k = 0; k < tensors.size(); ++k) {
        const Tensor& t = *tensors[k];
        s += "  " + t.name + (k == 0 ? "   [first bad, output]" : "   [input]") + " " + t.shape_str() + "\n";
        s += "        step      abs_min      abs_max          rms   nonfinite\n";
        auto row = [&](int64_t step, const TensorStats& st, const char* note) {
            std::snprintf(line, sizeof line, "    %8lld  %11.4e  %11.4e  %11.4e  %10lld%s\n", static_cast<long long>(step),
                          st.abs_min, st.abs_max, st.rms, static_cast<long long>(st.nonfinite), note);
            s += line;
        };
        for (size_t i = 0; i < ring_count_; ++i) {
            if (auto st = find(frame(i), t.name)) row(frame(i).step, *st, "");
        }
        const std::optional<TensorStats> now = find(current_, t.name);
        row(incident.step, now ? *now : tensor_stats(t), k == 0 ? "   <- went bad here" : "");
    }
    return s;
}

}  // namespace reftrain
