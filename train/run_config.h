// train/run_config.h — the configuration of one training run: JSON file + `--set key=value` overrides.
//
// Every key has a default (default_run_config(), printed by `reftrain train --print-defaults`); a
// config file only names what it changes. Merging is strict: an unknown key anywhere fails with the
// file, the dotted key and the closest known key, and a value of the wrong JSON type fails naming the
// key and the expected type — a typo in a config must never be silently ignored. The resolved config
// is printed at start-up and stored in every checkpoint (run.json), so a run can always be repeated.
//
// Sections: run_dir, seed, threads; model (HF config fields, vocab_size 0 = the tokenizer's);
// data (task or JSONL, template, tokenizer, example counts, packing); train (batch, accumulation,
// steps, clipping, AdamW); schedule (train/schedule.h); eval; log; checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/prepare.h"
#include "model/config.h"
#include "train/adamw.h"
#include "train/schedule.h"

namespace reftrain {

struct TrainConfig {
    int64_t batch_size = 32;                  // rows per micro-batch
    int64_t seq_len = 64;                     // T
    int64_t grad_accum = 1;                   // micro-batches per optimizer step, on each rank
    // Rows per optimizer step over all ranks. 0 = batch_size x grad_accum x ranks. Set, it fixes the global
    // batch whatever the number of ranks: grad_accum becomes global_batch / (batch_size x ranks), which
    // must divide exactly, so a run resumes on another number of ranks as the same run (docs/distributed.md).
    int64_t global_batch = 0;
    int64_t max_steps = 1000;                 // optimizer steps
    double grad_clip = 1.0;                   // global-norm clip; <= 0 disables (the norm is still logged)
    // "tokens": each micro-batch's mean loss is weighted by its share of the step's supervised
    // tokens, so k micro-batches give exactly the gradient of one big batch. "micro_batches": each is
    // divided by k, which equals the big batch only when every micro-batch supervises as many tokens.
    std::string loss_normalization = "tokens";
    // Compute precision: "fp32", or "bf16" / "fp16" emulated on the CPU by rounding where a GPU would
    // (fp32 master weights and optimizer; docs/precision.md). fp16 turns on the dynamic loss scaler.
    std::string precision = "fp32";
    // Where the training step runs: "cpu" (the reference) or "cuda" (model/transformer_cuda.h; needs a
    // build with the CUDA backend and a device). Evaluation, sampling and checkpoints stay on the CPU
    // model, which receives the GPU's weights before each eval and checkpoint.
    std::string device = "cpu";
    // GPU determinism mode (kernels/cuda/device.h): bitwise-repeatable library algorithms. The CPU is
    // always deterministic.
    bool deterministic = true;
    // The loss-spike detector (train/loss_spike.h): a step whose loss lies loss_spike_z standard
    // deviations above the last loss_spike_window steps' mean is reported (invariant loss.no_spike, with
    // the rows of the batch ranked by their loss) and, with loss_spike_skip, not applied. 0 = off.
    double loss_spike_z = 0.0;
    int64_t loss_spike_window = 20;
    bool loss_spike_skip = false;
    AdamWConfig adamw;                        // lr comes from the schedule
};

// Data-parallel runs under mpirun (train/dist.h, docs/distributed.md); ignored by one process.
struct DistConfig {
    int64_t sync_check_every = 50;        // dist.params_in_sync: parameter hashes compared at step 0 and every K steps
    bool check_first_step = true;         // dist.step_matches_one_process at a run's first step (rank 0 recomputes
                                          // the global batch's gradient alone, once: N times a step)
    bool allow_global_batch_change = false;  // resume a checkpoint written with another global batch
};

struct TracerConfig {
    bool enabled = true;          // the frame-buffered NaN tracer (debug/tracer.h), on by default
    int64_t frames = 21;          // K frames of run-up kept
    std::string policy = "stop";  // on the first non-finite value: "stop" the run or "skip" the step
    int64_t summary_every = 25;   // a "tracer" line in metrics.jsonl every N steps (0: never), and the whole
                                  // run-up of frames on a trip (debug/tracer_summary.h, docs/report.md)
};

struct LossScalerSettings {       // used when train.precision = "fp16" (train/loss_scaler.h)
    double init_scale = 65536.0;
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    int64_t growth_interval = 2000;
};

struct EvalConfig {
    int64_t every = 200;                      // optimizer steps between evals (0 = only at the end)
    int64_t exact_match_examples = 200;       // val problems answered greedily and verified
    int64_t samples = 3;                      // printed examples per eval
    int64_t max_new_tokens = 32;
    bool final_test = true;                   // score the test split once at the end
    // > 0: stop training at the first eval (every `every` steps) whose val exact match reaches this
    // fraction: a model of controlled strength, whatever the BLAS kernel's rounding did to the curve
    // (scripts/grpo_demo.sh's weak model). 0 = train to max_steps.
    double stop_at_exact_match = 0.0;
};

struct RunConfig {
    std::string run_dir = "runs/run";
    uint64_t seed = 1;
    int64_t threads = 0;                      // OpenMP threads; 0 = leave the default
    nlohmann::json model;                     // HF config fields; vocab_size 0 = the tokenizer's
    DataConfig data;
    TrainConfig train;
    ScheduleConfig schedule;                  // total_steps 0 = train.max_steps
    EvalConfig eval;
    TracerConfig tracer;
    LossScalerSettings loss_scaler;
    DistConfig dist;
    int64_t log_every = 10;
    bool tensorboard = true;                  // also write TensorBoard event files into run_dir (train/run_log.h)
    int64_t checkpoint_every = 0;             // 0 = only at the end
    // How many step_* checkpoints stay on disk: the newest N (0 = all). The one checkpoints/latest names is
    // always among them. A long run then does not fill the disk (docs/training.md, "Checkpoints").
    int64_t checkpoint_keep = 3;
    // Also keep the checkpoint with the lowest validation loss (recorded in checkpoints/best.json). Only
    // checkpoints written right after an eval take part: let eval.every divide checkpoint_every.
    bool checkpoint_keep_best = false;
    std::string resume;                       // checkpoint dir, "latest" (run_dir's newest), or ""
    // Invariant modes, {"default": "warn", "mask.has_supervised_tokens": "fatal", ...}
    // (debug/invariants.h; an unknown name is refused when the trainer configures its registry).
    nlohmann::json invariants = nlohmann::json(nlohmann::json::value_t::object);
    // Bug switches of the failure catalog, {"forgot-zero-grad": true} (kernels/bugs.h). For
    // experiments: a run with any switch on says so at start.
    nlohmann::json bugs = nlohmann::json(nlohmann::json::value_t::object);

