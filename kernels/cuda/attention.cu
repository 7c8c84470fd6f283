// kernels/cuda/attention.cu — causal GQA attention forward and backward, the CUDA twin of
// kernels/cpu/attention.cpp, plus the choice between these kernels and cuDNN (attention_cudnn.cpp).
//
// Per batch row b and query head h (reading key/value head g = h / (Hq / Hkv)), scale = 1/sqrt(D):
//   forward   S[t, s] = scale q[t].k[s] (s <= t);  lse[t] = log sum_{s<=t} exp(S[t, s])
//             out[t]  = sum_{s<=t} exp(S[t, s] - lse[t]) v[s]
//   backward  P[t, s] = exp(S[t, s] - lse[t])            (recomputed: no (T, T) tensor is stored)
//             dP[t, s] = dout[t].v[s];  R[t] = sum_{s<=t} P[t, s] dP[t, s]   (the CPU's row sum)
//             dS[t, s] = P[t, s] (dP[t, s] - R[t])
//             dq[t] += scale sum_{s<=t} dS[t, s] k[s]
//             dk[s] += scale sum_{h in group(g)} sum_{t>=s} dS[t, s] q[t]
//             dv[s] += sum_{h in group(g)} sum_{t>=s} P[t, s] dout[t]
//
// Work split (flash-attention style, fp32 throughout, shared-memory tiles of 32 keys or queries):
// - forward: one block of kWarps warps per (16 query rows, h, b); each warp owns kRowsPerWarp rows.
//   The block walks key tiles s0 = 0, 32, ... in order; lane j scores key s0 + j against the warp's
//   rows, and an online softmax (running max m, running sum l, rescaled accumulator) folds the tile in.
//   Each lane owns output dims d = lane + 32 c, c < 4, which is why head_dim <= 128.
// - backward: a query-side kernel walks the keys twice, first for R (written to scratch), then for dq;
//   a key-side kernel then forms dk and dv: one block per (16 key rows, g, b), walking the query heads
//   of the group in order and, for each, the query tiles t0 = s0, s0 + 32, ... in order.
//   R is summed exactly rather than taken as dout.out (flash attention's shortcut, which cuDNN uses):
//   with a BF16 out that shortcut's rounding, amplified by the cancellation in dP - R, costs up to ~15%
//   of small gradient elements; the extra pass should cost about a third more backward time (estimated,
//   not measured). So the kernels do not read `out`.
// Every sum has an order fixed by the launch shape (lane loops in index order, warp butterflies, tiles
// in order) and no atomics are used, so results are bitwise repeatable. They are not the CPU's
// order: the F32 path agrees with cpu::attention_forward/backward within the bounds stated in
// tests/cuda/test_cuda_attention.cpp (out and gradients 1e-4, lse 2e-5, at a 1% floor), not bitwise.
#include <cmath>

#include "kernels/cuda/attention_cudnn.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace reftrain::cuda {

namespace {

constexpr int kMaxHeadDim = 128;
constexpr int kDimsPerLane = kMaxHeadDim / 32;       // output dims a lane owns
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 4;                      // query rows (forward, dq) or key rows (dk/dv)
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp; // 16
constexpr int kTile = 32;                            // keys (forward, dq) or queries (dk/dv) per tile
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

// Offset of element (b, t, head, 0) in a (B, T, H, D) tensor.
__device__ __forceinline__ int64_t row_offset(int b, int t, int head, int T, int H, int D) {
    return ((static_cast<int64_t>(b) * T + t) * H + head) * D;
}

// Copies `rows` rows of head `head` starting at position t0 into shared memory (row stride `ld`),
// widened to fp32; rows past T are zero, so masked products stay finite.
template <class T>
__device__ void load_rows(float* dst, int ld, const T* src, int b, int t0, int rows, int head, int Tn, int H, int D) {
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D, d = i % D, t = t0 + r;
        dst[r * ld + d] = t < Tn ? load(src, row_offset(b, t, head, Tn, H, D) + d) : 0.0f;
    }
}

