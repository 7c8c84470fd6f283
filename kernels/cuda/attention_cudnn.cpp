// kernels/cuda/attention_cudnn.cpp — the cuDNN backend of cuda::attention_forward/backward (BF16):
// cuDNN's fused flash attention (SDPA) through the cudnn-frontend C++ graph API.
//
// Compiled only when CMake finds the cudnn-frontend headers and libcudnn (REFTRAIN_HAVE_CUDNN_FRONTEND);
// the only file that includes the frontend. What is worth knowing:
// - Layout, no copies. Our (B, T, H, D) contiguous tensors are cuDNN's logical {B, H, T, D} with strides
//   {T*H*D, D, H*D, 1} (the "BSHD" layout of the frontend samples). lse (B, Hq, T) F32 is cuDNN's Stats
//   tensor {B, Hq, T, 1}, strides {Hq*T, T, 1, 1}.
// - Stats is the natural-log log-sum-exp of the scaled scores, max + ln(sum exp(S - max)): see
//   SDPA_attributes::set_stats_use_log2 in cudnn_frontend/graph_properties.h ("from cuDNN's natural-log
//   convention to base-2", off by default) and stats_ref = log(sum_exp) + max in the frontend's
//   test/python/sdpa/fp16_ref.py. That is the lse of kernels/cuda/ops.h, so the two backends' lse are
//   interchangeable.
// - Causal = set_causal_mask(true): top-left diagonal alignment, right bound 0, i.e. key s <= query t.
//   GQA = K and V with Hkv heads; cuDNN maps query head h to KV head h / (Hq / Hkv), as the CPU does.
// - Graphs are built once per (device, direction, B, T, Hq, Hkv, D, deterministic) and cached for the
//   life of the process; the cuDNN handle is created lazily, one per device, and bound to the call's
//   stream with cudnnSetStream before each execute. Both are deliberately never destroyed (destroying
//   cuDNN handles from static destructors races the CUDA runtime's own shutdown). A mutex guards the
//   caches and the set-stream + execute pair, so concurrent callers cannot swap each other's stream.
// - ADD convention: cuDNN overwrites dQ, dK, dV, so the backward writes them into stream-ordered
//   scratch (cudaMallocAsync) and adds them into dq, dk, dv with cuda::residual_backward (fp32 add, one
//   bf16 rounding). The gradient therefore takes two bf16 roundings (cuDNN's store, then the add's). A
//   fast path writing straight into dq/dk/dv would need the caller to promise zeroed gradients, which
//   the contract of ops.h does not provide; it is not implemented.
// - Determinism: in deterministic mode (cuda::deterministic()) the backward is built with
//   set_deterministic_algorithm(true), which asks cuDNN for a backward whose results repeat bitwise (the
//   default one sums dQ with atomics in no fixed order). tests/cuda/test_cuda_attention.cpp checks the
//   repetition. The forward has no such switch; its sums have a fixed order.
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"

