// model/transformer_cuda.cpp — the decoder on the GPU (see transformer_cuda.h).
//
// forward() and backward_from_logits() are line for line model/transformer.cpp with cpu:: replaced by
// cuda:: and three additions: the stream, the bf16 loss boundary (bf16 logits are widened to an fp32
// copy for the cross-entropy, whose fp32 gradient is rounded back to bf16 for the lm_head backward),
// and the tracer's batched statistics. Read the CPU file first; the comments here are about the
// differences only.
#include "model/transformer_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/loss.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/optim.h"
#include "kernels/dtype.h"

namespace reftrain {

std::vector<float> download_f32(const Tensor& t, cudaStream_t stream) {
    cuda::expect_on_device(t, "download_f32", "tensor");
    const int64_t n = t.numel();
    std::vector<float> out(static_cast<size_t>(n));
    if (t.dtype == DType::F32) {
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(out.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream));
        REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
        return out;
    }
    check(t.dtype == DType::BF16 || t.dtype == DType::F16, "download_f32: tensor '", t.name, "' has dtype ",
          dtype_name(t.dtype), ", expected F32, BF16 or F16");
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(bits.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream));
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int64_t i = 0; i < n; ++i) out[i] = t.dtype == DType::BF16 ? bf16_to_float(bits[i]) : f16_to_float(bits[i]);
    return out;
}

namespace {
// A Device::CUDA view of raw device memory.
Tensor device_view(void* data, DType dtype, int64_t n, const char* name) {
    Tensor t(data, dtype, {n}, name);
    t.device = Device::CUDA;
    return t;
}
}  // namespace

// ---- the model ---------------------------------------------------------------------------------------------

// The tracer's side of a pass (forward or backward): each op's outputs get consecutive slots in one
// device buffer of TensorStatsRecord; tensors wait in `pending` until a flush reduces them in one
// batched call. An op about to write a tensor that is still pending flushes first, so a gradient that
// several ops accumulate into is measured after each write, as the CPU tracer measures it.
struct TracePass {
    struct Op {
        std::string op;
        std::vector<const Tensor*> outputs, inputs;
        size_t first_slot = 0;
    };
    std::vector<Op> ops;
    std::vector<Tensor> pending;
    std::vector<const Tensor*> pending_ptrs;
    size_t batch_start = 0, next_slot = 0;
};

// Per-op GPU time, on when REFTRAIN_CUDA_OP_TIMES is set: a pair of CUDA events around each op's
// launch (nothing is synchronised during the run), read when the model is destroyed and printed to
// stderr, largest total first. Ops are grouped by name and first output with the layer index
// replaced by N. The optimizer, clipping and the loss scaler are outside the ops: a step's time minus
// the table's total is theirs plus launch gaps. A profiling aid where Nsight Systems is not available.
struct OpTimes {
    struct Mark {
        std::string key;
        cudaEvent_t start = nullptr, stop = nullptr;
    };
    bool on = std::getenv("REFTRAIN_CUDA_OP_TIMES") != nullptr;
    std::vector<Mark> marks;

    static std::string key_of(std::string_view op, const Tensor* output) {
        std::string name = output != nullptr ? output->name : "";
        const size_t at = name.find("layers.");
        if (at != std::string::npos) {
            size_t end = at + 7;
            while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
            name = name.substr(0, at + 7) + "N" + name.substr(end);
        }
        return std::string(op) + " " + name;
    }
    void begin(std::string_view op, const Tensor* output, cudaStream_t stream) {
        Mark m{key_of(op, output)};
        REFTRAIN_CUDA_CHECK(cudaEventCreate(&m.start));
        REFTRAIN_CUDA_CHECK(cudaEventCreate(&m.stop));
        REFTRAIN_CUDA_CHECK(cudaEventRecord(m.start, stream));
        marks.push_back(std::move(m));
    }
    void end(cudaStream_t stream) { REFTRAIN_CUDA_CHECK(cudaEventRecord(marks.back().stop, stream)); }

    ~OpTimes() {
        if (marks.empty()) return;
        std::map<std::string, std::pair<double, int>> by_key;
        double total = 0.0;
        for (Mark& m : marks) {
            float ms = 0.0f;
            if (cudaEventSynchronize(m.stop) == cudaSuccess && cudaEventElapsedTime(&ms, m.start, m.stop) == cudaSuccess) {
                by_key[m.key].first += ms;
                by_key[m.key].second += 1;
                total += ms;
            }
            cudaEventDestroy(m.start);
            cudaEventDestroy(m.stop);
        }
        std::vector<std::pair<std::string, std::pair<double, int>>> rows(by_key.begin(), by_key.end());
        std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
        std::fprintf(stderr, "op times (REFTRAIN_CUDA_OP_TIMES): %.1f ms in %zu op launches\n", total, marks.size());
        for (const auto& [key, value] : rows) {
            std::fprintf(stderr, "  %9.2f ms %5.1f%% %6d calls  %s\n", value.first, 100.0 * value.first / total, value.second,
                         key.c_str());
        }
    }
};

