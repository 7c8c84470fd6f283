// tests/dist/test_dist.cpp — data-parallel training across ranks (train/dist.h), run by ctest as
// `mpirun -np 2 reftrain_dist_tests` (test mpi.dist_tests). Every rank runs every test in the same order,
// so the collectives inside the trainers meet; a test that needs two ranks skips in a single process.
//
// The references are computed on each rank in its own process (a Trainer on a SingleComm), from the same
// seed: one rank with grad_accum = 2, and one rank with a batch twice as large.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/bugs.h"
#include "kernels/error.h"
#include "probes/failures.h"
#include "tests/failure_pages.h"
#include "train/dist.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;

#define REQUIRE_TWO_RANKS()                                                                                 \
    if (world().size() != 2) GTEST_SKIP() << "needs 2 ranks: mpirun -np 2 reftrain_dist_tests (ctest mpi.dist_tests)"

// One directory for both ranks (rank 0's pid names it).
std::string shared_dir(const std::string& name) {
    int64_t id = getpid();
    world().broadcast(&id, sizeof id, 0);
    const fs::path dir = fs::temp_directory_path() / concat("reftrain_dist_", id) / name;
    if (world().rank() == 0) {
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    world().barrier();
    return dir.string();
}

// The tiny addition run of the failure catalog (d = 48, 2 layers, byte tokenizer, 48 tokens a row).
RunConfig tiny(const std::string& run_dir, const std::vector<std::string>& extra) {
    std::vector<std::string> sets = {"run_dir=" + run_dir, "seed=3", "threads=1", "model.hidden_size=48",
                                     "model.intermediate_size=96", "model.num_hidden_layers=2",
                                     "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.head_dim=12",
                                     "model.max_position_embeddings=64", "data.tokenizer=byte",
                                     "data.task_options={\"min_digits\": 1, \"max_digits\": 2}",
                                     "data.train_examples=2000", "data.val_examples=0", "data.test_examples=0",
                                     "train.batch_size=8", "train.seq_len=48", "train.max_steps=40",
                                     "schedule.lr=0.003", "eval.every=0",
                                     "eval.exact_match_examples=0", "eval.final_test=false"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_run_config("", sets);
}

std::vector<float> params_of(Trainer& t) {
    const Arena& p = t.model().params();
    const float* f = reinterpret_cast<const float*>(p.data());
    return std::vector<float>(f, f + p.nbytes() / sizeof(float));
}

double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0.0, n = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
        n += static_cast<double>(b[i]) * b[i];
    }
    return std::sqrt(d / n);
}

// Every rank's parameter hash, in rank order.
std::vector<uint64_t> rank_param_hashes(Trainer& t) {
    const Arena& p = t.model().params();
    std::vector<uint64_t> out;
    for (const std::string& h : world().allgather(std::to_string(fnv1a(p.data(), p.nbytes())))) out.push_back(std::stoull(h));
    return out;
}

class Dist : public ::testing::Test {
protected:
    void SetUp() override { reset_bugs(); }
    void TearDown() override { reset_bugs(); }
    std::ostringstream log_;
};

