// train/dist.h — data-parallel training across processes: the communicator the trainer talks to.
//
// `mpirun -np N build/reftrain train --config C` starts N copies of the same program, the ranks. Each
// holds a full replica of the model and the optimizer, trains on its own slice of every global batch,
// and the ranks add their gradients together before the update, so every replica applies the same
// update and stays bitwise equal to the others (docs/distributed.md):
//
//     global batch of a step = N x k micro-batches of B rows, drawn from one packer stream
//     rank r keeps micro-batches [r k, (r + 1) k) of it          (every rank draws them all; packing is cheap)
//     micro-batch i's weight = n_i / sum over the global batch    (n = supervised tokens)
//     gradient = sum over ranks of sum_i weight_i grad_i          (one all-reduce of the gradient arena)
//
// so N ranks x k micro-batches are one rank x N k micro-batches (gradient accumulation) are one batch of
// N k B rows. The weights are global, so the all-reduce is a SUM, never a mean of rank means.
//
// Comm is the only thing the trainer sees: SingleComm for one process, MpiComm (OpenMPI from Debian)
// when the program was started by mpirun in a build with MPI. GPU gradients go through NCCL with the
// same meaning (train/dist_nccl.h). Everything here is collective: every rank calls the same functions
// in the same order, or the run hangs — the trainer keeps that order in one place (Trainer::train_step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace reftrain {

class Comm {
public:
    virtual ~Comm() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual std::string backend() const = 0;   // "single" or "mpi"

    // Sums n floats over the ranks into every rank's `data`. deterministic = true: the sum is taken in rank
    // order, ((x_0 + x_1) + x_2) + ..., on rank 0 and sent back, so every rank and every run gets the same
    // bits. false: the library's all-reduce (its own order; for 2 ranks still one commutative add).
    virtual void allreduce_sum(float* data, int64_t n, bool deterministic) = 0;
    // Sums n doubles in rank order (always deterministic; for losses, counts and flags).
    virtual void allreduce_sum(double* data, int64_t n) = 0;
    virtual void broadcast(void* data, int64_t bytes, int root) = 0;
    // Every rank's string, in rank order, on every rank (hashes, configs, error messages).
    virtual std::vector<std::string> allgather(const std::string& mine) = 0;
    virtual void barrier() = 0;
    // Ends every rank of the job at once, with `code`: for an error on one rank, so the others do not wait
    // for it in the next collective. Returns only for one process (then the caller exits normally).
    virtual void abort_all(int code) = 0;
};

// One process: the collectives are copies (a sum over one rank is the value itself).
class SingleComm final : public Comm {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    std::string backend() const override { return "single"; }
    void allreduce_sum(float*, int64_t, bool) override {}
    void allreduce_sum(double*, int64_t) override {}
    void broadcast(void*, int64_t, int) override {}
    std::vector<std::string> allgather(const std::string& mine) override { return {mine}; }
    void barrier() override {}
    void abort_all(int) override {}
};

// The process's communicator: MPI's world when this build has MPI and the process was started by an MPI
// launcher (mpirun sets OMPI_COMM_WORLD_SIZE / PMIX_RANK), else one process. MPI is initialised on the
// first call and finalised at exit.
Comm& world();
bool built_with_mpi();
// True when an MPI launcher started this process (world() then has the launcher's ranks).
bool launched_by_mpi();

// FNV-1a over bytes: the parameter and batch fingerprints that ranks compare (dist.params_in_sync,
// dist.batches_disjoint). Equal bytes give equal hashes on every rank and machine.
uint64_t fnv1a(const void* data, size_t bytes, uint64_t seed = 1469598103934665603ull);

// "rank 1 of 2" style text for messages; empty for one process.
std::string rank_prefix(const Comm& comm);

}  // namespace reftrain