// Matches cpu::attention_forward (attention.cpp forward_impl), saving lse instead of the probabilities.
// Grid (ceil(T / 16), Hq, B). Shared: q rows (16, D), k tile (32, D + 1), v tile (32, D).
template <class T>
__global__ void __launch_bounds__(kThreads)
attention_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, int Tn, int Hq, int Hkv, int D,
                         float scale) {
    extern __shared__ float shared[];
    const int ld = D + 1;  // odd stride: lane j reading row j hits bank (j * ld + d) % 32, all distinct
    float* q_rows = shared;
    float* k_tile = q_rows + kRowsPerBlock * D;
    float* v_tile = k_tile + kTile * ld;
    const int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * kRowsPerBlock;
    const int g = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int first_row = t0 + warp * kRowsPerWarp;  // this warp's rows: first_row + r, r < kRowsPerWarp
    const int last_block_row = min(t0 + kRowsPerBlock, Tn) - 1;

    load_rows(q_rows, D, q, b, t0, kRowsPerBlock, h, Tn, Hq, D);
    float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) acc[r][c] = 0.0f;
    }

    for (int s0 = 0; s0 <= last_block_row; s0 += kTile) {
        __syncthreads();  // the previous tile is no longer read
        load_rows(k_tile, ld, k, b, s0, kTile, g, Tn, Hkv, D);
        load_rows(v_tile, D, v, b, s0, kTile, g, Tn, Hkv, D);
        __syncthreads();
        if (first_row >= Tn || s0 > first_row + kRowsPerWarp - 1) continue;  // warp-uniform: nothing visible

        const int s = s0 + lane;
        float score[kRowsPerWarp] = {};
        for (int d = 0; d < D; ++d) {
            const float kd = k_tile[lane * ld + d];
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; ++r) score[r] += q_rows[(warp * kRowsPerWarp + r) * D + d] * kd;
        }
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
            const int t = first_row + r;
            if (t >= Tn || s0 > t) continue;  // warp-uniform: the row is past T or sees no key of this tile
            const bool visible = s <= t;
            const float scaled = visible ? scale * score[r] : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(scaled));  // finite: key s0 <= t is visible
            const float p = visible ? expf(scaled - m_new) : 0.0f;
            const float correction = expf(m[r] - m_new);  // 0 on the row's first tile (m = -inf)
            l[r] = l[r] * correction + warp_sum(p);
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < kDimsPerLane; ++c) acc[r][c] *= correction;
            for (int j = 0; j < kTile; ++j) {
                const float pj = __shfl_sync(kFullMask, p, j);
#pragma unroll
                for (int c = 0; c < kDimsPerLane; ++c) {
                    const int d = lane + 32 * c;
                    if (d < D) acc[r][c] += pj * v_tile[j * D + d];
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int t = first_row + r;
        if (t >= Tn) continue;
        const int64_t base = row_offset(b, t, h, Tn, Hq, D);
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) {
            const int d = lane + 32 * c;
            if (d < D) store(out, base + d, acc[r][c] / l[r]);
        }
        if (lane == 0) lse[(static_cast<int64_t>(b) * Hq + h) * Tn + t] = m[r] + logf(l[r]);
    }
}