struct CudaTransformer::Impl {
    DType act_dtype = DType::F32;                  // BF16 for native bf16, else F32
    DeviceArena compute{"compute weights"};        // BF16 copy (bf16) or fp16-rounded F32 copy (fp16)
    DeviceArena rope{"rope tables"};
    DeviceArena io{"token ids"};                   // input_ids, targets (N) I64
    DeviceArena loss_f32{"fp32 loss buffers"};     // bf16 only: "logits.f32", "grad:logits.f32"
    cuda::CrossEntropyDeviceResult* ce_result = nullptr;
    std::vector<DecoderLayer> layers;
    bool have_targets = false;

    OpTimes op_times;

    // tracer
    TracePass pass;
    cuda::TensorStatsRecord* stats_device = nullptr;
    cuda::TensorStatsRecord* stats_host = nullptr;  // pinned
    size_t stats_capacity = 0;

    ~Impl() {
        if (ce_result != nullptr) cudaFree(ce_result);
        if (stats_device != nullptr) cudaFree(stats_device);
        if (stats_host != nullptr) cudaFreeHost(stats_host);
    }
};

CudaTransformer::~CudaTransformer() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

CudaTransformer::CudaTransformer(const ModelConfig& config, int64_t batch_size, int64_t seq_len,
                                 CudaModelOptions options)
    : config_(config), B_(batch_size), T_(seq_len), options_(options), impl_(std::make_unique<Impl>()) {
    config_.validate("model config");
    const DType p = options_.precision;
    check(p == DType::F32 || p == DType::BF16 || p == DType::F16, "CudaTransformer: precision ", dtype_name(p),
          " is not one of F32, BF16, F16");
    check(B_ >= 1 && T_ >= 1, "CudaTransformer: batch size ", B_, " and sequence length ", T_, " must be >= 1");
    check(T_ <= config_.max_position_embeddings, "CudaTransformer: sequence length ", T_,
          " exceeds max_position_embeddings = ", config_.max_position_embeddings);
    check(cuda::device_count() > 0, "CudaTransformer: no CUDA device is available");
    REFTRAIN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    Impl& m = *impl_;
    m.act_dtype = p == DType::BF16 ? DType::BF16 : DType::F32;

    const ModelConfig& c = config_;
    const int64_t B = B_, T = T_, N = B * T, V = c.vocab_size, D = c.head_dim;
    const DType A = m.act_dtype;

    // Parameters, gradients (and the compute copy), then the activations: model/layout.h's lists, the
    // CPU model's names and order. Activations in the compute dtype, saved statistics F32.
    for (const ModelTensor& t : parameter_tensors(c)) {
        params_.add(t.name, DType::F32, t.shape);
        grads_.add("grad:" + t.name, DType::F32, t.shape);
        if (p == DType::BF16) m.compute.add(t.name, DType::BF16, t.shape);
        if (p == DType::F16) m.compute.add(t.name, DType::F32, t.shape);
    }
    for (const ModelTensor& t : activation_tensors(c, B, T, AttentionSaves::log_sum_exp)) {
        const bool with_grad = t.kind == ModelTensor::Kind::activation;
        acts_.add(t.name, with_grad ? A : DType::F32, t.shape);
        if (with_grad) act_grads_.add("grad:" + t.name, A, t.shape);
    }
    if (A == DType::BF16) {
        m.loss_f32.add("logits.f32", DType::F32, {N, V});
        m.loss_f32.add("grad:logits.f32", DType::F32, {N, V});
    }
    m.rope.add("rope.cos", A, {T, D});
    m.rope.add("rope.sin", A, {T, D});
    m.io.add("input_ids", DType::I64, {N});
    m.io.add("targets", DType::I64, {N});

    params_.allocate();
    grads_.allocate();
    acts_.allocate();
    act_grads_.allocate();
    if (m.compute.size() > 0) m.compute.allocate();
    if (m.loss_f32.size() > 0) m.loss_f32.allocate();
    m.rope.allocate();
    m.io.allocate();
    REFTRAIN_CUDA_CHECK(cudaMalloc(&m.ce_result, sizeof(cuda::CrossEntropyDeviceResult)));

    // RoPE tables: the CPU's fp32 tables, rounded to bf16 for a bf16 model (as HF's rotary embedding
    // casts cos/sin to the activations' dtype).
    std::vector<float> cos(static_cast<size_t>(T * D)), sin(cos.size());
    cpu::rope_tables(Tensor(cos.data(), DType::F32, {T, D}, "rope.cos"), Tensor(sin.data(), DType::F32, {T, D}, "rope.sin"),
                     c.rope_theta, c.rope_scaling, c.exact_rope_angles);
    auto upload_table = [&](const std::vector<float>& host, Tensor& dst) {
        if (A == DType::F32) {
            REFTRAIN_CUDA_CHECK(cudaMemcpy(dst.data, host.data(), dst.nbytes(), cudaMemcpyHostToDevice));
            return;
        }
        std::vector<uint16_t> bits(host.size());
        for (size_t i = 0; i < host.size(); ++i) bits[i] = float_to_bf16(host[i]);
        REFTRAIN_CUDA_CHECK(cudaMemcpy(dst.data, bits.data(), dst.nbytes(), cudaMemcpyHostToDevice));
    };
    upload_table(cos, m.rope.get("rope.cos"));
    upload_table(sin, m.rope.get("rope.sin"));

    m.layers = resolve_decoder_layers(
        c, AttentionSaves::log_sum_exp, [&](const std::string& n) { return &params_.get(n); },
        [&](const std::string& n) { return &acts_.get(n); });
}

