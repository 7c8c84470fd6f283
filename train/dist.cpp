// train/dist.cpp — the process's communicator: one process, or MPI's world under mpirun.
#include "train/dist.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/error.h"

#ifdef REFTRAIN_HAVE_MPI
#include <mpi.h>
#endif

namespace reftrain {

uint64_t fnv1a(const void* data, size_t bytes, uint64_t seed) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    uint64_t h = seed;
    for (size_t i = 0; i < bytes; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

std::string rank_prefix(const Comm& comm) {
    return comm.size() > 1 ? concat("rank ", comm.rank(), " of ", comm.size(), ": ") : std::string();
}

bool built_with_mpi() {
#ifdef REFTRAIN_HAVE_MPI
    return true;
#else
    return false;
#endif
}

// Launched by an MPI launcher? OpenMPI's mpirun sets OMPI_COMM_WORLD_SIZE; PMIx launchers (srun,
// prterun) set PMIX_RANK. Without one, MPI is not touched: a plain `reftrain train` never pays for it.
bool launched_by_mpi() {
    return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr ||
           std::getenv("PMI_RANK") != nullptr;
}

namespace {

#ifdef REFTRAIN_HAVE_MPI
void mpi_check(int code, const char* what) {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    fail("MPI ", what, " failed: ", std::string(text, static_cast<size_t>(length)));
}

// MPI counts are int: large buffers go in chunks of at most 2^30 elements.
constexpr int64_t kChunk = int64_t{1} << 30;

class MpiComm final : public Comm {
public:
    MpiComm() {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (!initialized) {
            int provided = 0;
            mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
            std::atexit([] {
                int finalized = 0;
                MPI_Finalized(&finalized);
                if (!finalized) MPI_Finalize();
            });
        }
        // Errors come back as codes and become reftrain errors naming the call, instead of MPI's abort.
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
        MPI_Comm_size(MPI_COMM_WORLD, &size_);
    }
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string backend() const override { return "mpi"; }

    void allreduce_sum(float* data, int64_t n, bool deterministic) override {
        if (size_ == 1) return;
        if (!deterministic) {
            for (int64_t at = 0; at < n; at += kChunk) {
                const int count = static_cast<int>(std::min(kChunk, n - at));
                mpi_check(MPI_Allreduce(MPI_IN_PLACE, data + at, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
            }
            return;
        }
        ordered_sum(data, n, MPI_FLOAT);
    }
    void allreduce_sum(double* data, int64_t n) override {
        if (size_ == 1) return;
        ordered_sum(data, n, MPI_DOUBLE);
    }
    void broadcast(void* data, int64_t bytes, int root) override {
        if (size_ == 1) return;
        char* p = static_cast<char*>(data);
        for (int64_t at = 0; at < bytes; at += kChunk) {
            const int count = static_cast<int>(std::min(kChunk, bytes - at));
            mpi_check(MPI_Bcast(p + at, count, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
        }
    }
    std::vector<std::string> allgather(const std::string& mine) override {
        int length = static_cast<int>(mine.size());
        std::vector<int> lengths(static_cast<size_t>(size_));
        mpi_check(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
        std::vector<int> offsets(static_cast<size_t>(size_), 0);
        for (int r = 1; r < size_; ++r) offsets[r] = offsets[r - 1] + lengths[r - 1];
        std::string all(static_cast<size_t>(offsets.back() + lengths.back()), '\0');
        mpi_check(MPI_Allgatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR,
                                 MPI_COMM_WORLD),
                  "MPI_Allgatherv");
        std::vector<std::string> out;
        for (int r = 0; r < size_; ++r) out.push_back(all.substr(static_cast<size_t>(offsets[r]), static_cast<size_t>(lengths[r])));
        return out;
    }
    void barrier() override { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
    void abort_all(int code) override {
        if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
    }

private:
    // Rank 0 gathers every rank's buffer, adds them in rank order and broadcasts the sum: the same bits
    // on every rank and in every run, for any number of ranks. It costs N buffers on rank 0 and a
    // gather + broadcast instead of a ring; train.deterministic = false takes MPI_Allreduce instead.
    template <class T>
    void ordered_sum(T* data, int64_t n, MPI_Datatype type) {
        for (int64_t at = 0; at < n; at += kChunk) {
            const int64_t count = std::min(kChunk, n - at);
            if (rank_ == 0) gathered_.resize(static_cast<size_t>(count * size_) * sizeof(T));
            mpi_check(MPI_Gather(data + at, static_cast<int>(count), type, rank_ == 0 ? gathered_.data() : nullptr,
                                 static_cast<int>(count), type, 0, MPI_COMM_WORLD),
                      "MPI_Gather");
            if (rank_ == 0) {
                const T* all = reinterpret_cast<const T*>(gathered_.data());
                for (int64_t i = 0; i < count; ++i) {
                    T sum = all[i];
                    for (int r = 1; r < size_; ++r) sum += all[static_cast<int64_t>(r) * count + i];
                    data[at + i] = sum;
                }
            }
            mpi_check(MPI_Bcast(data + at, static_cast<int>(count), type, 0, MPI_COMM_WORLD), "MPI_Bcast");
        }
    }
    int rank_ = 0, size_ = 1;
    std::vector<char> gathered_;
};
#endif

}  // namespace

Comm& world() {
    static std::unique_ptr<Comm> comm = []() -> std::unique_ptr<Comm> {
#ifdef REFTRAIN_HAVE_MPI
        if (launched_by_mpi()) return std::make_unique<MpiComm>();
#else
        if (launched_by_mpi() && std::getenv("OMPI_COMM_WORLD_SIZE") && std::strcmp(std::getenv("OMPI_COMM_WORLD_SIZE"), "1") != 0) {
            fail("started by mpirun with ", std::getenv("OMPI_COMM_WORLD_SIZE"),
                 " ranks, but this build has no MPI: every rank would train alone on the same data. Install "
                 "libopenmpi-dev (scripts/setup.sh does) and rebuild, or run without mpirun");
        }
#endif
        return std::make_unique<SingleComm>();
    }();
    return *comm;
}

}  // namespace reftrain
