// train/dist_nccl.cpp — NcclComm: the bootstrap over the host communicator and NCCL's in-place all-reduce.
// See train/dist_nccl.h for the meaning (a sum over ranks) and for what is and is not deterministic.
#include "train/dist_nccl.h"

#include <nccl.h>

#include <cstdio>

#include "kernels/cuda/check.h"
#include "kernels/error.h"

namespace reftrain {
namespace {

// Every NCCL call goes through this: a failure throws reftrain::Error naming the call as written and
// NCCL's own explanation, e.g.
//   train/dist_nccl.cpp:61: ncclCommInitRank(...) failed: unhandled system error (ncclResult_t 2)
[[noreturn]] void fail_nccl(const char* file, int line, const char* call, ncclResult_t result) {
    fail(file, ":", line, ": ", call, " failed: ", ncclGetErrorString(result), " (ncclResult_t ",
         static_cast<int>(result), "; NCCL_DEBUG=WARN prints NCCL's reason)");
}

}  // namespace
}  // namespace reftrain

#define REFTRAIN_NCCL_CHECK(call)                                                          \
    do {                                                                                   \
        const ncclResult_t reftrain_result_ = (call);                                      \
        if (reftrain_result_ != ncclSuccess)                                               \
            ::reftrain::fail_nccl(__FILE__, __LINE__, #call, reftrain_result_);            \
    } while (0)

namespace reftrain {

NcclComm::NcclComm(Comm& host, int device) : rank_(host.rank()), size_(host.size()), device_(device) {
    check(device >= 0, "NcclComm: CUDA device must be >= 0, got ", device);
    // NCCL binds a communicator to the device that is current when it is created. Set it first: it is
    // the most likely local failure (no GPU, wrong index), and it happens before the first collective.
    REFTRAIN_CUDA_CHECK(cudaSetDevice(device));

    // The bootstrap: rank 0 opens a socket and describes it in the unique id; the other ranks learn it
    // over the host communicator, NCCL's out-of-band channel (NCCL cannot reach ranks it does not know).
    ncclUniqueId id{};
    if (rank_ == 0) REFTRAIN_NCCL_CHECK(ncclGetUniqueId(&id));
    host.broadcast(&id, static_cast<int64_t>(sizeof id), 0);

    // Collective: returns once all size_ ranks have joined. NCCL rank r is host rank r.
    ncclComm_t comm = nullptr;
    REFTRAIN_NCCL_CHECK(ncclCommInitRank(&comm, size_, id, rank_));
    comm_ = comm;
}

NcclComm::~NcclComm() {
    if (!comm_) return;
    // A destructor must not throw: report and go on (the process is usually ending anyway).
    const ncclResult_t result = ncclCommDestroy(comm_);
    if (result != ncclSuccess)
        std::fprintf(stderr, "warning: ncclCommDestroy failed: %s\n", ncclGetErrorString(result));
}

void NcclComm::allreduce_sum(float* device_data, int64_t n, cudaStream_t stream) {
    check(n >= 0, "NcclComm::allreduce_sum: n must be >= 0, got ", n);
    // Nothing to sum. Every rank passes the same n, so every rank skips together and no one waits.
    if (n == 0) return;
    check(device_data != nullptr, "NcclComm::allreduce_sum: null device buffer for ", n, " floats");
    // In place (send buffer = receive buffer). The sum order is NCCL's ring/tree order, fixed for this
    // communicator: see train/dist_nccl.h.
    REFTRAIN_NCCL_CHECK(ncclAllReduce(device_data, device_data, static_cast<size_t>(n), ncclFloat, ncclSum,
                                      comm_, stream));
}

std::string nccl_version() {
    int code = 0;
    REFTRAIN_NCCL_CHECK(ncclGetVersion(&code));
    // NCCL >= 2.9 codes MAJOR*10000 + MINOR*100 + PATCH (2.28.9 is 22809).
    return concat(code / 10000, ".", code / 100 % 100, ".", code % 100);
}

}  // namespace reftrain