int64_t CudaTransformer::num_parameters() const {
    int64_t n = 0;
    for (const Tensor& t : params_.tensors()) n += t.numel();
    return n;
}

// ---- weights ------------------------------------------------------------------------------------------------

void CudaTransformer::load_from(const Transformer& cpu) {
    check(cpu.dtype() == DType::F32, "CudaTransformer::load_from: the CPU model must be F32, it is ",
          dtype_name(cpu.dtype()));
    check(cpu.params().size() == params_.size(), "CudaTransformer::load_from: the CPU model has ",
          cpu.params().size(), " parameters, this model ", params_.size(), " (different configs)");
    for (const Tensor& t : params_.tensors()) {
        const Tensor& h = cpu.params().get(t.name);
        check(h.shape == t.shape && h.ndim == t.ndim, "CudaTransformer::load_from: '", t.name, "' is ",
              h.shape_str(), " on the CPU and ", t.shape_str(), " here");
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(t.data, h.data, t.nbytes(), cudaMemcpyHostToDevice, stream_));
    }
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaTransformer::store_to(Transformer& cpu) const {
    check(cpu.dtype() == DType::F32, "CudaTransformer::store_to: the CPU model must be F32, it is ",
          dtype_name(cpu.dtype()));
    for (const Tensor& t : params_.tensors()) {
        Tensor& h = cpu.params().get(t.name);
        check(h.shape == t.shape && h.ndim == t.ndim, "CudaTransformer::store_to: '", t.name, "' is ",
              h.shape_str(), " on the CPU and ", t.shape_str(), " here");
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(h.data, t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_));
    }
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaTransformer::init_weights(uint64_t seed) {
    Transformer host(config_, 1, 1);  // the CPU init draws per tensor name: B and T do not matter
    host.init_weights(seed);
    load_from(host);
}

void CudaTransformer::zero_grad() { grads_.zero(stream_); }

// ---- tracer plumbing ------------------------------------------------------------------------------------------

void CudaTransformer::set_tracer(FrameTracer* tracer) {
    tracer_ = tracer;
    Impl& m = *impl_;
    if (tracer_ == nullptr || m.stats_device != nullptr) return;
    // Slots for the largest pass: every activation, every activation gradient written up to 3 times,
    // every parameter gradient, and every parameter (the optimizer's record).
    m.stats_capacity = acts_.size() + 3 * act_grads_.size() + 2 * params_.size() + 64;
    REFTRAIN_CUDA_CHECK(cudaMalloc(&m.stats_device, m.stats_capacity * sizeof(cuda::TensorStatsRecord)));
    REFTRAIN_CUDA_CHECK(cudaMallocHost(&m.stats_host, m.stats_capacity * sizeof(cuda::TensorStatsRecord)));
}

namespace {

bool tracing(FrameTracer* tracer) { return tracer != nullptr && tracer->enabled(); }

void flush(TracePass& pass, cuda::TensorStatsRecord* stats_device, cudaStream_t stream) {
    if (pass.pending.empty()) return;
    cuda::tensor_stats_batched(pass.pending, stats_device + pass.batch_start, nullptr, stream);
    pass.batch_start = pass.next_slot;
    pass.pending.clear();
    pass.pending_ptrs.clear();
}

// A host copy of a device tensor under the same name, for the tracer's dump on a trip.
struct HostCopy {
    std::vector<float> f32;
    std::vector<int64_t> i64;
    Tensor view;
};

std::unique_ptr<HostCopy> host_copy(const Tensor& t, cudaStream_t stream) {
    auto h = std::make_unique<HostCopy>();
    std::vector<int64_t> dims(t.shape.begin(), t.shape.begin() + t.ndim);
    if (t.dtype == DType::I64) {
        h->i64.resize(static_cast<size_t>(t.numel()));
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(h->i64.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream));
        REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
        h->view = Tensor(h->i64.data(), DType::I64, dims, t.name);
    } else {
        h->f32 = download_f32(t, stream);
        h->view = Tensor(h->f32.data(), DType::F32, dims, t.name);
    }
    return h;
}

}  // namespace