namespace reftrain::cuda::detail {

namespace {

namespace fe = cudnn_frontend;

// Tensor uids of the graphs' variant packs.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDout, kDq, kDk, kDv };

enum class Direction { forward, backward };

struct Shape {
    int64_t B, T, Hq, Hkv, D;
};

// (device, direction, B, T, Hq, Hkv, D, deterministic)
using GraphKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

struct CudnnState {
    std::mutex mutex;
    std::map<int, cudnnHandle_t> handles;  // by device
    std::map<GraphKey, std::shared_ptr<fe::graph::Graph>> graphs;
};

CudnnState& state() {
    static CudnnState* s = new CudnnState;  // never destroyed, see the file comment
    return *s;
}

int current_device() {
    int device = 0;
    REFTRAIN_CUDA_CHECK(cudaGetDevice(&device));
    return device;
}

// The handle of the current device; the caller holds state().mutex.
cudnnHandle_t handle_for(int device) {
    auto& handles = state().handles;
    auto it = handles.find(device);
    if (it != handles.end()) return it->second;
    cudnnHandle_t handle = nullptr;
    REFTRAIN_CUDNN_CHECK(cudnnCreate(&handle));
    handles.emplace(device, handle);
    return handle;
}

// A (B, T, H, D) tensor as cuDNN's {B, H, T, D}.
fe::graph::Tensor_attributes bthd(const char* name, int64_t uid, const Shape& s, int64_t H) {
    return fe::graph::Tensor_attributes()
        .set_name(name)
        .set_uid(uid)
        .set_dim({s.B, H, s.T, s.D})
        .set_stride({s.T * H * s.D, s.D, H * s.D, 1});
}

void set_bthd(const std::shared_ptr<fe::graph::Tensor_attributes>& t, int64_t uid, const Shape& s, int64_t H) {
    t->set_output(true).set_uid(uid).set_dim({s.B, H, s.T, s.D}).set_stride({s.T * H * s.D, s.D, H * s.D, 1});
}

fe::graph::Tensor_attributes stats_tensor(const Shape& s) {
    return fe::graph::Tensor_attributes()
        .set_name("Stats")
        .set_uid(kStats)
        .set_dim({s.B, s.Hq, s.T, 1})
        .set_stride({s.Hq * s.T, s.T, 1, 1})
        .set_data_type(fe::DataType_t::FLOAT);
}

std::shared_ptr<fe::graph::Graph> new_graph(const char* name) {
    auto graph = std::make_shared<fe::graph::Graph>();
    graph->set_name(name)
        .set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return graph;
}

float attention_scale(const Shape& s) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D))); }

std::shared_ptr<fe::graph::Graph> build_forward(const Shape& s) {
    auto graph = new_graph("reftrain_attention_forward");
    auto Q = graph->tensor(bthd("Q", kQ, s, s.Hq));
    auto K = graph->tensor(bthd("K", kK, s, s.Hkv));
    auto V = graph->tensor(bthd("V", kV, s, s.Hkv));
    auto options = fe::graph::SDPA_attributes()
                       .set_name("sdpa_forward")
                       .set_generate_stats(true)
                       .set_causal_mask(true)
                       .set_attn_scale(attention_scale(s));
    auto [O, Stats] = graph->sdpa(Q, K, V, options);
    set_bthd(O, kO, s, s.Hq);
    Stats->set_output(true)
        .set_uid(kStats)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({s.B, s.Hq, s.T, 1})
        .set_stride({s.Hq * s.T, s.T, 1, 1});
    return graph;
}

std::shared_ptr<fe::graph::Graph> build_backward(const Shape& s, bool deterministic_algorithm) {
    auto graph = new_graph("reftrain_attention_backward");
    auto Q = graph->tensor(bthd("Q", kQ, s, s.Hq));
    auto K = graph->tensor(bthd("K", kK, s, s.Hkv));
    auto V = graph->tensor(bthd("V", kV, s, s.Hkv));
    auto O = graph->tensor(bthd("O", kO, s, s.Hq));
    auto dO = graph->tensor(bthd("dO", kDout, s, s.Hq));
    auto Stats = graph->tensor(stats_tensor(s));
    auto options = fe::graph::SDPA_backward_attributes()
                       .set_name("sdpa_backward")
                       .set_causal_mask(true)
                       .set_attn_scale(attention_scale(s))
                       .set_deterministic_algorithm(deterministic_algorithm);
    auto [dQ, dK, dV] = graph->sdpa_backward(Q, K, V, O, dO, Stats, options);
    set_bthd(dQ, kDq, s, s.Hq);
    set_bthd(dK, kDk, s, s.Hkv);
    set_bthd(dV, kDv, s, s.Hkv);
    return graph;
}

