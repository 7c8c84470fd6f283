// kernels/cuda/matmul.cpp — the linear layer (x @ W^T) through cuBLASLt, the CUDA twin of
// cpu::linear_forward / cpu::linear_backward (kernels/cpu/matmul.cpp).
//
// Layout. Our tensors are row-major; cuBLASLt is column-major. A row-major (r, c) matrix is, byte for
// byte, the column-major (c, r) matrix: its transpose. So each row-major product C = A @ B is computed
// as the column-major C^T = B^T @ A^T, with the operands swapped and no data moved. In cuBLASLt's
// terms (D = op(A) op(B), D column-major (m, n); "T" means the stored operand is transposed):
//   out (N, OC)  = x (N, IC) @ W^T      out^T (OC, N) = W @ x^T        A = W (T), B = x (N)     m=OC n=N  k=IC
//   dx (N, IC)  += dout (N, OC) @ W     dx^T (IC, N) += W^T @ dout^T   A = W (N), B = dout (N)  m=IC n=N  k=OC
//   dW (OC, IC) += dout^T (OC, N) @ x   dW^T (IC, OC) += x^T @ dout    A = x (N), B = dout (T)  m=IC n=OC k=N
// Leading dimensions are the row lengths of the row-major tensors (IC, OC).
//
// Accumulation. The backward ADDS into dx and dweight (the convention of ops.h). cuBLASLt computes
// D = alpha * op(A) op(B) + beta * C; with C = D (the gradient buffer itself) and beta = 1 the add is
// done by the GEMM's epilogue as it stores each output tile, so there is no separate pass that would
// read and write the whole gradient again. beta = 0 for the forward (out is overwritten; cuBLASLt does
// not read C when beta is 0, so a NaN-poisoned out is fine).
//
// Precision. CUBLAS_COMPUTE_32F with an fp32 scale type for every case: F32 operands get true fp32
// FMA arithmetic (no TF32, which would round the inputs to 10 mantissa bits), BF16 operands get bf16
// tensor-core products accumulated in fp32. D is F32 or BF16; a BF16 D is rounded once, at the store.
// The mixed case A, B BF16 with C = D F32 is the fp32 weight gradient of a bf16 model.
//
// Determinism. The heuristic's algorithm is cached per (device, shape, leading dimensions, dtypes,
// transposes, beta, pointer alignments, deterministic flag), so a given call always runs the same
// kernel: a GEMM with a fixed algorithm and no split-K reduction sums in a fixed order and is bitwise
// repeatable. When cuda::deterministic() is on (the default) the heuristic may only return algorithms
// with CUBLASLT_REDUCTION_SCHEME_NONE: split-K schemes that reduce partial sums in a workspace or
// through atomics in the output are excluded. When it is off, split-K is allowed (faster when the output
// is small and the reduction long, e.g. dweight (OC, IC) summed over N = B*T rows) and run-to-run bits
// may differ.
//
// Library state (one per process, created on the first matmul that reaches the device): a cuBLASLt
// handle, a 32 MiB workspace (cudaMalloc on the device current at that moment) and the algorithm cache.
// Creation is a function-local static (thread-safe in C++); the cache is guarded by a mutex. The state
// is never destroyed (freeing it from a static destructor could run after the CUDA runtime has shut
// down at exit). Limits, checked or documented: one device per process (a call on another device is
// an error), and matmuls on different streams must not run concurrently, since they share the
// workspace (the model issues all its ops on one stream).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"

namespace reftrain::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// Which algorithm a GEMM call gets is decided once per distinct key (see "Determinism" above).
using AlgorithmKey = std::tuple<int,                                  // device
                                int, int,                             // trans_a, trans_b
                                int64_t, int64_t, int64_t,            // m, n, k
                                int64_t, int64_t, int64_t,            // lda, ldb, ldd
                                int, int,                             // A/B type, C/D type
                                bool, bool,                           // beta is zero, deterministic
                                uint32_t, uint32_t, uint32_t>;        // alignment of A, B, C=D in bytes

struct Library {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;  // kWorkspaceBytes on `device`
    int device = 0;
    std::mutex mutex;           // guards `algorithms`
    std::map<AlgorithmKey, cublasLtMatmulAlgo_t> algorithms;
};

Library* create_library() {
    auto library = std::make_unique<Library>();
    REFTRAIN_CUDA_CHECK(cudaGetDevice(&library->device));
    REFTRAIN_CUBLAS_CHECK(cublasLtCreate(&library->handle));
    const cudaError_t status = cudaMalloc(&library->workspace, kWorkspaceBytes);
    if (status != cudaSuccess) {
        cublasLtDestroy(library->handle);
        fail_cuda(__FILE__, __LINE__, "cudaMalloc(&library->workspace, kWorkspaceBytes)", status);
    }
    return library.release();  // never freed: see the comment at the top
}

Library& library() {
    static Library* const instance = create_library();  // if creation throws, the next call retries
    return *instance;
}

