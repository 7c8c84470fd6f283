// train/dist_nccl.h — the GPU twin of Comm::allreduce_sum(float*): NCCL sums a gradient arena that lives
// in device memory, with the same meaning as the CPU communicator of train/dist.h (a SUM over the ranks
// into every rank's buffer, never a mean). Built only with the CUDA backend and NCCL (CMakeLists.txt
// defines REFTRAIN_HAVE_NCCL=1 then); a CPU-only build never sees this file.
//
// Bootstrapping. NCCL ranks find each other through an ncclUniqueId (128 opaque bytes naming rank 0's
// listening socket) that rank 0 creates and every other rank must receive before ncclCommInitRank.
// NCCL has no launcher of its own to carry those bytes, so it needs an out-of-band channel: we already
// have one, the host communicator (MPI under mpirun), and send the id with host.broadcast.
//
// Determinism. NCCL sums along its rings or trees, in an order fixed by the communicator size, the
// topology (which GPUs, which links) and the NCCL version (and its NCCL_ALGO / NCCL_PROTO choice). So
// repeated runs on the same machine with the same NCCL give the same bits, and every rank receives the
// same bits, but the order is NOT the rank-order sum ((x_0 + x_1) + x_2) + ... of MpiComm's deterministic
// mode: a CPU run and a GPU run of N > 2 ranks may differ in the last bits of the gradient. For one rank
// the all-reduce is the identity (bitwise). For two ranks each element is one add of the two values,
// which is commutative, so it should match MpiComm as well (not yet checked on two GPUs).
//
// Collective: every rank constructs its NcclComm, and calls allreduce_sum with the same n, in the same
// order, or the run hangs (as for Comm).
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t

#include <cstdint>
#include <string>

#include "train/dist.h"

struct ncclComm;  // nccl.h's communicator (ncclComm_t is ncclComm*); only dist_nccl.cpp includes nccl.h

namespace reftrain {

class NcclComm {
public:
    // Collective over `host`: binds this process to CUDA device `device` (cudaSetDevice), gets the unique
    // id on host rank 0, broadcasts it over `host`, and joins an NCCL communicator with host's size and
    // rank, so NCCL rank r is host rank r. Throws reftrain::Error naming the failed call; a rank that
    // throws here leaves the others waiting, so the caller ends the job with host.abort_all.
    NcclComm(Comm& host, int device);
    ~NcclComm();
    NcclComm(const NcclComm&) = delete;
    NcclComm& operator=(const NcclComm&) = delete;

    int rank() const { return rank_; }
    int size() const { return size_; }
    int device() const { return device_; }

    // Sums n floats of device memory over the ranks, in place, into every rank's `device_data`, enqueued
    // on `stream` (the caller synchronises before reading the result on the host). n = 0 does nothing.
    void allreduce_sum(float* device_data, int64_t n, cudaStream_t stream);

private:
    ncclComm* comm_ = nullptr;
    int rank_ = 0;
    int size_ = 1;
    int device_ = 0;
};

// "2.28.9": the NCCL library this process loaded (the sum order above depends on it). For logs and tests.
std::string nccl_version();

}  // namespace reftrain