    nlohmann::json resolved;                  // the full JSON this was parsed from (printed, saved)
};

nlohmann::json default_run_config();

// The one way every config (run, PPO, GRPO) is loaded: `defaults`, then the file at `path` (none when
// empty; read by read_json_file, kernels/json_strict.h), then each "key=value" of `sets`, all merged
// strictly. `what` names the kind ("PPO config"); a file's "algorithm" must be `algorithm` ("" for a
// run config, which names none) and is kept only when the defaults have it. `source` is what error
// messages name: the file or the defaults, and "with its --set overrides" when there are some.
struct MergedConfig {
    nlohmann::json json;
    std::string source;
};
MergedConfig merge_config_sources(nlohmann::json defaults, const std::string& what, const std::string& algorithm,
                                  const std::string& path, const std::vector<std::string>& sets);
// Strictly merges `overrides` into `base`; `source` names the file in errors.
void merge_config(nlohmann::json& base, const nlohmann::json& overrides, const std::string& source);
// Applies one "dotted.key=value" override; value is parsed as JSON when it is valid JSON, else taken
// as a string ("data.task=reversal" and "train.lr=3e-4" both work).
void apply_set(nlohmann::json& config, const std::string& assignment);

// Reads `path` (empty = defaults only), applies the overrides, validates, returns the typed config.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& sets);
RunConfig parse_run_config(const nlohmann::json& resolved, const std::string& source);
// A checkpoint's run.json (`source` names it): merged strictly onto the defaults, then parsed, so keys a
// checkpoint of an older version lacks take their defaults instead of failing as missing.
RunConfig parse_saved_run_config(const nlohmann::json& saved, const std::string& source);

}  // namespace reftrain