// The equivalence the design promises: 2 ranks x 1 micro-batch of 8 rows = 1 rank x grad_accum 2 = 1 rank x
// 16 rows. The first loss is the same bits (the same forward, summed in the same order); the parameters
// after 5 steps agree to float rounding, because a single process accumulates micro-batch 2's gradient
// into micro-batch 1's inside the backward kernels (GEMM with beta = 1, row sums into the norm gains),
// while two ranks add two finished gradients: the same sum, other roundings.
TEST_F(Dist, TwoRanksTrainLikeOneRankWithGradAccumAndLikeOneBigBatch) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("equivalence");
    SingleComm single;
    Trainer ranks2(tiny(dir + "/ranks2", {}), log_);
    Trainer accum(tiny(concat(dir, "/accum", world().rank()), {"train.grad_accum=2"}), log_, &single);
    Trainer big(tiny(concat(dir, "/big", world().rank()), {"train.batch_size=16"}), log_, &single);
    for (int step = 0; step < 5; ++step) {
        const StepMetrics a = ranks2.train_step(), b = accum.train_step(), c = big.train_step();
        EXPECT_EQ(a.supervised_tokens, b.supervised_tokens);
        EXPECT_EQ(a.supervised_tokens, c.supervised_tokens);
        EXPECT_EQ(a.tokens, b.tokens);
        if (step == 0) {
            EXPECT_EQ(a.loss, b.loss) << "the first step's loss: the same forward, summed in the same order";
            EXPECT_NEAR(a.loss, c.loss, 1e-12 * c.loss);
        }
        EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-5 * b.grad_norm) << "step " << step + 1;
    }
    const double vs_accum = relative_difference(params_of(ranks2), params_of(accum));
    const double vs_big = relative_difference(params_of(ranks2), params_of(big));
    if (world().rank() == 0) {
        std::cout << "[measured] parameters after 5 steps, 2 ranks vs 1 rank x grad_accum 2: " << vs_accum
                  << " normwise; vs 1 rank x 16 rows: " << vs_big << "\n";
    }
    EXPECT_LT(vs_accum, 1e-5);
    EXPECT_LT(vs_big, 1e-5);
    EXPECT_EQ(ranks2.invariants().violations("dist.step_matches_one_process"), 0);
    EXPECT_EQ(ranks2.invariants().evaluations("dist.step_matches_one_process"), 1);
}

// train.deterministic: the gradient sum is taken in rank order on rank 0 and sent back, so a 2-rank run
// repeats bitwise, and every replica holds the same bits. The library's all-reduce (deterministic =
// false) is compared too: with two ranks it is one commutative add per element, the same bits again.
TEST_F(Dist, TwoRankRunRepeatsBitwiseAndTheReplicasAreEqual) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("repeat");
    std::vector<std::vector<float>> runs;
    for (const char* deterministic : {"train.deterministic=true", "train.deterministic=true", "train.deterministic=false"}) {
        Trainer t(tiny(concat(dir, "/run", runs.size()), {deterministic}), log_);
        for (int step = 0; step < 5; ++step) t.train_step();
        const std::vector<uint64_t> hashes = rank_param_hashes(t);
        EXPECT_EQ(hashes[0], hashes[1]) << deterministic << ": the replicas differ after 5 steps";
        runs.push_back(params_of(t));
    }
    EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[2].data(), runs[0].size() * sizeof(float)));
}

// A NaN in rank 1's own gradient: the sum carries it to every rank, every rank skips the step alike, the
// invariant names rank 1, and the replicas stay equal and finite.
TEST_F(Dist, NonFiniteGradientOnOneRankSkipsTheStepOnEveryRank) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("nonfinite");
    Trainer t(tiny(dir, {"invariants={\"default\": \"warn\"}", "tracer.enabled=false"}), log_);
    t.set_grad_hook([](int64_t step, Arena& grads) {
        if (step == 2 && world().rank() == 1) grads.at(0).ptr<float>()[0] = std::numeric_limits<float>::quiet_NaN();
    });
    std::vector<bool> skipped;
    for (int step = 0; step < 5; ++step) skipped.push_back(t.train_step().skipped);
    EXPECT_EQ(skipped, (std::vector<bool>{false, false, true, false, false}));
    EXPECT_EQ(t.invariants().violations("grad.finite_on_all_ranks"), 1);
    EXPECT_NE(t.invariants().last_message("grad.finite_on_all_ranks").find("rank(s) 1 of 2"), std::string::npos)
        << t.invariants().last_message("grad.finite_on_all_ranks");
    const std::vector<uint64_t> hashes = rank_param_hashes(t);
    EXPECT_EQ(hashes[0], hashes[1]);
    for (float p : params_of(t)) ASSERT_TRUE(std::isfinite(p));
}

