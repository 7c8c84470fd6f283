// kernels/cpu/embedding.cpp — token embedding lookup and its scatter-add backward.
//
//   forward   out[n, :] = table[ids[n], :]
//   backward  dtable[ids[n], :] += dout[n, :]
// The backward is split over columns, not tokens: two tokens with the same id would otherwise race.
// Each thread owns a slice of columns and walks the tokens in order, so the sum order is fixed.
#include <omp.h>

#include <algorithm>

#include "kernels/cpu/ops.h"

namespace reftrain::cpu {

namespace {

void check_ids(const Tensor& ids, int64_t vocab, const char* op) {
    const int64_t* id = ids.ptr<int64_t>();
    for (int64_t n = 0; n < ids.numel(); ++n) {
        check(id[n] >= 0 && id[n] < vocab, op, ": token id ", id[n], " at position ", n, " of '", ids.name,
              "' is outside the vocabulary [0, ", vocab, ")");
    }
}

template <class T>
void forward_impl(const Tensor& out, const Tensor& ids, const Tensor& table) {
    const int64_t N = ids.numel(), C = table.dim(1);
    const int64_t* id = ids.ptr<int64_t>();
    const T* w = table.ptr<T>();
    T* o = out.ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) std::copy(w + id[n] * C, w + id[n] * C + C, o + n * C);
}

template <class T>
void backward_impl(const Tensor& dtable, const Tensor& dout, const Tensor& ids) {
    const int64_t N = ids.numel(), C = dtable.dim(1);
    const int64_t* id = ids.ptr<int64_t>();
    const T* g = dout.ptr<T>();
    T* dw = dtable.ptr<T>();
#pragma omp parallel
    {
        const int threads = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t begin = C * me / threads, end = C * (me + 1) / threads;
        for (int64_t n = 0; n < N; ++n) {
            const T* src = g + n * C;
            T* dst = dw + id[n] * C;
            for (int64_t c = begin; c < end; ++c) dst[c] += src[c];
        }
    }
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
    const int64_t V = table.dim(0), C = table.dim(1), N = ids.numel();
    expect_dtype(ids, DType::I64, "embedding_forward", "ids");
    expect_shape(out, {N, C}, "embedding_forward", "out");
    expect_same_dtype(out, table, "embedding_forward");
    check_ids(ids, V, "embedding_forward");
    dispatch_float(table.dtype, "embedding_forward", [&](auto t) { forward_impl<decltype(t)>(out, ids, table); });
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids) {
    if (!dtable.data) return;
    const int64_t V = dtable.dim(0), C = dtable.dim(1), N = ids.numel();
    expect_dtype(ids, DType::I64, "embedding_backward", "ids");
    expect_shape(dout, {N, C}, "embedding_backward", "dout");
    expect_same_dtype(dout, dtable, "embedding_backward");
    check_ids(ids, V, "embedding_backward");
    dispatch_float(dtable.dtype, "embedding_backward",
                   [&](auto t) { backward_impl<decltype(t)>(dtable, dout, ids); });
}

}  // namespace reftrain::cpu