// Runs one op: flushes the tracer's pending batch if the op is about to overwrite a tensor still in it,
// launches, rounds the `rounded` outputs for fp16 emulation, and queues all outputs for statistics.
template <class Launch>
void run_op(CudaTransformer& model, TracePass& pass, OpTimes& times, cuda::TensorStatsRecord* stats_device,
            size_t capacity, DType precision, std::string_view op, std::initializer_list<const Tensor*> rounded,
            std::initializer_list<const Tensor*> exact, std::initializer_list<const Tensor*> inputs,
            Launch&& launch) {
    const bool trace = tracing(model.tracer());
    if (trace) {
        bool overlap = false;
        for (const Tensor* t : rounded) overlap |= std::find(pass.pending_ptrs.begin(), pass.pending_ptrs.end(), t) != pass.pending_ptrs.end();
        for (const Tensor* t : exact) overlap |= std::find(pass.pending_ptrs.begin(), pass.pending_ptrs.end(), t) != pass.pending_ptrs.end();
        if (overlap) {
            if (times.on) times.begin("tracer statistics", nullptr, model.stream());
            flush(pass, stats_device, model.stream());
            if (times.on) times.end(model.stream());
        }
    }
    if (times.on) times.begin(op, rounded.size() > 0 ? *rounded.begin() : exact.size() > 0 ? *exact.begin() : nullptr, model.stream());
    launch();
    if (times.on) times.end(model.stream());
    if (precision == DType::F16) {
        for (const Tensor* t : rounded) cuda::round_to_precision(*t, DType::F16, model.stream());
    }
    if (!trace) return;
    TracePass::Op record{std::string(op), {}, {}, pass.next_slot};
    auto queue = [&](const Tensor* t) {
        if (t == nullptr || t->data == nullptr) return;
        check(pass.next_slot < capacity, "CudaTransformer: tracer slots exhausted (", capacity, ")");
        record.outputs.push_back(t);
        pass.pending.push_back(*t);
        pass.pending_ptrs.push_back(t);
        ++pass.next_slot;
    };
    for (const Tensor* t : rounded) queue(t);
    for (const Tensor* t : exact) queue(t);
    for (const Tensor* t : inputs) record.inputs.push_back(t);
    pass.ops.push_back(std::move(record));
}

// Ends a pass: the last batch, ONE copy of all records to pinned memory, one synchronisation, then the
// records go to the tracer in execution order (the first non-finite one as a real record() of host
// copies, which trips the tracer and dumps).
static void end_trace_pass(FrameTracer* tracer, TracePass& pass, cuda::TensorStatsRecord* stats_device,
                           cuda::TensorStatsRecord* stats_host, cudaStream_t stream) {
    flush(pass, stats_device, stream);
    if (pass.next_slot > 0) {
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(stats_host, stats_device, pass.next_slot * sizeof(cuda::TensorStatsRecord),
                                            cudaMemcpyDeviceToHost, stream));
    }
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (const TracePass::Op& op : pass.ops) {
        bool handed = false;
        for (size_t j = 0; j < op.outputs.size() && !handed; ++j) {
            const cuda::TensorStatsRecord& r = stats_host[op.first_slot + j];
            if (r.nonfinite > 0 && !tracer->tripped()) {
                // Statistics of the outputs before this one are already in; hand the rest of the op over
                // as host copies so the tracer can name, dump and print it.
                std::vector<std::unique_ptr<HostCopy>> copies;
                std::vector<const Tensor*> outs, ins;
                for (size_t k = j; k < op.outputs.size(); ++k) {
                    copies.push_back(host_copy(*op.outputs[k], stream));
                    outs.push_back(&copies.back()->view);
                }
                for (const Tensor* t : op.inputs) {
                    if (t == nullptr || t->data == nullptr) continue;
                    copies.push_back(host_copy(*t, stream));
                    ins.push_back(&copies.back()->view);
                }
                tracer->record(op.op, std::span<const Tensor* const>(outs), std::span<const Tensor* const>(ins));
                handed = true;
                break;
            }
            tracer->record_stats(op.op, op.outputs[j]->name, TensorStats{r.abs_min, r.abs_max, r.rms, r.nonfinite});
        }
    }
    pass = TracePass{};
}

// ---- forward -----------------------------------------------------------------------------------------------------