// The dq half of cpu::attention_backward, and R for the dk/dv kernel. Grid (ceil(T / 16), Hq, B).
// Shared: q rows and dout rows (16, D) each, k and v tiles (32, D + 1) each.
// Two passes over the keys: the first sums R[t] = sum_s P[t, s] dP[t, s] (the CPU's row sum, in fp32)
// and writes it to row_sum; the second forms dS and accumulates dq. Flash attention takes
// R = dout.out instead, which saves the first pass but inherits out's rounding: with a BF16 out the
// cancellation in dP - R then costs up to ~10% of a small gradient element (cuDNN does that).
template <class T>
__global__ void __launch_bounds__(kThreads)
attention_backward_dq_kernel(T* dq, float* row_sum, const T* dout, const float* lse, const T* q, const T* k,
                             const T* v, int Tn, int Hq, int Hkv, int D, float scale) {
    extern __shared__ float shared[];
    const int ld = D + 1;
    float* q_rows = shared;
    float* dout_rows = q_rows + kRowsPerBlock * D;
    float* k_tile = dout_rows + kRowsPerBlock * D;
    float* v_tile = k_tile + kTile * ld;
    const int b = blockIdx.z, h = blockIdx.y, t0 = blockIdx.x * kRowsPerBlock;
    const int g = h / (Hq / Hkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int first_row = t0 + warp * kRowsPerWarp;
    const int last_block_row = min(t0 + kRowsPerBlock, Tn) - 1;

    load_rows(q_rows, D, q, b, t0, kRowsPerBlock, h, Tn, Hq, D);
    load_rows(dout_rows, D, dout, b, t0, kRowsPerBlock, h, Tn, Hq, D);
    float row_lse[kRowsPerWarp], row_r[kRowsPerWarp], acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int t = first_row + r;
        row_lse[r] = t < Tn ? lse[(static_cast<int64_t>(b) * Hq + h) * Tn + t] : 0.0f;
        row_r[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) acc[r][c] = 0.0f;
    }

    for (int pass = 0; pass < 2; ++pass) {  // 0: R, 1: dq
        for (int s0 = 0; s0 <= last_block_row; s0 += kTile) {
            __syncthreads();
            load_rows(k_tile, ld, k, b, s0, kTile, g, Tn, Hkv, D);
            load_rows(v_tile, ld, v, b, s0, kTile, g, Tn, Hkv, D);
            __syncthreads();
            if (first_row >= Tn || s0 > first_row + kRowsPerWarp - 1) continue;  // warp-uniform

            const int s = s0 + lane;
            float score[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
            for (int d = 0; d < D; ++d) {
                const float kd = k_tile[lane * ld + d], vd = v_tile[lane * ld + d];
#pragma unroll
                for (int r = 0; r < kRowsPerWarp; ++r) {
                    score[r] += q_rows[(warp * kRowsPerWarp + r) * D + d] * kd;
                    dp[r] += dout_rows[(warp * kRowsPerWarp + r) * D + d] * vd;
                }
            }
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; ++r) {
                const int t = first_row + r;
                if (t >= Tn || s0 > t) continue;  // warp-uniform
                const float p = s <= t ? expf(scale * score[r] - row_lse[r]) : 0.0f;
                if (pass == 0) {
                    row_r[r] += warp_sum(p * dp[r]);
                    continue;
                }
                const float ds = p * (dp[r] - row_r[r]);
                for (int j = 0; j < kTile; ++j) {
                    const float dsj = __shfl_sync(kFullMask, ds, j);
#pragma unroll
                    for (int c = 0; c < kDimsPerLane; ++c) {
                        const int d = lane + 32 * c;
                        if (d < D) acc[r][c] += dsj * k_tile[j * ld + d];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int t = first_row + r;
        if (t >= Tn) continue;
        if (lane == 0) row_sum[(static_cast<int64_t>(b) * Hq + h) * Tn + t] = row_r[r];
        const int64_t base = row_offset(b, t, h, Tn, Hq, D);
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) {
            const int d = lane + 32 * c;
            if (d < D) store(dq, base + d, load(dq, base + d) + scale * acc[r][c]);
        }
    }
}

// The dk/dv half of cpu::attention_backward. Grid (ceil(T / 16), Hkv, B): each block owns 16 key rows
// of KV head g and is the only writer of their dk and dv. Shared: k and v rows (16, D) each, q and
// dout tiles (32, D + 1) each, lse and R (from the dq kernel) of the tile's 32 queries.
template <class T>
__global__ void __launch_bounds__(kThreads)
attention_backward_dkdv_kernel(T* dk, T* dv, const T* dout, const float* lse, const float* row_sum, const T* q,
                               const T* k, const T* v, int Tn, int Hq, int Hkv, int D, float scale) {
    extern __shared__ float shared[];
    const int ld = D + 1;
    float* k_rows = shared;
    float* v_rows = k_rows + kRowsPerBlock * D;
    float* q_tile = v_rows + kRowsPerBlock * D;
    float* dout_tile = q_tile + kTile * ld;
    float* lse_tile = dout_tile + kTile * ld;
    float* r_tile = lse_tile + kTile;
    const int b = blockIdx.z, g = blockIdx.y, s0 = blockIdx.x * kRowsPerBlock;
    const int group = Hq / Hkv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int first_key = s0 + warp * kRowsPerWarp;  // this warp's keys: first_key + r

    load_rows(k_rows, D, k, b, s0, kRowsPerBlock, g, Tn, Hkv, D);
    load_rows(v_rows, D, v, b, s0, kRowsPerBlock, g, Tn, Hkv, D);
    float dk_acc[kRowsPerWarp][kDimsPerLane], dv_acc[kRowsPerWarp][kDimsPerLane];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) dk_acc[r][c] = dv_acc[r][c] = 0.0f;
    }

    for (int h = g * group; h < (g + 1) * group; ++h) {
        for (int t0 = s0; t0 < Tn; t0 += kTile) {  // queries before s0 see none of the block's keys
            __syncthreads();
            load_rows(q_tile, ld, q, b, t0, kTile, h, Tn, Hq, D);
            load_rows(dout_tile, ld, dout, b, t0, kTile, h, Tn, Hq, D);
            if (threadIdx.x < kTile) {
                const int t = t0 + threadIdx.x;
                const int64_t i = (static_cast<int64_t>(b) * Hq + h) * Tn + t;
                lse_tile[threadIdx.x] = t < Tn ? lse[i] : 0.0f;
                r_tile[threadIdx.x] = t < Tn ? row_sum[i] : 0.0f;
            }
            __syncthreads();
            if (first_key >= Tn) continue;  // warp-uniform

            const int t = t0 + lane;
            float score[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
            for (int d = 0; d < D; ++d) {
                const float qd = q_tile[lane * ld + d], gd = dout_tile[lane * ld + d];
#pragma unroll
                for (int r = 0; r < kRowsPerWarp; ++r) {
                    score[r] += qd * k_rows[(warp * kRowsPerWarp + r) * D + d];
                    dp[r] += gd * v_rows[(warp * kRowsPerWarp + r) * D + d];
                }
            }
#pragma unroll
            for (int r = 0; r < kRowsPerWarp; ++r) {
                const int s = first_key + r;
                if (s >= Tn) continue;  // warp-uniform
                const bool visible = t >= s && t < Tn;
                const float p = visible ? expf(scale * score[r] - lse_tile[lane]) : 0.0f;
                const float ds = p * (dp[r] - r_tile[lane]);
                for (int j = 0; j < kTile; ++j) {
                    const float pj = __shfl_sync(kFullMask, p, j), dsj = __shfl_sync(kFullMask, ds, j);
#pragma unroll
                    for (int c = 0; c < kDimsPerLane; ++c) {
                        const int d = lane + 32 * c;
                        if (d < D) {
                            dv_acc[r][c] += pj * dout_tile[j * ld + d];
                            dk_acc[r][c] += dsj * q_tile[j * ld + d];
                        }
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
        const int s = first_key + r;
        if (s >= Tn) continue;
        const int64_t base = row_offset(b, s, g, Tn, Hkv, D);
#pragma unroll
        for (int c = 0; c < kDimsPerLane; ++c) {
            const int d = lane + 32 * c;
            if (d < D) {
                store(dk, base + d, load(dk, base + d) + scale * dk_acc[r][c]);
                store(dv, base + d, load(dv, base + d) + dv_acc[r][c]);
            }
        }
    }
}

// Dynamic shared memory beyond 48 KiB must be opted into per kernel (sm_80: up to 163 KiB).
template <class Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        REFTRAIN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(bytes)));
}

struct AttentionShape {
    int64_t B, T, Hq, Hkv, D;
};

// The checks shared by forward and backward: q, k, v (and out) of one dtype, F32 lse, GQA heads,
// head_dim <= 128, everything on the device.
AttentionShape check_common(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                            const char* op) {
    expect_shape(q, {-1, -1, -1, -1}, op, "q");
    expect_shape(k, {-1, -1, -1, -1}, op, "k");
    const AttentionShape s{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
    expect_shape(k, {s.B, s.T, s.Hkv, s.D}, op, "k");
    expect_shape(v, {s.B, s.T, s.Hkv, s.D}, op, "v");
    expect_shape(out, {s.B, s.T, s.Hq, s.D}, op, "out");
    expect_shape(lse, {s.B, s.Hq, s.T}, op, "lse");
    check(s.Hkv > 0 && s.Hq % s.Hkv == 0, op, ": ", s.Hq, " query heads (argument 'q') are not a multiple of ", s.Hkv,
          " key/value heads (argument 'k')");
    check(s.D >= 1 && s.D <= kMaxHeadDim, op, ": head_dim ", s.D, " (last dimension of argument 'q') is not in [1, ",
          kMaxHeadDim, "]: the kernels keep head_dim / 32 accumulators per lane");
    expect_same_dtype(q, k, op);
    expect_same_dtype(q, v, op);
    expect_same_dtype(q, out, op);
    expect_dtype(lse, DType::F32, op, "lse");
    expect_on_device(out, op, "out");
    expect_on_device(lse, op, "lse");
    expect_on_device(q, op, "q");
    expect_on_device(k, op, "k");
    expect_on_device(v, op, "v");
    check(s.T <= 0x7fffffffLL - kTile && s.Hq <= 65535 && s.B <= 65535, op, ": shape ", q.shape_str(),
          " exceeds the grid limits (T < 2^31, Hq and B <= 65535)");
    return s;
}

AttentionBackend default_backend() {
    return cudnn_attention_available() ? AttentionBackend::cudnn : AttentionBackend::kernel;
}

AttentionBackend g_backend = default_backend();

#ifdef REFTRAIN_HAVE_CUDNN_FRONTEND
// Whether this call goes to cuDNN. Shapes its SDPA refuses (head_dim not a multiple of 8; T = 1, which
// its backward rejects) run on the kernels even when cudnn is chosen: both backends save the same lse,
// so a forward and a backward may come from different backends.
bool use_cudnn(DType dtype, const AttentionShape& s) {
    return dtype == DType::BF16 && g_backend == AttentionBackend::cudnn && s.D % 8 == 0 && s.T > 1;
}
#endif

}  // namespace

bool cudnn_attention_available() {
#ifdef REFTRAIN_HAVE_CUDNN_FRONTEND
    return true;
#else
    return false;
#endif
}

void set_attention_backend(AttentionBackend backend) {
    check(backend != AttentionBackend::cudnn || cudnn_attention_available(),
          "cuda::set_attention_backend: the cuDNN attention backend is not compiled in: CMake did not find the "
          "cudnn-frontend headers (cudnn_frontend.h) or libcudnn. scripts/setup.sh installs the headers from PyPI's "
          "nvidia-cudnn-frontend into .venv; then re-run cmake (or point -DREFTRAIN_CUDNN_FRONTEND_INCLUDE at them)");
    g_backend = backend;
}

AttentionBackend attention_backend() { return g_backend; }

void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                       cudaStream_t stream) {
    const char* op = "cuda::attention_forward";
    const AttentionShape s = check_common(out, lse, q, k, v, op);
    if (s.B == 0 || s.T == 0 || s.Hq == 0) return;
#ifdef REFTRAIN_HAVE_CUDNN_FRONTEND
    if (use_cudnn(q.dtype, s)) {
        detail::cudnn_attention_forward(out, lse, q, k, v, stream);
        return;
    }
#endif
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
    const int D = static_cast<int>(s.D);
    const size_t bytes = sizeof(float) * (kRowsPerBlock * D + kTile * (D + 1) + kTile * D);
    const dim3 grid(static_cast<unsigned>((s.T + kRowsPerBlock - 1) / kRowsPerBlock), static_cast<unsigned>(s.Hq),
                    static_cast<unsigned>(s.B));
    dispatch_storage(q.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        allow_shared_memory(attention_forward_kernel<T>, bytes);
        attention_forward_kernel<T><<<grid, kThreads, bytes, stream>>>(
            device_ptr<T>(out), device_ptr<float>(lse), device_ptr<T>(q), device_ptr<T>(k), device_ptr<T>(v),
            static_cast<int>(s.T), static_cast<int>(s.Hq), static_cast<int>(s.Hkv), D, scale);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& out,
                        const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v, cudaStream_t stream) {
    const char* op = "cuda::attention_backward";
    const AttentionShape s = check_common(out, lse, q, k, v, op);
    const std::pair<const Tensor*, const char*> grads[] = {{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}};
    for (const auto& [grad, arg] : grads)
        check(grad->data != nullptr, op, ": argument '", arg, "' is null: the attention backward writes all of dq, dk, "
              "dv (the CPU's may skip one)");
    expect_shape(dout, {s.B, s.T, s.Hq, s.D}, op, "dout");
    expect_shape(dq, {s.B, s.T, s.Hq, s.D}, op, "dq");
    expect_shape(dk, {s.B, s.T, s.Hkv, s.D}, op, "dk");
    expect_shape(dv, {s.B, s.T, s.Hkv, s.D}, op, "dv");
    expect_same_dtype(q, dout, op);
    expect_same_dtype(q, dq, op);
    expect_same_dtype(q, dk, op);
    expect_same_dtype(q, dv, op);
    expect_on_device(dout, op, "dout");
    for (const auto& [grad, arg] : grads) expect_on_device(*grad, op, arg);
    if (s.B == 0 || s.T == 0 || s.Hq == 0) return;
#ifdef REFTRAIN_HAVE_CUDNN_FRONTEND
    if (use_cudnn(q.dtype, s)) {
        detail::cudnn_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, stream);
        return;
    }
#endif
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
    const int Tn = static_cast<int>(s.T), Hq = static_cast<int>(s.Hq), Hkv = static_cast<int>(s.Hkv);
    const int D = static_cast<int>(s.D);
    // R[b, h, t] (B, Hq, T) F32: written by the dq kernel, read by the dk/dv kernel queued after it.
    StreamScratch row_sum(static_cast<size_t>(s.B * s.Hq * s.T) * sizeof(float), stream);
    const size_t dq_bytes = sizeof(float) * (2 * kRowsPerBlock * D + 2 * kTile * (D + 1));
    const size_t dkdv_bytes = sizeof(float) * (2 * kRowsPerBlock * D + 2 * kTile * (D + 1) + 2 * kTile);
    const unsigned row_blocks = static_cast<unsigned>((s.T + kRowsPerBlock - 1) / kRowsPerBlock);
    dispatch_storage(q.dtype, op, [&](auto tag) {
        using T = decltype(tag);
        allow_shared_memory(attention_backward_dq_kernel<T>, dq_bytes);
        attention_backward_dq_kernel<T><<<dim3(row_blocks, Hq, static_cast<unsigned>(s.B)), kThreads, dq_bytes, stream>>>(
            device_ptr<T>(dq), row_sum.as<float>(), device_ptr<T>(dout), device_ptr<float>(lse), device_ptr<T>(q),
            device_ptr<T>(k), device_ptr<T>(v), Tn, Hq, Hkv, D, scale);
        REFTRAIN_CUDA_CHECK_LAUNCH();

        allow_shared_memory(attention_backward_dkdv_kernel<T>, dkdv_bytes);
        attention_backward_dkdv_kernel<T>
            <<<dim3(row_blocks, Hkv, static_cast<unsigned>(s.B)), kThreads, dkdv_bytes, stream>>>(
                device_ptr<T>(dk), device_ptr<T>(dv), device_ptr<T>(dout), device_ptr<float>(lse),
                row_sum.as<float>(), device_ptr<T>(q), device_ptr<T>(k), device_ptr<T>(v), Tn, Hq, Hkv, D, scale);
        REFTRAIN_CUDA_CHECK_LAUNCH();
    });
}

}  // namespace reftrain::cuda
