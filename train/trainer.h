// train/trainer.h — the supervised fine-tuning / pretraining loop behind `reftrain train`.
//
// One optimizer step (Trainer::train_step):
//   1. draw the step's k = grad_accum micro-batches from the packer and count their supervised tokens
//   2. zero the gradients ONCE, then forward + backward each micro-batch with weight
//        n_i / sum_j n_j   ("tokens", default: exactly the gradient of one batch of all k), or
//        1 / k             ("micro_batches": the textbook rule, equal to it only for equal n_i)
//   3. clip the global gradient norm (the PRE-clip norm is what gets logged)
//   4. AdamW with lr = schedule(optimizer step): the schedule counts optimizer steps, never micro-batches
// Every piece of state that decides the next step (weights, moments, step, data position, the sampling
// RNG) is in the checkpoint, so a resumed run continues bitwise (tests/test_trainer.cpp).
// The invariants of debug/invariants.h are checked where docs/invariants.md says: the data when it is
// rendered, the optimizer grouping at start, and in every step the mask, the zeroed gradients, the
// schedule's step, the loss (and on the first step of a fresh run, the loss against ln V).
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "data/packing.h"
#include "data/prepare.h"
#include "debug/invariants.h"
#include "debug/tracer.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/dist.h"
#include "train/loss_spike.h"
#include "train/loss_scaler.h"
#include "train/evaluate.h"
#include "train/run_config.h"
#include "train/run_log.h"

namespace reftrain {

// The run's model config: config.model with vocab_size 0 replaced by the tokenizer's size; fails when
// an explicit vocab_size is too small or train.seq_len exceeds max_position_embeddings.
ModelConfig model_config_for_run(const RunConfig& config, int64_t tokenizer_vocab_size);

struct StepMetrics {
    int64_t step = 0;                 // optimizer steps done after this one
    double loss = 0.0;                // mean CE over the step's supervised tokens
    double lr = 0.0;
    double grad_norm = 0.0;           // before clipping
    double loss_scale = 1.0;          // fp16's dynamic loss scale used in this step (1 otherwise)
    bool skipped = false;             // no update: non-finite gradients (loss scaler / tracer policy skip)
    int64_t tokens = 0;               // B * T * k
    int64_t supervised_tokens = 0;       // over the global batch (all ranks)
    double seconds = 0.0;
    double allreduce_seconds = 0.0;      // the gradient all-reduce's share of `seconds` (0 for one process)
};

struct EvalMetrics {
    double val_loss = 0.0;
    int64_t val_tokens = 0;
    double exact_match = -1.0;        // fraction of verified answers; -1 when there is no task
    int64_t exact_match_examples = 0;
    std::vector<EvalSample> samples;  // the ones shown (eval.samples), also kept in metrics.jsonl
};

class Trainer {
public:
    // Builds data, model (seeded init), optimizer and packer. `out` receives the human-readable log.
    // `comm` = the ranks of a data-parallel run (train/dist.h); null = world(), which is one process
    // unless the program was started by mpirun. Only rank 0 writes the log, metrics and checkpoints.
    Trainer(const RunConfig& config, std::ostream& out, Comm* comm = nullptr);
    ~Trainer();

    StepMetrics train_step();
    EvalMetrics evaluate(int64_t show_samples);
    // Saves run_dir/checkpoints/step_NNNNNNN and points run_dir/checkpoints/latest at it.
    std::string save_checkpoint();
    void resume(const std::string& checkpoint_dir);   // "latest" = the run's newest
    // The whole run: resume if configured, the loop with progress, evals, checkpoints, final test.
    void run();
    // The signal (SIGINT or SIGTERM) that stopped the last run() early, after it finished the step in
    // flight and saved a checkpoint; 0 when it ran to the end. A second signal ends the process at once.
    int stopped_by_signal() const { return stopped_by_signal_; }