ForwardResult CudaTransformer::forward(const Tensor& input_ids, const Tensor& targets) {
    Impl& m = *impl_;
    const ModelConfig& c = config_;
    const int64_t N = B_ * T_, d = c.hidden_size, V = c.vocab_size, Hq = c.num_attention_heads;
    const int64_t Hkv = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    const DType prec = options_.precision;
    cudaStream_t s = stream_;
    expect_shape(input_ids, {B_, T_}, "CudaTransformer::forward", "input_ids");
    expect_dtype(input_ids, DType::I64, "CudaTransformer::forward", "input_ids");
    check(input_ids.device == Device::CPU, "CudaTransformer::forward: input_ids must be host memory");
    Tensor& ids = m.io.get("input_ids");
    Tensor& tgt = m.io.get("targets");
    REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(ids.data, input_ids.data, ids.nbytes(), cudaMemcpyHostToDevice, s));
    m.have_targets = targets.data != nullptr;
    if (m.have_targets) {
        expect_shape(targets, {B_, T_}, "CudaTransformer::forward", "targets");
        expect_dtype(targets, DType::I64, "CudaTransformer::forward", "targets");
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(tgt.data, targets.data, tgt.nbytes(), cudaMemcpyHostToDevice, s));
    }
    // The compute copy of the weights: one cast (bf16) or one copy + round (fp16) over the whole block.
    if (prec == DType::BF16) {
        const int64_t n = static_cast<int64_t>(params_.nbytes() / 4);
        cuda::cast_f32_to_bf16(device_view(m.compute.data(), DType::BF16, n, "compute weights"),
                               device_view(params_.data(), DType::F32, n, "parameters"), s);
    } else if (prec == DType::F16) {
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(m.compute.data(), params_.data(), params_.nbytes(), cudaMemcpyDeviceToDevice, s));
        const int64_t n = static_cast<int64_t>(params_.nbytes() / 4);
        cuda::round_to_precision(device_view(m.compute.data(), DType::F32, n, "compute weights"), DType::F16, s);
    }
    auto W = [&](const Tensor* p) -> const Tensor& { return prec == DType::F32 ? *p : m.compute.get(p->name); };
    auto op = [&](std::string_view name, std::initializer_list<const Tensor*> rounded,
                  std::initializer_list<const Tensor*> exact, std::initializer_list<const Tensor*> inputs,
                  auto&& launch) {
        run_op(*this, m.pass, m.op_times, m.stats_device, m.stats_capacity, prec, name, rounded, exact, inputs, launch);
    };
    const Tensor& cos = m.rope.get("rope.cos");
    const Tensor& sin = m.rope.get("rope.sin");

    Tensor& embedded = acts_.get("model.embed_tokens.out");
    const Tensor& embed_weight = W(&params_.get("model.embed_tokens.weight"));
    op("embedding_forward", {&embedded}, {}, {&ids, &embed_weight},
       [&] { cuda::embedding_forward(embedded.reshaped({N, d}), ids, embed_weight, s); });
    for (DecoderLayer& l : m.layers) {
        const Tensor& ln1_weight = W(l.input_layernorm);
        op("rmsnorm_forward", {l.ln1_out}, {l.ln1_rstd}, {l.input, &ln1_weight}, [&] {
            cuda::rmsnorm_forward(l.ln1_out->reshaped({N, d}), l.ln1_rstd->reshaped({N}), l.input->reshaped({N, d}),
                                  ln1_weight, c.rms_norm_eps, s);
        });
        const Tensor &wq = W(l.q_proj), &wk = W(l.k_proj), &wv = W(l.v_proj), &wo = W(l.o_proj);
        op("linear_forward", {l.q}, {}, {l.ln1_out, &wq},
           [&] { cuda::linear_forward(l.q->reshaped({N, Hq * D}), l.ln1_out->reshaped({N, d}), wq, s); });
        op("linear_forward", {l.k}, {}, {l.ln1_out, &wk},
           [&] { cuda::linear_forward(l.k->reshaped({N, Hkv * D}), l.ln1_out->reshaped({N, d}), wk, s); });
        op("linear_forward", {l.v}, {}, {l.ln1_out, &wv},
           [&] { cuda::linear_forward(l.v->reshaped({N, Hkv * D}), l.ln1_out->reshaped({N, d}), wv, s); });
        const Tensor* q = l.q;
        const Tensor* k = l.k;
        if (c.qk_norm) {
            const Tensor &q_norm = W(l.q_norm), &k_norm = W(l.k_norm);
            op("rmsnorm_forward", {l.q_normed}, {l.q_rstd}, {l.q, &q_norm}, [&] {
                cuda::rmsnorm_forward(l.q_normed->reshaped({N * Hq, D}), l.q_rstd->reshaped({N * Hq}),
                                      l.q->reshaped({N * Hq, D}), q_norm, c.rms_norm_eps, s);
            });
            op("rmsnorm_forward", {l.k_normed}, {l.k_rstd}, {l.k, &k_norm}, [&] {
                cuda::rmsnorm_forward(l.k_normed->reshaped({N * Hkv, D}), l.k_rstd->reshaped({N * Hkv}),
                                      l.k->reshaped({N * Hkv, D}), k_norm, c.rms_norm_eps, s);
            });
            q = l.q_normed;
            k = l.k_normed;
        }
        op("rope_forward", {l.q_rotary}, {}, {q}, [&] { cuda::rope_forward(*l.q_rotary, *q, cos, sin, s); });
        op("rope_forward", {l.k_rotary}, {}, {k}, [&] { cuda::rope_forward(*l.k_rotary, *k, cos, sin, s); });
        op("attention_forward", {l.attn_out}, {l.lse}, {l.q_rotary, l.k_rotary, l.v}, [&] {
            cuda::attention_forward(l.attn_out->reshaped({B_, T_, Hq, D}), *l.lse, *l.q_rotary, *l.k_rotary, *l.v, s);
        });
        op("linear_forward", {l.o_out}, {}, {l.attn_out, &wo},
           [&] { cuda::linear_forward(l.o_out->reshaped({N, d}), l.attn_out->reshaped({N, Hq * D}), wo, s); });
        op("residual_forward", {l.attn_residual}, {}, {l.input, l.o_out},
           [&] { cuda::residual_forward(*l.attn_residual, *l.input, *l.o_out, s); });
        const Tensor& ln2_weight = W(l.post_attention_layernorm);
        op("rmsnorm_forward", {l.ln2_out}, {l.ln2_rstd}, {l.attn_residual, &ln2_weight}, [&] {
            cuda::rmsnorm_forward(l.ln2_out->reshaped({N, d}), l.ln2_rstd->reshaped({N}),
                                  l.attn_residual->reshaped({N, d}), ln2_weight, c.rms_norm_eps, s);
        });
        const Tensor &wgate = W(l.gate_proj), &wup = W(l.up_proj), &wdown = W(l.down_proj);
        op("linear_forward", {l.gate}, {}, {l.ln2_out, &wgate},
           [&] { cuda::linear_forward(l.gate->reshaped({N, F}), l.ln2_out->reshaped({N, d}), wgate, s); });
        op("linear_forward", {l.up}, {}, {l.ln2_out, &wup},
           [&] { cuda::linear_forward(l.up->reshaped({N, F}), l.ln2_out->reshaped({N, d}), wup, s); });
        op("swiglu_forward", {l.act}, {}, {l.gate, l.up}, [&] {
            cuda::swiglu_forward(l.act->reshaped({N, F}), l.gate->reshaped({N, F}), l.up->reshaped({N, F}), s);
        });
        op("linear_forward", {l.down}, {}, {l.act, &wdown},
           [&] { cuda::linear_forward(l.down->reshaped({N, d}), l.act->reshaped({N, F}), wdown, s); });
        op("residual_forward", {l.out}, {}, {l.attn_residual, l.down},
           [&] { cuda::residual_forward(*l.out, *l.attn_residual, *l.down, s); });
    }
    const Tensor& last = m.layers.empty() ? embedded : *m.layers.back().out;
    Tensor& normed = acts_.get("model.norm.out");
    Tensor& norm_rstd = acts_.get("model.norm.rstd");
    const Tensor& norm_weight = W(&params_.get("model.norm.weight"));
    op("rmsnorm_forward", {&normed}, {&norm_rstd}, {&last, &norm_weight}, [&] {
        cuda::rmsnorm_forward(normed.reshaped({N, d}), norm_rstd.reshaped({N}), last.reshaped({N, d}), norm_weight,
                              c.rms_norm_eps, s);
    });
    const Tensor& lm_head = W(&params_.get(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"));
    Tensor& logits = acts_.get("logits");
    op("linear_forward", {&logits}, {}, {&normed, &lm_head},
       [&] { cuda::linear_forward(logits.reshaped({N, V}), normed.reshaped({N, d}), lm_head, s); });

    ForwardResult result;
    if (m.have_targets) {
        Tensor& logsumexp = acts_.get("loss.logsumexp");
        // bf16: the cross-entropy reads the bf16 logits widened to fp32 (autocast's fp32 loss).
        const Tensor& logits_f32 = m.act_dtype == DType::BF16 ? m.loss_f32.get("logits.f32") : logits;
        if (m.act_dtype == DType::BF16) cuda::cast_bf16_to_f32(logits_f32.reshaped({N * V}), logits.reshaped({N * V}), s);
        op("cross_entropy_forward", {}, {&logsumexp}, {&logits, &tgt}, [&] {
            cuda::cross_entropy_forward(logsumexp.reshaped({N}), logits_f32.reshaped({N, V}), tgt, m.ce_result, s);
        });
    }
    if (tracing(tracer_)) end_trace_pass(tracer_, m.pass, m.stats_device, m.stats_host, s);
    if (m.have_targets) {
        const cpu::CrossEntropyResult ce = cuda::cross_entropy_result_to_host(m.ce_result, tgt, s);
        result = ForwardResult{ce.loss, ce.supervised_tokens, ce.no_supervised_tokens};
    } else {
        REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(s));
    }
    return result;
}

