// probes/failures_dist.cpp — the data-parallel entries of the failure catalog: clip-per-rank,
// grads-not-averaged, data-not-sharded, init-not-broadcast. Each needs two ranks:
//     mpirun -np 2 build/reftrain failure run clip-per-rank      (or: failure run dist, all four)
// Both ranks run both halves; rank 0 prints the report. The detectors read what the ranks hold (parameter
// hashes, batch hashes, the reduced gradient against one process's), never the switch.
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "probes/failure_kit.h"
#include "probes/failures.h"
#include "train/dist.h"
#include "train/trainer.h"

namespace reftrain {

namespace {

using failure_kit::fmt;
using failure_kit::log_of;
using failure_kit::read_invariant;
using failure_kit::scenario_config;

constexpr int64_t kSteps = 20;

// How far the replicas are apart: the largest over ranks of |p_r - p_0| / |p_0| (0 while they are equal).
// Collective: every rank calls it.
double replica_gap(Trainer& trainer) {
    const Arena& params = trainer.model().params();
    const float* p = reinterpret_cast<const float*>(params.data());
    const size_t n = params.nbytes() / sizeof(float);
    std::vector<float> rank0(p, p + n);
    trainer.comm().broadcast(rank0.data(), static_cast<int64_t>(n * sizeof(float)), 0);
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; ++i) {
        diff += (static_cast<double>(p[i]) - rank0[i]) * (static_cast<double>(p[i]) - rank0[i]);
        norm += static_cast<double>(rank0[i]) * rank0[i];
    }
    double gap = std::sqrt(diff / norm);
    for (const std::string& g : trainer.comm().allgather(concat(gap))) gap = std::max(gap, std::stod(g));
    return gap;
}

RunConfig dist_config(const FailureContext& ctx, std::vector<std::string> extra) {
    extra.push_back("dist.sync_check_every=1");   // compare the replicas at every step, so the curve shows when
    return scenario_config(ctx, extra);
}

// Trains kSteps steps; the curve is the replica gap after each step, the loss beside it.
void train_replicas(FailureHalf& half, Trainer& trainer, const std::string& watch) {
    half.curve_name = "replica gap |p_r - p_0| / |p_0|";
    for (int64_t i = 0; i < kSteps; ++i) {
        const StepMetrics m = trainer.train_step();
        half.curve.push_back(replica_gap(trainer));
        half.loss.push_back(m.loss);
        if (half.detector_step < 0 && trainer.invariants().violations(watch) > 0) half.detector_step = i;
    }
}

// clip-per-rank and init-not-broadcast: the replicas' gap per step and dist.params_in_sync. The first
// number is the gap after one step, or (`from_start`, the init) before any step.
FailureHalf run_replica_drift(const FailureContext& ctx, bool from_start) {
    Trainer trainer(dist_config(ctx, {}), log_of(ctx));
    FailureHalf half;
    const double before = from_start ? replica_gap(trainer) : 0.0;
    train_replicas(half, trainer, "dist.params_in_sync");
    if (from_start) {
        if (trainer.invariants().violations("dist.params_in_sync") > 0) half.detector_step = 0;  // before any update
        half.numbers.push_back({"replica gap before the first step", fmt(before, 3)});
    } else {
        half.numbers.push_back({"replica gap after 1 step", fmt(half.curve.front(), 3)});
    }
    half.numbers.push_back({"replica gap after " + std::to_string(kSteps) + " steps", fmt(half.curve.back(), 3)});
    read_invariant(half, trainer, "dist.params_in_sync");
    return half;
}

FailureHalf run_clip_per_rank(const FailureContext& ctx) { return run_replica_drift(ctx, false); }
FailureHalf run_init_not_broadcast(const FailureContext& ctx) { return run_replica_drift(ctx, true); }

FailureHalf run_grads_not_averaged(const FailureContext& ctx) {
    Trainer trainer(dist_config(ctx, {}), log_of(ctx));
    FailureHalf half;
    half.curve_name = "gradient norm (before clipping)";
    failure_kit::train_into(half, trainer, kSteps, &StepMetrics::grad_norm, "dist.step_matches_one_process");
    half.numbers.push_back({"gradient norm at step 1", fmt(half.curve.front(), 4)});
    half.numbers.push_back({"loss after " + std::to_string(kSteps) + " steps", fmt(half.loss.back(), 4)});
    read_invariant(half, trainer, "dist.step_matches_one_process");
    return half;
}

FailureHalf run_data_not_sharded(const FailureContext& ctx) {
    Trainer trainer(dist_config(ctx, {}), log_of(ctx));
    FailureHalf half;
    half.curve_name = "loss";
    int64_t distinct_rows = 0;   // rows of different content trained per step, over all ranks
    for (int64_t i = 0; i < kSteps; ++i) {
        half.curve.push_back(trainer.train_step().loss);
        std::vector<std::string> hashes = trainer.comm().allgather(std::to_string(trainer.last_batch_hash()));
        std::sort(hashes.begin(), hashes.end());
        distinct_rows += static_cast<int64_t>(std::unique(hashes.begin(), hashes.end()) - hashes.begin()) *
                         trainer.config().train.batch_size * trainer.config().train.grad_accum;
        if (half.detector_step < 0 && trainer.invariants().violations("dist.batches_disjoint") > 0) half.detector_step = i;
    }
    half.numbers.push_back({"distinct rows trained per step (2 ranks)", std::to_string(distinct_rows / kSteps)});
    half.numbers.push_back({"loss after " + std::to_string(kSteps) + " steps", fmt(half.curve.back(), 4)});
    half.numbers.push_back({"loss on fixed training rows", fmt(failure_kit::fixed_rows_loss(trainer), 4)});
    read_invariant(half, trainer, "dist.batches_disjoint");
    return half;
}

}  // namespace