// RAII holders for the per-call descriptors (creating them is cheap host work).
template <class Handle, cublasStatus_t (*Destroy)(Handle)>
struct Owned {
    Handle handle = nullptr;
    Owned() = default;
    Owned(const Owned&) = delete;
    Owned& operator=(const Owned&) = delete;
    ~Owned() {
        if (handle) Destroy(handle);  // no throw from a destructor; destroying cannot fail usefully
    }
};
using MatmulDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using MatrixLayout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// The largest power of two (up to 256, cuBLASLt's default assumption) dividing the address.
uint32_t alignment_of(const void* p) {
    const auto address = reinterpret_cast<uintptr_t>(p);
    const uintptr_t lowest_bit = address & (~address + 1);
    return address == 0 || lowest_bit >= 256 ? 256u : static_cast<uint32_t>(lowest_bit);
}

const char* type_name(cudaDataType type) { return type == CUDA_R_32F ? "F32" : "BF16"; }

// One column-major GEMM: D (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * D, fp32 accumulation.
// A is stored (m, k) or, transposed, (k, m) with leading dimension lda; B likewise (k, n) or (n, k).
void gemm(cublasOperation_t trans_a, cublasOperation_t trans_b, int64_t m, int64_t n, int64_t k, const void* a,
          int64_t lda, const void* b, int64_t ldb, cudaDataType ab_type, void* d, int64_t ldd, cudaDataType d_type,
          float beta, cudaStream_t stream) {
    if (m == 0 || n == 0) return;
    if (k == 0) {  // an empty sum: D = beta * D, i.e. zeros (all-zero bits in F32 and BF16) or unchanged
        if (beta == 0.0f) {
            const size_t element = d_type == CUDA_R_32F ? 4 : 2;
            REFTRAIN_CUDA_CHECK(cudaMemset2DAsync(d, static_cast<size_t>(ldd) * element, 0,
                                                  static_cast<size_t>(m) * element, static_cast<size_t>(n), stream));
        }
        return;
    }
    Library& lib = library();
    int device = 0;
    REFTRAIN_CUDA_CHECK(cudaGetDevice(&device));
    check(device == lib.device, "cuda matmul: called on device ", device,
          " but the cuBLASLt workspace lives on device ", lib.device, " (one device per process)");

    MatmulDesc desc;
    REFTRAIN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.handle, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t op_a = trans_a, op_b = trans_b;
    REFTRAIN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.handle, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    REFTRAIN_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.handle, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    const bool ta = trans_a == CUBLAS_OP_T, tb = trans_b == CUBLAS_OP_T;
    MatrixLayout layout_a, layout_b, layout_d;  // C shares D's layout (and memory)
    REFTRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a.handle, ab_type, ta ? k : m, ta ? m : k, lda));
    REFTRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b.handle, ab_type, tb ? n : k, tb ? k : n, ldb));
    REFTRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_d.handle, d_type, m, n, ldd));

    const bool deterministic_mode = deterministic();
    const uint32_t align_a = alignment_of(a), align_b = alignment_of(b), align_d = alignment_of(d);
    const AlgorithmKey key{device, op_a, op_b, m, n, k, lda, ldb, ldd, ab_type, d_type, beta == 0.0f,
                           deterministic_mode, align_a, align_b, align_d};
    cublasLtMatmulAlgo_t algorithm{};
    bool cached = false;
    {
        std::lock_guard<std::mutex> lock(lib.mutex);
        const auto found = lib.algorithms.find(key);
        if (found != lib.algorithms.end()) {
            algorithm = found->second;
            cached = true;
        }
    }
    if (!cached) {
        Preference preference;
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference.handle));
        const uint64_t workspace_bytes = kWorkspaceBytes;
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            preference.handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
        if (deterministic_mode) {
            const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE;
            REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                preference.handle, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)));
        }
        // Tell the heuristic how aligned the pointers really are (it assumes 256 bytes), so it never
        // picks a kernel that needs more; the alignments are part of the cache key for the same reason.
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)));
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
            preference.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));
        cublasLtMatmulHeuristicResult_t result{};
        int returned = 0;
        REFTRAIN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lib.handle, desc.handle, layout_a.handle, layout_b.handle,
                                                             layout_d.handle, layout_d.handle, preference.handle, 1,
                                                             &result, &returned));
        if (deterministic_mode && returned == 0) {
            // UNVERIFIED on a GPU: whether a mask of 0 (= SCHEME_NONE) admits the no-split-K algorithms or
            // filters out everything is not spelled out in cublasLt.h. If nothing came back, fall back to
            // the documented schemes, which are all ordered (INPLACE serialises with counters, the other
            // two reduce in a separate pass); the algorithm cache still fixes the choice per shape.
            const uint32_t ordered = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE |
                                     CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
            REFTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                preference.handle, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &ordered, sizeof(ordered)));
            REFTRAIN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lib.handle, desc.handle, layout_a.handle,
                                                                 layout_b.handle, layout_d.handle, layout_d.handle,
                                                                 preference.handle, 1, &result, &returned));
        }
        check(returned > 0 && result.state == CUBLAS_STATUS_SUCCESS, "cuBLASLt found no algorithm",
              deterministic_mode ? " without split-K (deterministic mode)" : "");
        algorithm = result.algo;
        std::lock_guard<std::mutex> lock(lib.mutex);
        lib.algorithms.emplace(key, algorithm);  // a racing thread may have stored one first: keep that
        algorithm = lib.algorithms.at(key);
    }
    const float alpha = 1.0f;
    REFTRAIN_CUBLAS_CHECK(cublasLtMatmul(lib.handle, desc.handle, &alpha, a, layout_a.handle, b, layout_b.handle, &beta,
                                         d, layout_d.handle, d, layout_d.handle, &algorithm, lib.workspace,
                                         kWorkspaceBytes, stream));
}