// ---- backward ----------------------------------------------------------------------------------------------------

void CudaTransformer::backward(double loss_weight) {
    Impl& m = *impl_;
    check(m.have_targets, "CudaTransformer::backward: the last forward() had no targets, so there is no loss");
    const ModelConfig& c = config_;
    const int64_t N = B_ * T_, d = c.hidden_size, V = c.vocab_size, Hq = c.num_attention_heads;
    const int64_t Hkv = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    const DType prec = options_.precision;
    cudaStream_t s = stream_;
    auto dA = [&](const Tensor* a) -> Tensor& { return act_grads_.get("grad:" + a->name); };
    // dA(x): the gradient of activation x; dW(w): the gradient of parameter (weight) w. Both "grad:" + name.
    auto dW = [&](const Tensor* p) -> Tensor& { return grads_.get("grad:" + p->name); };
    auto W = [&](const Tensor* p) -> const Tensor& { return prec == DType::F32 ? *p : m.compute.get(p->name); };
    auto op = [&](std::string_view name, std::initializer_list<const Tensor*> rounded,
                  std::initializer_list<const Tensor*> exact, std::initializer_list<const Tensor*> inputs,
                  auto&& launch) {
        run_op(*this, m.pass, m.op_times, m.stats_device, m.stats_capacity, prec, name, rounded, exact, inputs, launch);
    };
    const Tensor& ids = m.io.get("input_ids");
    const Tensor& tgt = m.io.get("targets");
    const Tensor& cos = m.rope.get("rope.cos");
    const Tensor& sin = m.rope.get("rope.sin");

    act_grads_.zero(s);
    Tensor& logits = acts_.get("logits");
    Tensor& logsumexp = acts_.get("loss.logsumexp");
    if (m.act_dtype == DType::BF16) {
        // fp32 gradient of the fp32 logits, rounded to bf16 as it enters the lm_head matmul.
        const Tensor& logits_f32 = m.loss_f32.get("logits.f32");
        const Tensor& dlogits_f32 = m.loss_f32.get("grad:logits.f32");
        REFTRAIN_CUDA_CHECK(cudaMemsetAsync(dlogits_f32.data, 0, dlogits_f32.nbytes(), s));
        op("cross_entropy_backward", {&dA(&logits)}, {}, {&logits, &logsumexp, &tgt}, [&] {
            cuda::cross_entropy_backward(dlogits_f32.reshaped({N, V}), logits_f32.reshaped({N, V}),
                                         logsumexp.reshaped({N}), tgt, m.ce_result, loss_weight, s);
            cuda::cast_f32_to_bf16(dA(&logits).reshaped({N * V}), dlogits_f32.reshaped({N * V}), s);
        });
    } else {
        op("cross_entropy_backward", {&dA(&logits)}, {}, {&logits, &logsumexp, &tgt}, [&] {
            cuda::cross_entropy_backward(dA(&logits).reshaped({N, V}), logits.reshaped({N, V}), logsumexp.reshaped({N}),
                                         tgt, m.ce_result, loss_weight, s);
        });
    }

    Tensor& normed = acts_.get("model.norm.out");
    const Tensor* lm_head_param = &params_.get(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    const Tensor& lm_head = W(lm_head_param);
    op("linear_backward", {&dA(&normed)}, {&dW(lm_head_param)}, {&dA(&logits), &normed, &lm_head}, [&] {
        cuda::linear_backward(dA(&normed).reshaped({N, d}), dW(lm_head_param), dA(&logits).reshaped({N, V}),
                              normed.reshaped({N, d}), lm_head, s);
    });
    const Tensor* last = m.layers.empty() ? &acts_.get("model.embed_tokens.out") : m.layers.back().out;
    const Tensor* norm_param = &params_.get("model.norm.weight");
    const Tensor& norm_weight = W(norm_param);
    const Tensor& norm_rstd = acts_.get("model.norm.rstd");
    op("rmsnorm_backward", {&dA(last)}, {&dW(norm_param)}, {&dA(&normed), last, &norm_weight, &norm_rstd}, [&] {
        cuda::rmsnorm_backward(dA(last).reshaped({N, d}), dW(norm_param), dA(&normed).reshaped({N, d}),
                               last->reshaped({N, d}), norm_weight, norm_rstd.reshaped({N}), s);
    });

    for (auto it = m.layers.rbegin(); it != m.layers.rend(); ++it) {
        DecoderLayer& l = *it;
        const Tensor &wq = W(l.q_proj), &wk = W(l.k_proj), &wv = W(l.v_proj), &wo = W(l.o_proj);
        const Tensor &wgate = W(l.gate_proj), &wup = W(l.up_proj), &wdown = W(l.down_proj);
        const Tensor &ln1_weight = W(l.input_layernorm), &ln2_weight = W(l.post_attention_layernorm);
        op("residual_backward", {&dA(l.attn_residual), &dA(l.down)}, {}, {&dA(l.out)},
           [&] { cuda::residual_backward(dA(l.attn_residual), dA(l.down), dA(l.out), s); });
        op("linear_backward", {&dA(l.act)}, {&dW(l.down_proj)}, {&dA(l.down), l.act, &wdown}, [&] {
            cuda::linear_backward(dA(l.act).reshaped({N, F}), dW(l.down_proj), dA(l.down).reshaped({N, d}),
                                  l.act->reshaped({N, F}), wdown, s);
        });
        op("swiglu_backward", {&dA(l.gate), &dA(l.up)}, {}, {&dA(l.act), l.gate, l.up}, [&] {
            cuda::swiglu_backward(dA(l.gate).reshaped({N, F}), dA(l.up).reshaped({N, F}), dA(l.act).reshaped({N, F}),
                                  l.gate->reshaped({N, F}), l.up->reshaped({N, F}), s);
        });
        op("linear_backward", {&dA(l.ln2_out)}, {&dW(l.gate_proj)}, {&dA(l.gate), l.ln2_out, &wgate}, [&] {
            cuda::linear_backward(dA(l.ln2_out).reshaped({N, d}), dW(l.gate_proj), dA(l.gate).reshaped({N, F}),
                                  l.ln2_out->reshaped({N, d}), wgate, s);
        });
        op("linear_backward", {&dA(l.ln2_out)}, {&dW(l.up_proj)}, {&dA(l.up), l.ln2_out, &wup}, [&] {
            cuda::linear_backward(dA(l.ln2_out).reshaped({N, d}), dW(l.up_proj), dA(l.up).reshaped({N, F}),
                                  l.ln2_out->reshaped({N, d}), wup, s);
        });
        op("rmsnorm_backward", {&dA(l.attn_residual)}, {&dW(l.post_attention_layernorm)},
           {&dA(l.ln2_out), l.attn_residual, &ln2_weight, l.ln2_rstd}, [&] {
               cuda::rmsnorm_backward(dA(l.attn_residual).reshaped({N, d}), dW(l.post_attention_layernorm),
                                      dA(l.ln2_out).reshaped({N, d}), l.attn_residual->reshaped({N, d}), ln2_weight,
                                      l.ln2_rstd->reshaped({N}), s);
           });
        op("residual_backward", {&dA(l.input), &dA(l.o_out)}, {}, {&dA(l.attn_residual)},
           [&] { cuda::residual_backward(dA(l.input), dA(l.o_out), dA(l.attn_residual), s); });
        op("linear_backward", {&dA(l.attn_out)}, {&dW(l.o_proj)}, {&dA(l.o_out), l.attn_out, &wo}, [&] {
            cuda::linear_backward(dA(l.attn_out).reshaped({N, Hq * D}), dW(l.o_proj), dA(l.o_out).reshaped({N, d}),
                                  l.attn_out->reshaped({N, Hq * D}), wo, s);
        });
        op("attention_backward", {&dA(l.q_rotary), &dA(l.k_rotary), &dA(l.v)}, {},
           {&dA(l.attn_out), l.lse, l.q_rotary, l.k_rotary, l.v}, [&] {
               cuda::attention_backward(dA(l.q_rotary), dA(l.k_rotary), dA(l.v),
                                        dA(l.attn_out).reshaped({B_, T_, Hq, D}), l.attn_out->reshaped({B_, T_, Hq, D}),
                                        *l.lse, *l.q_rotary, *l.k_rotary, *l.v, s);
           });
        const Tensor* q = c.qk_norm ? l.q_normed : l.q;
        const Tensor* k = c.qk_norm ? l.k_normed : l.k;
        op("rope_backward", {&dA(q)}, {}, {&dA(l.q_rotary)}, [&] { cuda::rope_backward(dA(q), dA(l.q_rotary), cos, sin, s); });
        op("rope_backward", {&dA(k)}, {}, {&dA(l.k_rotary)}, [&] { cuda::rope_backward(dA(k), dA(l.k_rotary), cos, sin, s); });
        if (c.qk_norm) {
            const Tensor &q_norm = W(l.q_norm), &k_norm = W(l.k_norm);
            op("rmsnorm_backward", {&dA(l.q)}, {&dW(l.q_norm)}, {&dA(l.q_normed), l.q, &q_norm, l.q_rstd}, [&] {
                cuda::rmsnorm_backward(dA(l.q).reshaped({N * Hq, D}), dW(l.q_norm), dA(l.q_normed).reshaped({N * Hq, D}),
                                       l.q->reshaped({N * Hq, D}), q_norm, l.q_rstd->reshaped({N * Hq}), s);
            });
            op("rmsnorm_backward", {&dA(l.k)}, {&dW(l.k_norm)}, {&dA(l.k_normed), l.k, &k_norm, l.k_rstd}, [&] {
                cuda::rmsnorm_backward(dA(l.k).reshaped({N * Hkv, D}), dW(l.k_norm),
                                       dA(l.k_normed).reshaped({N * Hkv, D}), l.k->reshaped({N * Hkv, D}), k_norm,
                                       l.k_rstd->reshaped({N * Hkv}), s);
            });
        }
        op("linear_backward", {&dA(l.ln1_out)}, {&dW(l.q_proj)}, {&dA(l.q), l.ln1_out, &wq}, [&] {
            cuda::linear_backward(dA(l.ln1_out).reshaped({N, d}), dW(l.q_proj), dA(l.q).reshaped({N, Hq * D}),
                                  l.ln1_out->reshaped({N, d}), wq, s);
        });
        op("linear_backward", {&dA(l.ln1_out)}, {&dW(l.k_proj)}, {&dA(l.k), l.ln1_out, &wk}, [&] {
            cuda::linear_backward(dA(l.ln1_out).reshaped({N, d}), dW(l.k_proj), dA(l.k).reshaped({N, Hkv * D}),
                                  l.ln1_out->reshaped({N, d}), wk, s);
        });
        op("linear_backward", {&dA(l.ln1_out)}, {&dW(l.v_proj)}, {&dA(l.v), l.ln1_out, &wv}, [&] {
            cuda::linear_backward(dA(l.ln1_out).reshaped({N, d}), dW(l.v_proj), dA(l.v).reshaped({N, Hkv * D}),
                                  l.ln1_out->reshaped({N, d}), wv, s);
        });
        op("rmsnorm_backward", {&dA(l.input)}, {&dW(l.input_layernorm)}, {&dA(l.ln1_out), l.input, &ln1_weight, l.ln1_rstd},
           [&] {
               cuda::rmsnorm_backward(dA(l.input).reshaped({N, d}), dW(l.input_layernorm), dA(l.ln1_out).reshaped({N, d}),
                                      l.input->reshaped({N, d}), ln1_weight, l.ln1_rstd->reshaped({N}), s);
           });
    }
    Tensor& embedded = acts_.get("model.embed_tokens.out");
    const Tensor* embed_param = &params_.get("model.embed_tokens.weight");
    op("embedding_backward", {}, {&dW(embed_param)}, {&dA(&embedded), &ids},
       [&] { cuda::embedding_backward(dW(embed_param), dA(&embedded).reshaped({N, d}), ids, s); });
    if (tracing(tracer_)) end_trace_pass(tracer_, m.pass, m.stats_device, m.stats_host, s);
}

void CudaTransformer::trace_tensors(std::string_view op_name, const std::vector<Tensor>& tensors) {
    Impl& m = *impl_;
    if (!tracing(tracer_)) return;
    std::vector<const Tensor*> outputs;
    for (const Tensor& t : tensors) outputs.push_back(&t);
    check(outputs.size() <= m.stats_capacity, "CudaTransformer::trace_tensors: too many tensors");
    TracePass::Op record{std::string(op_name), outputs, {}, 0};
    for (const Tensor& t : tensors) {
        m.pass.pending.push_back(t);
        m.pass.pending_ptrs.push_back(&t);
        ++m.pass.next_slot;
    }
    m.pass.ops.push_back(std::move(record));
    end_trace_pass(tracer_, m.pass, m.stats_device, m.stats_host, stream_);
}

}  // namespace reftrain