std::vector<FailureScenario> dist_failure_scenarios() {
    std::vector<FailureScenario> c;
    c.push_back({
        .id = "clip-per-rank",
        .title = "Each rank clips with its own gradient norm",
        .source = "nanochat (Karpathy, 2025): every rank must clip, and skip on inf, alike",
        .bug = "the clip coefficient max_norm / norm comes from the rank's own gradient, measured before the "
               "all-reduce, and is applied to the summed gradient",
        .symptom = "the ranks apply different updates from the first clipped step: the replicas drift apart, and "
                   "the checkpoint holds only rank 0's copy",
        .detector = "dist.params_in_sync: the ranks' parameter hashes differ (checked every dist.sync_check_every steps)",
        .fix = "clip (and decide to skip) after the all-reduce, from the reduced gradient, which every rank holds alike",
        .run = run_clip_per_rank,
        .ranks = 2,
    });
    c.push_back({
        .id = "grads-not-averaged",
        .title = "The ranks' mean gradients are summed",
        .source = "data-parallel practice (DDP divides the summed gradient by the world size)",
        .bug = "each rank weights its micro-batches by its own token count (its own mean), and the all-reduce sums "
               "the ranks: the gradient is N times the global batch's",
        .symptom = "the gradient norm is N times one process's on the same batch; with SGD the effective learning "
                   "rate is N times too high, with AdamW the clip engages N times too early",
        .detector = "dist.step_matches_one_process: rank 0 recomputes the first step's gradient alone on the whole "
                    "global batch and compares",
        .fix = "weight each micro-batch by n_i / (the global batch's supervised tokens) and SUM over ranks, or divide "
               "the sum of rank means by the number of ranks",
        .run = run_grads_not_averaged,
        .ranks = 2,
    });
    c.push_back({
        .id = "data-not-sharded",
        .title = "Every rank trains on the same rows",
        .source = "data-parallel practice (DistributedSampler's rank and num_replicas)",
        .bug = "every rank keeps the first slice of the global batch instead of its own",
        .symptom = "N ranks learn like one at N times the cost: the other ranks' compute repeats rank 0's rows",
        .detector = "dist.batches_disjoint: the hashes of the token ids each rank trained on, compared every step",
        .fix = "rank r takes micro-batches [r k, (r + 1) k) of the global batch (a sampler keyed by rank and world size)",
        .run = run_data_not_sharded,
        .ranks = 2,
    });
    c.push_back({
        .id = "init-not-broadcast",
        .title = "Replicas start from different weights",
        .source = "data-parallel practice (DDP broadcasts rank 0's parameters at construction)",
        .bug = "each rank initialises from seed + rank and rank 0's weights are never sent",
        .symptom = "the replicas disagree from step 0 and never meet: each applies the same averaged update to its "
                   "own weights",
        .detector = "dist.params_in_sync at step 0, before the first update",
        .fix = "broadcast rank 0's parameters after the init (and after loading a checkpoint), or prove them equal by hash",
        .run = run_init_not_broadcast,
        .ranks = 2,
    });
    return c;
}

}  // namespace reftrain
