// tests/cuda/test_nccl.cpp — NcclComm (train/dist_nccl.h), the GPU gradient all-reduce, on one process.
//
// With one rank the all-reduce must be the identity, bit for bit: a random, never-zero buffer comes back
// unchanged (an all-reduce that zeroed, scaled or averaged it would fail). Several ranks need several
// GPUs and mpirun; those runs live with the distributed tests, not here. Without a CUDA device every
// test that needs one is SKIPPED (REFTRAIN_REQUIRE_GPU); in a build without NCCL the one test left
// skips and says so.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/cuda/cuda_test_util.h"

#ifdef REFTRAIN_HAVE_NCCL

#include "kernels/error.h"
#include "train/dist.h"
#include "train/dist_nccl.h"

namespace reftrain {
namespace {

using cuda_testing::random_floats;
using cuda_testing::to_device;
using cuda_testing::to_host;

// One rank: NCCL's sum over one contribution must return it unchanged, bitwise.
TEST(Nccl, OneRankAllReduceIsTheIdentity) {
    REFTRAIN_REQUIRE_GPU();
    SingleComm host;
    NcclComm nccl(host, 0);
    EXPECT_EQ(nccl.rank(), 0);
    EXPECT_EQ(nccl.size(), 1);

    const std::vector<float> values = random_floats(1000, /*seed=*/17);  // |v| >= 1e-2: never zero
    auto buffer = to_device(values);
    cudaStream_t stream = nullptr;
    REFTRAIN_CUDA_CHECK(cudaStreamCreate(&stream));
    nccl.allreduce_sum(static_cast<float*>(buffer.data()), static_cast<int64_t>(values.size()), stream);
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream));
    REFTRAIN_CUDA_CHECK(cudaStreamDestroy(stream));

    const std::vector<float> got = to_host<float>(buffer);
    ASSERT_EQ(got.size(), values.size());
    size_t changed = 0;
    for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &values[i], sizeof(float)) != 0) ++changed;
    EXPECT_EQ(changed, 0u) << "a one-rank all-reduce must leave every bit of the buffer as it was";
    std::printf("[measured] NCCL %s one-rank all-reduce of %zu floats: %zu elements changed (bound 0)\n",
                nccl_version().c_str(), values.size(), changed);
}

// Zero elements: a valid call (an empty gradient arena), nothing to do, no error.
TEST(Nccl, ZeroElementsIsANoOp) {
    REFTRAIN_REQUIRE_GPU();
    SingleComm host;
    NcclComm nccl(host, 0);
    cuda_testing::DeviceBuffer empty;  // no allocation: data() is null
    EXPECT_NO_THROW(nccl.allreduce_sum(static_cast<float*>(empty.data()), 0, nullptr));
    REFTRAIN_CUDA_CHECK(cudaDeviceSynchronize());
}

// The error path runs only where there is no GPU: constructing fails with a message naming the call.
TEST(Nccl, WithoutAGpuConstructionIsAClearError) {
    if (cuda_testing::gpu_available()) GTEST_SKIP() << "this machine has a GPU: the error path needs none";
    SingleComm host;
    try {
        NcclComm nccl(host, 0);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("cudaSetDevice"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace reftrain

#else  // no NCCL in this build

TEST(Nccl, NotBuilt) {
    GTEST_SKIP() << "this build has no NCCL (CMake found no nccl.h or libnccl), so train/dist_nccl.cpp "
                    "was left out";
}

#endif