// dist.params_in_sync observes the replicas, not a switch: here a user's code changes one weight on rank
// 1 between steps (a per-rank load, an in-place edit). Silent without it.
TEST_F(Dist, ParamsInSyncFiresWhenOneReplicaIsChangedAndStaysSilentOtherwise) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("in_sync");
    for (bool change : {false, true}) {
        Trainer t(tiny(concat(dir, "/", change), {"invariants={\"default\": \"warn\"}", "dist.sync_check_every=1"}), log_);
        t.train_step();
        if (change && world().rank() == 1) t.model().params().at(3).ptr<float>()[5] += 1e-3f;
        t.train_step();
        t.train_step();
        EXPECT_EQ(t.invariants().evaluations("dist.params_in_sync"), 3);
        EXPECT_EQ(t.invariants().violations("dist.params_in_sync") > 0, change);
        if (change) {
            EXPECT_NE(t.invariants().last_message("dist.params_in_sync").find("rank(s) 1 differ"), std::string::npos);
        }
    }
}

// A replica that loads its own weights after the broadcast is caught before its first update.
TEST_F(Dist, ParamsInSyncCatchesAReplicaWithItsOwnWeightsAtStepZero) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("own_init");
    Trainer t(tiny(dir, {"invariants={\"default\": \"warn\"}"}), log_);
    if (world().rank() == 1) t.model().init_weights(99);
    t.train_step();
    EXPECT_EQ(t.invariants().violations("dist.params_in_sync"), 1);
    EXPECT_NE(t.invariants().last_message("dist.params_in_sync").find("step 0"), std::string::npos);
}

// Every process believes it is rank 0 (a launcher or wrapper bug): each trains on the first slice, which
// dist.batches_disjoint sees in the ranks' batch hashes. Silent with the true ranks.
class EveryoneIsRankZero final : public Comm {
public:
    int rank() const override { return 0; }
    int size() const override { return world().size(); }
    std::string backend() const override { return "mpi, every rank told it is 0"; }
    void allreduce_sum(float* d, int64_t n, bool det) override { world().allreduce_sum(d, n, det); }
    void allreduce_sum(double* d, int64_t n) override { world().allreduce_sum(d, n); }
    void broadcast(void* d, int64_t bytes, int root) override { world().broadcast(d, bytes, root); }
    std::vector<std::string> allgather(const std::string& s) override { return world().allgather(s); }
    void barrier() override { world().barrier(); }
    void abort_all(int code) override { world().abort_all(code); }
};

TEST_F(Dist, BatchesDisjointFiresWhenEveryProcessThinksItIsRankZero) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("disjoint");
    EveryoneIsRankZero liar;
    for (bool lie : {false, true}) {
        const RunConfig config = tiny(concat(dir, "/", lie),
                                      {"invariants={\"default\": \"warn\"}", "dist.check_first_step=false"});
        Trainer t(config, log_, lie ? &liar : &world());
        t.train_step();
        t.train_step();
        EXPECT_EQ(t.invariants().violations("dist.batches_disjoint"), lie ? 2 : 0);
    }
}

// dist.step_matches_one_process compares the reduced gradient with one process's on the whole global
// batch: a rank whose contribution is lost (its gradient zeroed before the all-reduce) is caught at the
// first step. Silent without it (and measured in the equivalence test above).
TEST_F(Dist, StepMatchesOneProcessFiresWhenARankContributesNothing) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("one_process");
    for (bool lose : {false, true}) {
        Trainer t(tiny(concat(dir, "/", lose), {"invariants={\"default\": \"warn\"}"}), log_);
        if (lose) t.set_grad_hook([](int64_t, Arena& grads) { if (world().rank() == 1) grads.zero(); });
        t.train_step();
        EXPECT_EQ(t.invariants().violations("dist.step_matches_one_process"), lose ? 1 : 0)
            << t.invariants().last_message("dist.step_matches_one_process");
    }
}

// Bad input: a config that differs between ranks, a global batch the ranks do not divide, a checkpoint
// of another global batch. Each is refused on every rank with the field and what was expected.
TEST_F(Dist, ConfigsThatDifferBetweenRanksAreRefusedNamingTheKey) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("mismatch");
    const std::vector<std::string> extra = {world().rank() == 1 ? "train.batch_size=4" : "train.batch_size=8"};
    std::string message;
    try {
        Trainer t(tiny(dir, extra), log_);
    } catch (const Error& e) {
        message = e.what();
    }
    EXPECT_NE(message.find("rank 1 has /train/batch_size = 4 where rank 0 has 8"), std::string::npos) << message;
}