    // True when the training step runs on the GPU (train.device = "cuda"); model() is then the CPU copy
    // used for evaluation and checkpoints, refreshed from the GPU by sync_from_gpu().
    bool on_gpu() const { return gpu_ != nullptr; }
    void sync_from_gpu();
    Transformer& model() { return *model_; }
    AdamW& optimizer() { return *optimizer_; }
    Packer& packer() { return *packer_; }
    Invariants& invariants() { return invariants_; }
    FrameTracer* tracer() { return tracer_.get(); }   // null when tracer.enabled = false
    LossScaler& loss_scaler() { return loss_scaler_; }
    const RunData& data() const { return data_; }
    Comm& comm() { return comm_; }
    // The FNV-1a hash of the token ids this rank trained on in the last step (data-parallel runs only).
    uint64_t last_batch_hash() const { return last_batch_hash_; }
    const RunConfig& config() const { return config_; }
    int64_t step() const { return step_; }
    // Called on every CPU step after the backward passes and before clipping and the update, with the
    // optimizer step and the gradients: a user's gradient hook (inspect, or corrupt on purpose in tests).
    void set_grad_hook(std::function<void(int64_t step, Arena& grads)> hook) { grad_hook_ = std::move(hook); }

private:
    // The configured schedule as a function of the optimizer step, for the schedule invariants.
    std::function<double(int64_t)> schedule_at() const {
        return [schedule = config_.schedule](int64_t step) { return lr_at(schedule, step); };
    }
    RunConfig config_;
    Comm& comm_;
    std::ostream& out_;       // the caller's stream on rank 0; a sink on the other ranks
    Invariants invariants_;   // configured from config.invariants; checked in every step
    std::unique_ptr<FrameTracer> tracer_;   // records every named tensor of every step (debug/tracer.h)
    LossScaler loss_scaler_;                // enabled for fp16 only
    RunData data_;
    std::unique_ptr<Transformer> model_;
    std::unique_ptr<AdamW> optimizer_;
    std::unique_ptr<Packer> packer_;
    struct Gpu;                              // the GPU model and optimizer (train/trainer.cpp)
    std::unique_ptr<Gpu> gpu_;               // null unless train.device = "cuda"
    StepMetrics train_step_gpu(const std::vector<int64_t>& counts, int64_t total);
    int64_t step_ = 0;
    Rng sample_rng_;   // eval samples; in the checkpoint
    std::vector<std::vector<int64_t>> micro_ids_, micro_targets_;
    std::function<void(int64_t, Arena&)> grad_hook_;
    std::unique_ptr<LossSpikeDetector> spike_;   // null unless train.loss_spike_z > 0
    // Data-parallel pieces of the step (one process: none of them runs).
    void check_config_same_on_all_ranks();
    void check_params_in_sync();
    void exchange_batch_hashes(int local_finite);
    void check_against_one_process(const std::vector<int64_t>& counts, int64_t total, double scale);
    // dist.step_matches_one_process's normwise bound: the two differ only in the order of float additions.
    static constexpr double kOneProcessBound = 1e-4;
    int64_t global_batch_rows() const { return comm_.size() * config_.train.grad_accum * config_.train.batch_size; }
    int stopped_by_signal_ = 0;
    double last_val_loss_ = 0.0;           // the last eval's validation loss, at step last_val_step_
    int64_t last_val_step_ = -1;
    void prune_checkpoints();
    // metrics.jsonl and the TensorBoard events of a run (rank 0, inside run(); closed otherwise, when a
    // caller drives train_step() itself).
    RunLog log_;
    // "tracer" lines: every tracer.summary_every steps, and on a trip every frame of the run-up not yet
    // written (debug/tracer_summary.h).
    void log_tracer_frames(bool runup);
    // The terminal's progress line (train/progress.h), open while it is drawn. Anything else printed during
    // the run first clears it (the message takes its place; the next step draws it again below); the run's
    // end finishes it (the last state stays on the screen).
    bool bar_open_ = false;
    void clear_progress_line() {
        if (bar_open_) out_ << "\r\x1b[K";
        bar_open_ = false;
    }
    void finish_progress_line() {
        if (bar_open_) out_ << "\n";
        bar_open_ = false;
    }
    int64_t last_tracer_line_step_ = -1;   // the latest step with a tracer line
    int64_t last_runup_line_step_ = -1;    // the latest step written as part of a run-up
    int64_t first_step_of_process_ = -1;   // the first step this process ran (dist checks run there)
    uint64_t last_batch_hash_ = 0;
    int64_t local_first_ = 0;              // this rank's first micro-batch in micro_ids_ (the global batch)
    std::string describe_spike(const LossSpike& spike, const std::vector<std::vector<double>>& row_losses) const;
};

}  // namespace reftrain