// gemm() with the failure prefixed by the op, which product it was and its shape and dtypes.
template <class... Args>
void run_gemm(const char* op, const char* product, Args&&... args) {
    try {
        gemm(std::forward<Args>(args)...);
    } catch (const Error& e) {
        fail(op, ": ", product, ": ", e.what());
    }
}

// F32 -> CUDA_R_32F, BF16 -> CUDA_R_16BF; anything else is an error naming the op and the argument.
cudaDataType matmul_type(const Tensor& t, const char* op, const char* arg) {
    if (t.dtype == DType::F32) return CUDA_R_32F;
    if (t.dtype == DType::BF16) return CUDA_R_16BF;
    fail(op, ": argument '", arg, "' (tensor '", t.name, "') has dtype ", dtype_name(t.dtype),
         ", expected F32 or BF16");
}

std::string gemm_label(const char* what, int64_t rows, int64_t inner, int64_t cols, cudaDataType ab, cudaDataType d) {
    return concat(what, " (", rows, " x ", inner, ") @ (", inner, " x ", cols, "), ", type_name(ab), " -> ",
                  type_name(d));
}

}  // namespace

void linear_forward(const Tensor& out, const Tensor& x, const Tensor& weight, cudaStream_t stream) {
    const char* op = "cuda::linear_forward";
    expect_shape(x, {-1, -1}, op, "x");
    expect_shape(weight, {-1, -1}, op, "weight");
    const int64_t N = x.dim(0), IC = x.dim(1), OC = weight.dim(0);
    expect_shape(weight, {OC, IC}, op, "weight");
    expect_shape(out, {N, OC}, op, "out");
    const cudaDataType type = matmul_type(x, op, "x");
    expect_same_dtype(x, weight, op);
    expect_same_dtype(x, out, op);
    expect_on_device(out, op, "out");
    expect_on_device(x, op, "x");
    expect_on_device(weight, op, "weight");
    if (N == 0 || OC == 0) return;
    run_gemm(op, gemm_label("out = x @ weight^T", N, IC, OC, type, type).c_str(), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC,
             weight.data, IC, x.data, IC, type, out.data, OC, type, 0.0f, stream);
}

void linear_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, cudaStream_t stream) {
    const char* op = "cuda::linear_backward";
    expect_shape(x, {-1, -1}, op, "x");
    expect_shape(weight, {-1, -1}, op, "weight");
    const int64_t N = x.dim(0), IC = x.dim(1), OC = weight.dim(0);
    expect_shape(weight, {OC, IC}, op, "weight");
    expect_shape(dout, {N, OC}, op, "dout");
    const cudaDataType type = matmul_type(x, op, "x");
    expect_same_dtype(x, weight, op);
    expect_same_dtype(x, dout, op);
    expect_on_device(dout, op, "dout");
    expect_on_device(x, op, "x");
    expect_on_device(weight, op, "weight");
    if (dx.data) {
        expect_shape(dx, {N, IC}, op, "dx");
        expect_same_dtype(x, dx, op);
        expect_on_device(dx, op, "dx");
    }
    cudaDataType dweight_type = type;
    if (dweight.data) {
        expect_shape(dweight, {OC, IC}, op, "dweight");
        dweight_type = matmul_type(dweight, op, "dweight");
        check(dweight.dtype == x.dtype || dweight.dtype == DType::F32, op, ": argument 'dweight' (tensor '",
              dweight.name, "') has dtype ", dtype_name(dweight.dtype), ", expected ", dtype_name(x.dtype),
              x.dtype == DType::F32 ? "" : " (the dtype of x) or F32");
        expect_on_device(dweight, op, "dweight");
    }
    if (N == 0) return;  // dx is empty and dweight gets an empty sum: nothing to add
    if (dx.data)
        run_gemm(op, gemm_label("dx += dout @ weight", N, OC, IC, type, type).c_str(), CUBLAS_OP_N, CUBLAS_OP_N, IC, N,
                 OC, weight.data, IC, dout.data, OC, type, dx.data, IC, type, 1.0f, stream);
    if (dweight.data)
        run_gemm(op, gemm_label("dweight += dout^T @ x", OC, N, IC, type, dweight_type).c_str(), CUBLAS_OP_N,
                 CUBLAS_OP_T, IC, OC, N, x.data, IC, dout.data, OC, type, dweight.data, IC, dweight_type, 1.0f, stream);
}

}  // namespace reftrain::cuda