// The built graph for this call, from the cache or built now; the caller holds state().mutex.
const fe::graph::Graph& graph_for(Direction direction, const Shape& s, int device, cudnnHandle_t handle) {
    const bool deterministic_algorithm = direction == Direction::backward && deterministic();
    const GraphKey key{device, static_cast<int>(direction), s.B, s.T, s.Hq, s.Hkv, s.D, deterministic_algorithm};
    auto& graphs = state().graphs;
    auto it = graphs.find(key);
    if (it != graphs.end()) return *it->second;
    auto graph = direction == Direction::forward ? build_forward(s) : build_backward(s, deterministic_algorithm);
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph->validate());
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph->build_operation_graph(handle));
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph->create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}));
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph->check_support());
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph->build_plans());
    return *graphs.emplace(key, std::move(graph)).first->second;
}

// Stream-ordered device memory, freed on the same stream when it goes out of scope.
class AsyncBuffer {
public:
    AsyncBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
        if (bytes) REFTRAIN_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
    }
    AsyncBuffer(const AsyncBuffer&) = delete;
    AsyncBuffer& operator=(const AsyncBuffer&) = delete;
    ~AsyncBuffer() {
        if (ptr_) cudaFreeAsync(ptr_, stream_);  // no throw from a destructor
    }
    void* get() const { return ptr_; }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

// Runs the graph with the given tensors on `stream`, with workspace from the stream's pool. The caller
// holds state().mutex (the handle's stream is shared state).
void execute(const fe::graph::Graph& graph, cudnnHandle_t handle, std::unordered_map<int64_t, void*>& pack,
             cudaStream_t stream) {
    int64_t workspace_bytes = 0;
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph.get_workspace_size(workspace_bytes));
    AsyncBuffer workspace(static_cast<size_t>(workspace_bytes), stream);
    REFTRAIN_CUDNN_CHECK(cudnnSetStream(handle, stream));
    REFTRAIN_CUDNN_FRONTEND_CHECK(graph.execute(handle, pack, workspace.get()));
}

Shape shape_of(const Tensor& q, const Tensor& k) { return {q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)}; }

Tensor device_view(void* data, const Tensor& like, const char* name) {
    Tensor t(data, like.dtype, {like.numel() / like.dim(-1), like.dim(-1)}, name);
    t.device = Device::CUDA;
    return t;
}

Tensor rows_of(const Tensor& t) { return t.reshaped({t.numel() / t.dim(-1), t.dim(-1)}); }

}  // namespace

void cudnn_attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                             const Tensor& v, cudaStream_t stream) {
    const Shape s = shape_of(q, k);
    std::unordered_map<int64_t, void*> pack{{kQ, q.data}, {kK, k.data}, {kV, v.data}, {kO, out.data},
                                            {kStats, lse.data}};
    std::lock_guard<std::mutex> lock(state().mutex);
    const int device = current_device();
    const cudnnHandle_t handle = handle_for(device);
    execute(graph_for(Direction::forward, s, device, handle), handle, pack, stream);
}

void cudnn_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                              const Tensor& v, cudaStream_t stream) {
    const Shape s = shape_of(q, k);
    AsyncBuffer dq_new(dq.nbytes(), stream), dk_new(dk.nbytes(), stream), dv_new(dv.nbytes(), stream);
    std::unordered_map<int64_t, void*> pack{{kQ, q.data},        {kK, k.data},        {kV, v.data},
                                            {kO, out.data},      {kDout, dout.data},  {kStats, lse.data},
                                            {kDq, dq_new.get()}, {kDk, dk_new.get()}, {kDv, dv_new.get()}};
    {
        std::lock_guard<std::mutex> lock(state().mutex);
        const int device = current_device();
        const cudnnHandle_t handle = handle_for(device);
        execute(graph_for(Direction::backward, s, device, handle), handle, pack, stream);
    }
    // The ADD: dq += cuDNN's dQ, etc. (fp32 add, rounded once to bf16).
    residual_backward(rows_of(dq), Tensor(), device_view(dq_new.get(), dq, "cudnn dQ"), stream);
    residual_backward(rows_of(dk), Tensor(), device_view(dk_new.get(), dk, "cudnn dK"), stream);
    residual_backward(rows_of(dv), Tensor(), device_view(dv_new.get(), dv, "cudnn dV"), stream);
}

}  // namespace reftrain::cuda::detail