TEST_F(Dist, GlobalBatchMustSplitEvenlyOverTheRanks) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("global_batch");
    std::string message;
    try {
        Trainer t(tiny(dir + "/24", {"train.global_batch=24"}), log_);
    } catch (const Error& e) {
        message = e.what();
    }
    EXPECT_NE(message.find("train.global_batch = 24 rows cannot be split over 2 rank(s) x train.batch_size = 8"),
              std::string::npos) << message;
    EXPECT_NE(message.find("multiple of 16"), std::string::npos) << message;
    Trainer t(tiny(dir + "/32", {"train.global_batch=32"}), log_);
    EXPECT_EQ(t.config().train.grad_accum, 2);
}

// Checkpoints: rank 0 writes them. A 2-rank run resumes on 2 ranks bitwise; on 1 rank it resumes when the
// global batch is kept (train.global_batch = 16: grad_accum 2) and continues within float rounding; with
// another global batch it is refused, saying what to set.
TEST_F(Dist, CheckpointResumesOnTwoRanksBitwiseAndOnOneRankWithTheSameGlobalBatch) {
    REQUIRE_TWO_RANKS();
    const std::string dir = shared_dir("resume");
    Trainer original(tiny(dir + "/run", {}), log_);
    original.train_step();
    original.train_step();
    original.save_checkpoint();
    world().barrier();   // rank 0 has written it
    const std::string checkpoint = dir + "/run/checkpoints/step_0000002";
    original.train_step();
    original.train_step();

    Trainer again(tiny(dir + "/run", {}), log_);
    again.resume(checkpoint);
    again.train_step();
    again.train_step();
    const std::vector<float> want = params_of(original), got = params_of(again);
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)));

    SingleComm single;
    Trainer one_rank(tiny(concat(dir, "/one", world().rank()), {"train.global_batch=16"}), log_, &single);
    one_rank.resume(checkpoint);
    one_rank.train_step();
    one_rank.train_step();
    const double difference = relative_difference(params_of(one_rank), want);
    if (world().rank() == 0) std::cout << "[measured] resumed on 1 rank vs continued on 2: " << difference << " normwise\n";
    EXPECT_LT(difference, 1e-5);

    Trainer other_batch(tiny(concat(dir, "/other", world().rank()), {}), log_, &single);
    std::string message;
    try {
        other_batch.resume(checkpoint);
    } catch (const Error& e) {
        message = e.what();
    }
    EXPECT_NE(message.find("global batch of 16 rows per step (2 rank(s)); this run has 8"), std::string::npos) << message;
    EXPECT_NE(message.find("Set train.global_batch = 16"), std::string::npos) << message;
}

// The four data-parallel entries of the failure catalog, both halves on 2 ranks: each detector fires with its
// switch and stays silent without it, and the docs page quotes the figures the report prints.
TEST_F(Dist, CatalogEntriesSeparateAndTheirPagesQuoteTheReport) {
    REQUIRE_TWO_RANKS();
    int entries = 0;
    for (const FailureScenario& s : failure_catalog()) {
        if (s.ranks == 1) continue;
        ++entries;
        const std::string dir = shared_dir("failure_" + s.id);
        std::ostringstream out;
        const FailureReport report = run_failure(s.id, dir, out);
        EXPECT_TRUE(report.with_bug.detector_fired) << s.id << ": the detector missed the bug";
        EXPECT_FALSE(report.without_bug.detector_fired) << s.id << ": false alarm: " << report.without_bug.detector_message;
        EXPECT_TRUE(bugs() == Bugs{}) << s.id << " left a bug switch on";
        if (world().rank() == 0) {
            EXPECT_TRUE(fs::exists(fs::path(dir) / (s.id + ".svg")));
            testing::expect_page_quotes_report(s.id, out.str());
        } else {
            EXPECT_EQ(out.str(), "") << "only rank 0 prints the report";
        }
    }
    EXPECT_EQ(entries, 4);
}

}  // namespace
}  // namespace reftrain
