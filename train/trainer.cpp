// train/trainer.cpp — data preparation, the optimizer step, evaluation, checkpoints and the run loop.
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>

#include "debug/tracer_summary.h"
#include "kernels/bugs.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"
#include "model/generate.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#ifdef REFTRAIN_HAVE_CUDA
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "train/cuda_step.h"
#endif
#ifdef REFTRAIN_HAVE_NCCL
#include "train/dist_nccl.h"
#endif
#include "train/grad_clip.h"
#include "train/progress.h"
#include "train/schedule.h"

namespace reftrain {

namespace fs = std::filesystem;
using json = nlohmann::json;

ModelConfig model_config_for_run(const RunConfig& config, int64_t tokenizer_vocab_size) {
    nlohmann::json model_json = config.model;
    const int64_t vocab = model_json.at("vocab_size").get<int64_t>();
    if (vocab == 0) {
        model_json["vocab_size"] = tokenizer_vocab_size;
    } else {
        check(vocab >= tokenizer_vocab_size, "model.vocab_size = ", vocab, " is smaller than the tokenizer's ",
              tokenizer_vocab_size, " ids (set it to 0 to use the tokenizer's)");
    }
    ModelConfig model_config = ModelConfig::from_json(model_json, "run config 'model'");
    check(config.train.seq_len <= model_config.max_position_embeddings, "train.seq_len = ", config.train.seq_len,
          " exceeds model.max_position_embeddings = ", model_config.max_position_embeddings);
    return model_config;
}

// ---- the trainer --------------------------------------------------------------------------------------

#ifdef REFTRAIN_HAVE_CUDA
struct Trainer::Gpu {
#ifdef REFTRAIN_HAVE_NCCL
    std::unique_ptr<NcclComm> nccl;   // the gradient all-reduce of a data-parallel GPU run (null for one rank)
#endif
    std::unique_ptr<CudaTransformer> model;
    std::unique_ptr<CudaAdamW> optimizer;
};
#else
struct Trainer::Gpu {};
#endif

namespace {

// Where the ranks other than 0 write their log: nowhere (rank 0 owns the log, metrics and checkpoints).
std::ostream& null_stream() {
    static std::ostream sink(nullptr);
    return sink;
}

}  // namespace

Trainer::Trainer(const RunConfig& config, std::ostream& out, Comm* comm)
    : config_(config), comm_(comm ? *comm : world()), out_(comm_.rank() == 0 ? out : null_stream()),
      sample_rng_(Rng::for_name(config.seed, "eval.samples")) {
    if (config_.threads > 0) omp_set_num_threads(static_cast<int>(config_.threads));
    invariants_.set_stream(out_);
    invariants_.configure(config_.invariants, "run config 'invariants'");
    // Every violation on the run's timeline, at the step being computed (the report marks them).
    invariants_.set_listener([this](const std::string& name, const std::string& details, bool printed) {
        if (printed) clear_progress_line();   // the warning takes the progress line's place; the next step redraws it
        log_.write({{"kind", "invariant"}, {"step", step_ + 1}, {"name", name}, {"details", details}});
    });
    for (const auto& [name, on] : config_.bugs.items()) {
        set_bug(name, on.get<bool>());
        if (on.get<bool>()) out_ << "WARNING: bug switch '" << name << "' is ON (kernels/bugs.h): this run is wrong on purpose\n";
    }
    const int64_t ranks = comm_.size();
    if (ranks > 1) check_config_same_on_all_ranks();
    if (config_.train.global_batch > 0) {   // the global batch fixed; grad_accum follows from the rank count
        const int64_t global = config_.train.global_batch, per_micro = config_.train.batch_size * ranks;
        check(config_.train.grad_accum == 1, "run config: train.global_batch = ", global, " and train.grad_accum = ",
              config_.train.grad_accum, " are both set; set one (grad_accum = global_batch / (batch_size x ranks))");
        check(global % per_micro == 0, "run config: train.global_batch = ", global, " rows cannot be split over ", ranks,
              " rank(s) x train.batch_size = ", config_.train.batch_size, " rows: it must be a multiple of ", per_micro,
              " (nearest: ", std::max<int64_t>(per_micro, global / per_micro * per_micro), " or ",
              (global / per_micro + 1) * per_micro, "), or change the number of ranks or the batch size");
        config_.train.grad_accum = global / per_micro;
    }
    if (ranks > 1) {
        out_ << "data parallel: " << ranks << " ranks (" << comm_.backend() << "), each " << config_.train.grad_accum
             << " x " << config_.train.batch_size << " rows of the global batch of "
             << ranks * config_.train.grad_accum * config_.train.batch_size << " rows per step\n";
    }
    // Rank 0 prepares the data first (it may write the tokenizer cache); the others then read what it wrote.
    if (comm_.rank() != 0) comm_.barrier();
    data_ = prepare_run_data(config_.data, config_.train.seq_len, config_.seed, out_, &invariants_);
    if (comm_.rank() == 0 && ranks > 1) comm_.barrier();

    const ModelConfig model_config = model_config_for_run(config_, data_.tokenizer->vocab_size());
    config_.resolved["model"]["vocab_size"] = model_config.vocab_size;

    model_ = std::make_unique<Transformer>(model_config, config_.train.batch_size, config_.train.seq_len);
    if (bugs().init_not_broadcast) {   // BUG init-not-broadcast: each rank its own init, never synced
        model_->init_weights(config_.seed + static_cast<uint64_t>(comm_.rank()));
    } else {
        model_->init_weights(config_.seed);
        // Every rank computed the same init from the seed; rank 0's copy is sent anyway, so that the replicas
        // start equal even where an init is not reproducible. dist.params_in_sync checks it at step 0.
        comm_.broadcast(model_->params().data(), static_cast<int64_t>(model_->params().nbytes()), 0);
    }
    const DType precision = config_.train.precision == "bf16"   ? DType::BF16
                            : config_.train.precision == "fp16" ? DType::F16
                                                                : DType::F32;
    model_->set_precision(precision);
    LossScalerConfig scaler;
    scaler.enabled = precision == DType::F16;  // bf16 has fp32's exponent range: no scaling needed
    scaler.init_scale = config_.loss_scaler.init_scale;
    scaler.growth_factor = config_.loss_scaler.growth_factor;
    scaler.backoff_factor = config_.loss_scaler.backoff_factor;
    scaler.growth_interval = config_.loss_scaler.growth_interval;
    loss_scaler_ = LossScaler(scaler);
    if (config_.tracer.enabled) {
        FrameTracer::Options options;
        options.frames = static_cast<int>(config_.tracer.frames);
        // Every rank traces its own forward and backward; the others report into run_dir/rank<r> and stderr.
        options.run_dir = comm_.rank() == 0 ? config_.run_dir : concat(config_.run_dir, "/rank", comm_.rank());
        options.policy = config_.tracer.policy == "skip" ? FrameTracer::Policy::skip : FrameTracer::Policy::stop;
        options.log = comm_.rank() == 0 ? &out_ : &std::cerr;
        tracer_ = std::make_unique<FrameTracer>(options);
        model_->set_tracer(tracer_.get());
    }
    optimizer_ = std::make_unique<AdamW>(model_->params(), model_->grads(), config_.train.adamw);
    if (ranks > 1) {   // the all-reduce sums the gradient arena as one block of floats
        for (const Tensor& g : model_->grads().tensors()) {
            check(g.dtype == DType::F32, "data parallel: gradient '", g.name, "' is ", dtype_name(g.dtype),
                  "; the all-reduce sums fp32 gradients");
        }
    }
    check_schedule_completes_in_run(invariants_, config_.schedule.kind, config_.schedule.total_steps,
                                    config_.train.max_steps, config_.train.grad_accum);
    if (config_.train.device == "cuda") {
#ifdef REFTRAIN_HAVE_CUDA
        cuda::set_deterministic(config_.train.deterministic);
        gpu_ = std::make_unique<Gpu>();
        if (ranks > 1) {
#ifdef REFTRAIN_HAVE_NCCL
            // One GPU per rank (rank r on device r mod the devices of its host), chosen before anything is
            // allocated on it; the gradients are then summed by NCCL on the device (train/dist_nccl.h).
            const int devices = cuda::device_count();
            check(devices > 0, "train.device = \"cuda\": no CUDA device on rank ", comm_.rank());
            gpu_->nccl = std::make_unique<NcclComm>(comm_, comm_.rank() % devices);
#else
            fail("train.device = \"cuda\" with ", ranks, " ranks needs NCCL, and this build has none (configure with "
                 "NCCL found: nccl.h and libnccl; docs/distributed.md)");
#endif
        }
        gpu_->model = std::make_unique<CudaTransformer>(model_config, config_.train.batch_size, config_.train.seq_len,
                                                        CudaModelOptions{precision});
        gpu_->model->load_from(*model_);  // the same seeded init as the CPU
        gpu_->optimizer = std::make_unique<CudaAdamW>(*gpu_->model, config_.train.adamw);
        if (tracer_) gpu_->model->set_tracer(tracer_.get());
        out_ << "device: " << cuda::device_description(0) << ", precision " << config_.train.precision
             << (config_.train.deterministic ? ", deterministic" : "") << "\n";
#else
        fail("train.device = \"cuda\" but this build has no CUDA backend (configure with nvcc available and "
             "-DREFTRAIN_CUDA=ON; docs/cuda.md)");
#endif
    }
    // Observed, not asked: the tensors a zero-gradient AdamW step actually moves (train/adamw.h).
    const std::vector<std::string> decayed = tensors_decayed_by(model_->params(), config_.train.adamw);
    check_decay_only_matrices(invariants_, model_->params(), [&decayed](const std::string& name, const Tensor&) {
        return std::find(decayed.begin(), decayed.end(), name) != decayed.end();
    });
    if (config_.train.loss_spike_z > 0.0) {
        spike_ = std::make_unique<LossSpikeDetector>(config_.train.loss_spike_z, config_.train.loss_spike_window);
    }
    // Rows are padded with BOS, which the packer never supervises. BUG pad-is-eos-masked: padded with the
    // end-of-turn token instead (pad_token = eos_token), which the packer then masks by id.
    const int64_t pad_id = bugs().pad_is_eos_masked ? data_.chat->end_of_turn_id() : data_.chat->bos_id();
    packer_ = std::make_unique<Packer>(data_.train_docs, config_.train.seq_len, config_.data.bos_aligned,
                                       config_.seed, pad_id);
    // The whole global batch of a step: every rank draws it, and keeps its slice (train/dist.h).
    micro_ids_.resize(config_.train.grad_accum * ranks);
    micro_targets_.resize(config_.train.grad_accum * ranks);
}

Trainer::~Trainer() = default;

namespace {

// Micro-batch i's weight in the step's loss and gradient (train.loss_normalization; train/trainer.h), of
// `micro_batches` in the global batch (all ranks).
double micro_batch_weight(const TrainConfig& train, int64_t supervised, int64_t step_supervised, int64_t micro_batches) {
    if (train.loss_normalization != "tokens") return 1.0 / static_cast<double>(micro_batches);
    return step_supervised > 0 ? static_cast<double>(supervised) / static_cast<double>(step_supervised) : 0.0;
}

// tracer.policy = stop: the run ends at the first non-finite value, naming it.
[[noreturn]] void stop_at_first_nonfinite(const FrameTracer& tracer, int64_t step) {
    const FrameTracer::Incident& incident = *tracer.incident();
    fail("step ", step + 1, ": the first non-finite value is in '", incident.tensor, "' (written by ", incident.op,
         "); the run-up is printed above", incident.report_path.empty() ? "" : ", the report is in " + incident.report_path,
         ". Stopping (tracer.policy = stop; \"skip\" drops such steps instead)");
}

}  // namespace

StepMetrics Trainer::train_step() {
    const auto start = std::chrono::steady_clock::now();
    const int64_t k = config_.train.grad_accum, B = config_.train.batch_size, T = config_.train.seq_len;
    const int64_t ranks = comm_.size(), global_k = ranks * k;
    if (ranks > 1 && (first_step_of_process_ < 0 || step_ % config_.dist.sync_check_every == 0)) check_params_in_sync();
    // Draw all micro-batches of the global batch first: the "tokens" weighting needs the step's total of
    // supervised tokens over every rank, and each rank then knows it without asking the others.
    std::vector<int64_t> counts(global_k, 0);
    int64_t total = 0;
    for (int64_t i = 0; i < global_k; ++i) {
        packer_->next_batch(B, micro_ids_[i], micro_targets_[i]);
        for (int64_t t : micro_targets_[i]) counts[i] += t != cpu::kIgnoreIndex;
        total += counts[i];
    }

    check_has_supervised_tokens(invariants_, total, global_k * B * T, step_);
    for (int64_t i = 0; i < global_k; ++i) {
        check_mask_aligned_batch(invariants_, micro_ids_[i], micro_targets_[i], B, T, data_.chat->end_of_turn_id(), step_);
    }
    // This rank's slice [r k, (r + 1) k). BUG data-not-sharded: every rank takes the first slice.
    const int64_t first = bugs().data_not_sharded ? 0 : comm_.rank() * k;
    local_first_ = first;
    if (gpu_) {
        StepMetrics g = train_step_gpu(counts, total);
        g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return g;
    }

    StepMetrics m;
    std::vector<std::vector<double>> row_losses;   // [micro-batch][row], when the spike detector is on
    if (tracer_) tracer_->begin_step(step_);
    // fp16: the loss gradient is multiplied by the loss scale so small gradients survive fp16, and the
    // gradients are divided by it again before clipping and the update.
    const double scale = loss_scaler_.enabled() ? loss_scaler_.scale() : 1.0;
    m.loss_scale = scale;
    // Once per optimizer step, not per micro-batch: backward() accumulates.
    if (!bugs().forgot_zero_grad) model_->zero_grad();  // BUG forgot-zero-grad: last step's grads stay
    check_grad_zeroed(invariants_, model_->grads(), step_);
    // The weights are shares of the GLOBAL batch, so the ranks' gradients are summed, never averaged.
    // BUG grads-not-averaged: each rank's own mean (its own token total), and the ranks' means summed.
    int64_t weight_total = total, weight_micro = global_k;
    if (bugs().grads_not_averaged) {
        weight_total = std::accumulate(counts.begin() + first, counts.begin() + first + k, int64_t{0});
        weight_micro = k;
    }
    for (int64_t j = 0; j < k; ++j) {
        const int64_t i = first + j;
        const Tensor ids(micro_ids_[i].data(), DType::I64, {B, T}, "input_ids");
        const Tensor targets(micro_targets_[i].data(), DType::I64, {B, T}, "targets");
        const ForwardResult r = model_->forward(ids, targets);
        double weight = micro_batch_weight(config_.train, counts[i], weight_total, weight_micro);
        if (bugs().grad_accum_not_divided) weight = 1.0;  // BUG grad-accum-not-divided: k micro-batches summed
        if (r.supervised_tokens > 0) model_->backward(weight * scale);
        m.loss += weight * r.loss;
        if (spike_) {   // each row's own mean loss, for naming the rows of a spike
            const std::vector<double> logp = model_->target_logprobs();
            std::vector<double>& rows = row_losses.emplace_back(static_cast<size_t>(B), 0.0);
            for (int64_t b = 0; b < B; ++b) {
                int64_t n = 0;
                for (int64_t t = 0; t < T; ++t) {
                    if (micro_targets_[i][b * T + t] == cpu::kIgnoreIndex) continue;
                    rows[b] -= logp[b * T + t];
                    ++n;
                }
                rows[b] = n > 0 ? rows[b] / static_cast<double>(n) : 0.0;
            }
        }
    }
    if (grad_hook_) grad_hook_(step_, model_->grads());   // a user's gradient hook (set_grad_hook), per rank
    // Data parallel: the ranks' gradients summed into every rank's arena; from here on every rank holds
    // the same gradient, so every decision below (skip, clip, scale) comes out the same everywhere.
    double local_norm = 0.0;   // this rank's own gradient norm, before the sum (for BUG clip-per-rank)
    bool tripped = tracer_ && tracer_->tripped();
    if (ranks > 1) {
        local_norm = global_grad_norm(model_->grads());
        const auto reduce_start = std::chrono::steady_clock::now();
        Arena& grads = model_->grads();   // fp32 throughout: checked once, in the constructor
        comm_.allreduce_sum(reinterpret_cast<float*>(grads.data()), static_cast<int64_t>(grads.nbytes() / sizeof(float)),
                            config_.train.deterministic);
        // The step's loss and whether any rank's tracer saw a non-finite value, summed in rank order.
        double sums[2] = {m.loss, tripped ? 1.0 : 0.0};
        comm_.allreduce_sum(sums, 2);
        m.allreduce_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - reduce_start).count();
        m.loss = bugs().grads_not_averaged ? sums[0] / static_cast<double>(ranks) : sums[0];  // the mean of rank means
        tripped = sums[1] > 0.0;
        exchange_batch_hashes(std::isfinite(local_norm) ? 1 : 0);
        if (first_step_of_process_ < 0 && config_.dist.check_first_step) check_against_one_process(counts, total, scale);
    }
    if (first_step_of_process_ < 0) first_step_of_process_ = step_;
    bool spike_skip = false;
    if (spike_) {
        if (const std::optional<LossSpike> spike = spike_->observe(step_, m.loss)) {
            invariants_.report("loss.no_spike", false, describe_spike(*spike, row_losses));
            spike_skip = config_.train.loss_spike_skip;
        } else {
            invariants_.report("loss.no_spike", true);
        }
    }
    if (step_ == 0 && std::isfinite(m.loss)) check_init_loss(invariants_, m.loss, model_->config().vocab_size);
    const bool nonfinite_grads = loss_scaler_.enabled() && unscale_and_check(model_->grads(), scale);
    m.skipped = loss_scaler_.update(nonfinite_grads);  // fp16: skip the step and back off the scale
    m.skipped = m.skipped || spike_skip;
    if (tripped) {
        if (!m.skipped && tracer_->options().policy == FrameTracer::Policy::stop) {
            tracer_->end_step();
            log_tracer_frames(/*runup=*/true);
            if (tracer_->tripped()) stop_at_first_nonfinite(*tracer_, step_);
            fail("step ", step_ + 1, ": another rank's tracer found a non-finite value (its report names the tensor); "
                 "every rank stops (tracer.policy = stop)");
        }
        m.skipped = true;  // tracer.policy = skip, or the loss scaler already skips it
    }
    if (!m.skipped) check_loss_finite(invariants_, m.loss, step_);
    if (m.skipped) {
        m.grad_norm = std::numeric_limits<double>::quiet_NaN();
    } else if (bugs().clip_per_rank && ranks > 1) {
        // BUG clip-per-rank: the clip coefficient from this rank's own gradient norm, not the reduced one.
        m.grad_norm = local_norm;
        clip_to_norm(model_->grads(), local_norm, config_.train.grad_clip);
    } else {
        m.grad_norm = clip_grad_norm(model_->grads(), config_.train.grad_clip);
    }
    // A non-finite gradient would poison every weight through AdamW's moments: never apply it. The
    // invariant stops the run (fatal, the default) or skips the update (warn).
    if (!m.skipped && !std::isfinite(m.grad_norm) && !bugs().nonfinite_step_not_skipped) {  // BUG: applied anyway
        check_grad_norm_finite(invariants_, m.grad_norm, m.loss, step_);
        m.skipped = true;
    }
    // Indexed by the optimizer step. BUG scheduler-per-microbatch: indexed by micro-batches seen.
    const int64_t schedule_step = bugs().scheduler_per_microbatch ? step_ * k : step_;
    m.lr = lr_at(config_.schedule, schedule_step);
    if (!m.skipped) {
        optimizer_->step(m.lr);
        if (tracer_) tracer_->record("adamw.update", model_->params().tensors());
    }
    // The detector reads the LR the optimizer applied, not how the loop computed it.
    check_schedule_counts_optimizer_steps(invariants_, step_, m.skipped ? m.lr : optimizer_->last_lr(),
                                          schedule_at(), step_ * k, k);
    if (tracer_) {
        tracer_->end_step();
        log_tracer_frames(/*runup=*/tripped);
    }
    ++step_;
    m.step = step_;
    m.tokens = global_k * B * T;
    m.supervised_tokens = total;
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return m;
}

// ---- data parallel (train/dist.h) ---------------------------------------------------------------------

void Trainer::check_config_same_on_all_ranks() {
    const std::vector<std::string> all = comm_.allgather(config_.resolved.dump());
    std::string problems;
    const json reference = json::parse(all[0]);
    for (size_t r = 1; r < all.size(); ++r) {
        if (all[r] == all[0]) continue;
        const json theirs = json::parse(all[r]);
        const json patch = json::diff(reference, theirs);
        const std::string path = patch.empty() ? "" : patch[0].at("path").get<std::string>();
        const json::json_pointer pointer(path);
        const std::string at0 = reference.contains(pointer) ? reference[pointer].dump() : "(absent)";
        const std::string atr = theirs.contains(pointer) ? theirs[pointer].dump() : "(absent)";
        problems += concat(problems.empty() ? "" : "; ", "rank ", r, " has ", path.empty() ? "/" : path, " = ", atr,
                           " where rank 0 has ", at0, patch.size() > 1 ? concat(" (and ", patch.size() - 1, " more)") : "");
    }
    check(problems.empty(), "the ranks were started with different run configs: ", problems,
          ". Every rank must get the same --config file and --set overrides (mpirun passes one command line to all)");
}

// What each rank contributed to the step: the hash of the token ids it trained on (dist.batches_disjoint) and
// whether its own gradient was finite before the sum (grad.finite_on_all_ranks; -1 = not measured, the GPU).
void Trainer::exchange_batch_hashes(int local_finite) {
    const int64_t k = config_.train.grad_accum;
    uint64_t batch_hash = 1469598103934665603ull;
    for (int64_t j = 0; j < k; ++j) {
        const std::vector<int64_t>& ids = micro_ids_[local_first_ + j];
        batch_hash = fnv1a(ids.data(), ids.size() * sizeof(int64_t), batch_hash);
    }
    last_batch_hash_ = batch_hash;
    const std::vector<std::string> all = comm_.allgather(concat(local_finite, " ", batch_hash));
    std::vector<int> finite;
    std::vector<uint64_t> hashes;
    for (const std::string& entry : all) {
        std::istringstream in(entry);
        int f = 0;
        uint64_t h = 0;
        in >> f >> h;
        finite.push_back(f);
        hashes.push_back(h);
    }
    if (local_finite >= 0) check_grad_finite_on_all_ranks(invariants_, finite, step_);
    check_batches_disjoint(invariants_, hashes, step_);
}

void Trainer::check_params_in_sync() {
    sync_from_gpu();   // a GPU run's weights live on the device: compare those
    const Arena& p = model_->params();
    const std::vector<std::string> all = comm_.allgather(std::to_string(fnv1a(p.data(), p.nbytes())));
    std::vector<uint64_t> hashes;
    for (const std::string& h : all) hashes.push_back(std::stoull(h));
    reftrain::check_params_in_sync(invariants_, hashes, step_);
}

// Every rank holds the whole global batch, so rank 0 can compute the step's gradient the way one process
// would (all N k micro-batches, weights n_i / total, no bug switches of the data-parallel code) and
// compare it with the all-reduced one. Once per process, at its first step: N times a step's compute.
void Trainer::check_against_one_process(const std::vector<int64_t>& counts, int64_t total, double scale) {
    if (!invariants_.enabled("dist.step_matches_one_process")) return;
    const int64_t B = config_.train.batch_size, T = config_.train.seq_len;
    const int64_t global_k = static_cast<int64_t>(counts.size());
    double verdict[3] = {0.0, 0.0, 0.0};   // relative error, reduced norm, one-process norm
    if (comm_.rank() == 0) {
        Arena& grads = model_->grads();
        const float* g = reinterpret_cast<const float*>(grads.data());
        const int64_t n = static_cast<int64_t>(grads.nbytes() / sizeof(float));
        std::vector<float> reduced(g, g + n);
        FrameTracer* tracer = tracer_.get();
        model_->set_tracer(nullptr);   // not a step of the run: nothing for the tracer's frames
        model_->zero_grad();
        for (int64_t i = 0; i < global_k; ++i) {
            const Tensor ids(micro_ids_[i].data(), DType::I64, {B, T}, "input_ids");
            const Tensor targets(micro_targets_[i].data(), DType::I64, {B, T}, "targets");
            const ForwardResult r = model_->forward(ids, targets);
            if (r.supervised_tokens > 0) model_->backward(micro_batch_weight(config_.train, counts[i], total, global_k) * scale);
        }
        double diff = 0.0, ref = 0.0, red = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            const double d = static_cast<double>(reduced[i]) - static_cast<double>(g[i]);
            diff += d * d;
            ref += static_cast<double>(g[i]) * g[i];
            red += static_cast<double>(reduced[i]) * reduced[i];
        }
        verdict[0] = ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff);
        verdict[1] = std::sqrt(red);
        verdict[2] = std::sqrt(ref);
        std::copy(reduced.begin(), reduced.end(), reinterpret_cast<float*>(grads.data()));
        model_->set_tracer(tracer);
    }
    comm_.allreduce_sum(verdict, 3);   // the others add zeros: every rank gets rank 0's verdict
    check_step_matches_one_process(invariants_, verdict[0], kOneProcessBound, verdict[1], verdict[2],
                                   comm_.size(), step_);
}

std::string Trainer::describe_spike(const LossSpike& spike, const std::vector<std::vector<double>>& row_losses) const {
    struct Row { double loss; size_t micro, row; };
    std::vector<Row> rows;
    for (size_t i = 0; i < row_losses.size(); ++i) {
        for (size_t b = 0; b < row_losses[i].size(); ++b) rows.push_back({row_losses[i][b], i, b});
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.loss > b.loss; });
    std::ostringstream s;
    s << std::setprecision(4) << "step " << spike.step + 1 << ": loss " << spike.loss;
    if (spike.z > 0.0) {
        s << " is " << spike.z << " x the step-to-step noise (" << spike.std << ") above the last steps' median " << spike.mean;
    }
    if (spike.above_first) s << (spike.z > 0.0 ? ", and" : "") << " is above " << kDivergenceFactor << " x the first step's loss (the run diverges)";
    if (!rows.empty()) {
        s << "; median row loss " << rows[rows.size() / 2].loss << "; highest rows:";
        const int64_t T = config_.train.seq_len;
        for (size_t k = 0; k < rows.size() && k < 3; ++k) {
            const std::vector<int64_t>& ids = micro_ids_[local_first_ + static_cast<int64_t>(rows[k].micro)];
            const std::vector<int64_t>& targets = micro_targets_[local_first_ + static_cast<int64_t>(rows[k].micro)];
            // The text from a few tokens before the row's first supervised target: what the loss saw.
            const int64_t row = static_cast<int64_t>(rows[k].row) * T;
            int64_t first = 0;
            while (first < T && targets[row + first] == cpu::kIgnoreIndex) ++first;
            std::string text;
            for (int64_t t = std::max<int64_t>(0, std::min(first, T - 1) - 3); t < T && text.size() < 40; ++t) {
                for (char c : data_.tokenizer->piece(ids[row + t])) {
                    text += c == '\n' ? std::string("\\n") : std::isprint(static_cast<unsigned char>(c)) ? std::string(1, c) : "?";
                }
            }
            s << (k ? ";" : "") << " micro-batch " << rows[k].micro << " row " << rows[k].row << " loss " << rows[k].loss
              << " \"" << text.substr(0, 40) << "\"";
        }
    }
    s << (config_.train.loss_spike_skip ? "; the update was skipped" : "; the update was applied (train.loss_spike_skip = false)");
    return s.str();
}

// The GPU twin of the step above: same batches, weights, schedule, clipping and invariants on the loss
// and the schedule. Not on the GPU: the invariant grad.zeroed_before_step (it would read every gradient
// back) and the CPU-side bug switches of the failure catalog, which run on the CPU reference.
StepMetrics Trainer::train_step_gpu(const std::vector<int64_t>& counts, int64_t total) {
#ifdef REFTRAIN_HAVE_CUDA
    const int64_t k = config_.train.grad_accum, B = config_.train.batch_size, T = config_.train.seq_len;
    const int64_t global_k = comm_.size() * k;
    StepMetrics m;
    std::vector<CudaMicroBatch> micro(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) {   // this rank's slice of the global batch, weighted as on the CPU
        const int64_t i = local_first_ + j;
        micro[j].input_ids = Tensor(micro_ids_[i].data(), DType::I64, {B, T}, "input_ids");
        micro[j].targets = Tensor(micro_targets_[i].data(), DType::I64, {B, T}, "targets");
        micro[j].weight = micro_batch_weight(config_.train, counts[i], total, global_k);
    }
    m.lr = lr_at(config_.schedule, step_);
    check_schedule_counts_optimizer_steps(invariants_, step_, m.lr, schedule_at(), step_ * k, k);
    std::function<void(CudaStepResult&)> reduce;
#ifdef REFTRAIN_HAVE_NCCL
    if (gpu_->nccl) {
        // The GPU twin of the CPU step's all-reduce: NCCL sums the gradient arena on the device; the loss and
        // "did any rank's tracer trip" go over the host communicator, so every rank skips alike.
        reduce = [&](CudaStepResult& r) {
            const auto reduce_start = std::chrono::steady_clock::now();
            DeviceArena& grads = gpu_->model->grads();
            gpu_->nccl->allreduce_sum(reinterpret_cast<float*>(grads.data()),
                                      static_cast<int64_t>(grads.nbytes() / sizeof(float)), gpu_->model->stream());
            double sums[2] = {r.loss, tracer_ && tracer_->tripped() ? 1.0 : 0.0};
            comm_.allreduce_sum(sums, 2);
            r.loss = sums[0];
            if (sums[1] > 0.0) r.skipped = true;
            REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(gpu_->model->stream()));
            m.allreduce_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - reduce_start).count();
        };
    }
#endif
    const CudaStepResult r = cuda_train_step(*gpu_->model, *gpu_->optimizer, micro, m.lr, config_.train.grad_clip,
                                             &loss_scaler_, step_, reduce);
    m.loss = r.loss;
    m.loss_scale = r.loss_scale;
    m.skipped = r.skipped;
    m.grad_norm = r.grad_norm;
    if (step_ == 0 && std::isfinite(m.loss)) check_init_loss(invariants_, m.loss, gpu_->model->config().vocab_size);
    if (tracer_) log_tracer_frames(/*runup=*/tracer_->tripped());
    if (tracer_ && tracer_->tripped() && !r.scaler_skipped && tracer_->options().policy == FrameTracer::Policy::stop) {
        stop_at_first_nonfinite(*tracer_, step_);
    }
    if (!m.skipped) check_loss_finite(invariants_, m.loss, step_);
    if (comm_.size() > 1) exchange_batch_hashes(-1);
    if (first_step_of_process_ < 0) first_step_of_process_ = step_;
    ++step_;
    m.step = step_;
    m.tokens = global_k * B * T;
    m.supervised_tokens = total;
    return m;
#else
    (void)counts;
    (void)total;
    fail("Trainer: GPU step in a build without CUDA");
#endif
}

void Trainer::sync_from_gpu() {
#ifdef REFTRAIN_HAVE_CUDA
    if (!gpu_) return;
    gpu_->model->store_to(*model_);
    gpu_->optimizer->store_to(*optimizer_);
#endif
}

EvalMetrics Trainer::evaluate(int64_t show_samples) {
    EvalMetrics e;
    sync_from_gpu();
    if (!data_.val_docs.empty()) {
        const ValidationLoss v =
            validation_loss(*model_, data_.val_docs, config_.train.batch_size, config_.train.seq_len, data_.chat->bos_id());
        e.val_loss = v.loss;
        e.val_tokens = v.tokens;
    }
    if (data_.task && config_.eval.exact_match_examples > 0 && !data_.val_examples.empty()) {
        std::vector<TaskExample> examples = data_.val_examples;
        if (static_cast<int64_t>(examples.size()) > config_.eval.exact_match_examples) {
            examples.resize(config_.eval.exact_match_examples);
        }
        // Show a different few each time (drawn from the checkpointed sample RNG) by rotating the list.
        const size_t shift = examples.empty() ? 0 : sample_rng_.below(examples.size());
        std::rotate(examples.begin(), examples.begin() + static_cast<std::ptrdiff_t>(shift), examples.end());
        e.exact_match = exact_match(*model_, *data_.chat, *data_.task, examples, config_.data.system_prompt,
                                    config_.eval.max_new_tokens, show_samples, out_, &e.samples);
        e.exact_match_examples = static_cast<int64_t>(examples.size());
    }
    return e;
}

std::string Trainer::save_checkpoint() {
    sync_from_gpu();
    if (comm_.rank() != 0) return "";   // rank 0 owns the checkpoints: every replica holds the same state
    TrainState state;
    state.step = step_;
    state.rng_states = {sample_rng_.state()};
    state.data = packer_->position();
    state.template_fingerprint = data_.chat->fingerprint();
    if (loss_scaler_.enabled()) state.extra["loss_scaler"] = loss_scaler_.to_json();
    // How many ranks wrote it and the global batch they trained with: a resume on another number of ranks
    // continues the same run only with the same global batch (Trainer::resume).
    state.extra["dist"] = {{"ranks", comm_.size()}, {"global_batch_rows", global_batch_rows()}};
    state.tokenizer_fingerprint = data_.tokenizer->fingerprint();
    return save_run_checkpoint(config_.run_dir, *model_, *optimizer_, state, config_.resolved, data_.tokenizer_model_path);
}

// checkpoint_keep: the newest N step_* directories stay, older ones go (the one `latest` names is the
// newest, so it always stays). Rank 0 only: it owns the checkpoints.
void Trainer::prune_checkpoints() {
    if (comm_.rank() != 0 || config_.checkpoint_keep <= 0) return;
    const fs::path root = fs::path(config_.run_dir) / "checkpoints";
    std::vector<fs::path> steps;
    for (const auto& entry : fs::directory_iterator(root)) {
        const std::string name = entry.path().filename().string();
        if (entry.is_directory() && name.rfind("step_", 0) == 0 && name.find('.') == std::string::npos) steps.push_back(entry.path());
    }
    std::sort(steps.begin(), steps.end());   // step_0000100 < step_0000200: zero-padded names sort by step
    std::string latest;
    std::ifstream(root / "latest") >> latest;
    // checkpoint_keep_best: the newest checkpoint, if an eval ran at its step, competes with best.json's.
    std::string best;
    if (config_.checkpoint_keep_best) {
        const fs::path best_path = root / "best.json";
        json record;
        if (fs::exists(best_path)) {
            try {
                DuplicateKey duplicate;
                std::ifstream in(best_path);
                const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
                record = parse_json_noting_duplicates(text, &duplicate);
                best = record.at("checkpoint").get<std::string>();
            } catch (const json::exception& e) {
                out_ << "warning: " << best_path.string() << " is unreadable (" << e.what() << "); starting it again\n";
                record = json();
            }
        }
        if (last_val_step_ == step_ && !latest.empty() &&
            (best.empty() || !record.contains("val_loss") || last_val_loss_ < record["val_loss"].get<double>())) {
            best = latest;
            const std::string text = json{{"checkpoint", best}, {"step", step_}, {"val_loss", last_val_loss_}}.dump() + "\n";
            write_file_atomically(best_path.string(), text.data(), text.size());
        }
    }
    const size_t keep = static_cast<size_t>(config_.checkpoint_keep);
    for (size_t i = 0; i + keep < steps.size(); ++i) {
        if (steps[i].filename().string() == latest || steps[i].filename().string() == best) continue;
        std::error_code error;
        fs::remove_all(steps[i], error);
        if (error) out_ << "warning: could not remove old checkpoint " << steps[i].string() << ": " << error.message() << "\n";
    }
}

void Trainer::resume(const std::string& checkpoint_dir) {
    const std::string dir = resolve_checkpoint_dir(checkpoint_dir == "latest" ? config_.run_dir : checkpoint_dir);
    // The template check comes first: another template usually means another vocabulary too, and
    // "wrong template" is the message that tells the user what to fix.
    const TrainState saved = read_checkpoint_state(dir);
    // Everything the trainer needs from the state is checked before anything is loaded: a refused
    // checkpoint is never half-loaded.
    check(saved.rng_states.size() == 1, dir, ": expected 1 RNG state, found ", saved.rng_states.size());
    check(saved.template_fingerprint == data_.chat->fingerprint(), dir,
          ": the checkpoint was trained with another chat template or tokenizer (fingerprint ",
          saved.template_fingerprint, ", this run has ", data_.chat->fingerprint(), ")");
    // Continuing with another schedule is allowed (extending a WSD run is a use), but it is not the
    // run that was saved, so say so. The usual cause: train.max_steps changed while
    // schedule.total_steps = 0 ties the schedule's length to it.
    // The saved run.json, read like any run config: merged strictly onto the defaults (keys a checkpoint of
    // an older version lacks take their defaults; a malformed one is refused naming the file and key).
    json saved_json = default_run_config();
    merge_config(saved_json, read_checkpoint_run_config(dir), dir + "/run.json");
    const RunConfig saved_config = parse_run_config(saved_json, dir + "/run.json");
    const ScheduleConfig& before = saved_config.schedule;
    const ScheduleConfig& now = config_.schedule;
    if (before.kind != now.kind || before.lr != now.lr || before.warmup_steps != now.warmup_steps ||
        before.total_steps != now.total_steps || before.final_lr_fraction != now.final_lr_fraction ||
        before.decay_fraction != now.decay_fraction || before.decay_shape != now.decay_shape) {
        out_ << "warning: the LR schedule differs from the checkpoint's (kind " << before.kind << " -> " << now.kind
             << ", total_steps " << before.total_steps << " -> " << now.total_steps << ", lr " << before.lr << " -> "
             << now.lr << "): the continuation will not match the run that was saved. Set schedule.total_steps "
             << "explicitly to keep the schedule fixed when changing train.max_steps.\n";
    }
    // The global batch: the packer's position and the schedule count global batches, so another number of
    // ranks continues the same run only when ranks x grad_accum x batch_size stays the same.
    const TrainConfig& saved_train = saved_config.train;
    int64_t saved_ranks = 1, saved_rows = saved_train.grad_accum * saved_train.batch_size;
    if (saved.extra.contains("dist")) {
        saved_ranks = saved.extra["dist"].at("ranks").get<int64_t>();
        saved_rows = saved.extra["dist"].at("global_batch_rows").get<int64_t>();
    }
    if (saved_rows != global_batch_rows()) {
        const std::string what = concat(dir, ": the checkpoint was written with a global batch of ", saved_rows, " rows per step (",
                                        saved_ranks, " rank(s)); this run has ", global_batch_rows(), " (", comm_.size(),
                                        " rank(s) x grad_accum ", config_.train.grad_accum, " x batch_size ",
                                        config_.train.batch_size, ")");
        check(config_.dist.allow_global_batch_change, what,
              ": the data position, the LR schedule and the gradient's noise would not continue the run that was saved. "
              "Set train.global_batch = ", saved_rows, " (grad_accum then follows from the number of ranks), or "
              "dist.allow_global_batch_change = true to continue with the new batch anyway");
        out_ << "warning: " << what << "; continuing (dist.allow_global_batch_change = true)\n";
    } else if (saved_ranks != comm_.size()) {
        out_ << "resuming a checkpoint of " << saved_ranks << " rank(s) on " << comm_.size() << ": the same global batch of "
             << saved_rows << " rows per step\n";
    }
    TrainState state;
    // BUG resume-state-loss: only the weights come back; AdamW restarts with empty moments and step 0.
    load_checkpoint(dir, *model_, bugs().resume_state_loss ? nullptr : optimizer_.get(), state);
    check(state.rng_states.size() == 1, dir, ": expected 1 RNG state, found ", state.rng_states.size());
    step_ = state.step;
    sample_rng_.set_state(state.rng_states[0]);
    if (state.extra.contains("loss_scaler")) loss_scaler_.from_json(state.extra["loss_scaler"]);
    packer_->set_position(state.data);
#ifdef REFTRAIN_HAVE_CUDA
    if (gpu_) {
        gpu_->model->load_from(*model_);
        gpu_->optimizer->load_from(*optimizer_);
    }
#endif
    out_ << "resumed from " << dir << " at step " << step_ << "\n";
}

namespace {

// ---- graceful stop -------------------------------------------------------------------------------------
// SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) while training: the handler only records the signal; the
// loop finishes the optimizer step in flight, saves a checkpoint and returns. A second signal restores the
// default action and re-raises it: the process ends at once. That never tears a checkpoint: every file of
// one is written to a temp name and renamed, and checkpoints/latest moves only after all are in place.
std::atomic<int> g_stop_signal{0};

void on_stop_signal(int signal) {
    if (g_stop_signal.exchange(signal) != 0) {   // the second one: stop now
        std::signal(signal, SIG_DFL);
        std::raise(signal);
    }
}

// Installs the handlers for the life of one run() and puts the previous ones back after.
class StopSignals {
public:
    StopSignals() {
        g_stop_signal = 0;
        previous_int_ = std::signal(SIGINT, on_stop_signal);
        previous_term_ = std::signal(SIGTERM, on_stop_signal);
    }
    ~StopSignals() {
        std::signal(SIGINT, previous_int_);
        std::signal(SIGTERM, previous_term_);
    }
    StopSignals(const StopSignals&) = delete;
    StopSignals& operator=(const StopSignals&) = delete;

private:
    void (*previous_int_)(int) = SIG_DFL;
    void (*previous_term_)(int) = SIG_DFL;
};

// A run that died (a killed rank, a crash, an OOM) may have logged steps past its last checkpoint and a last
// line cut in half. Resuming from step `step` keeps the complete lines up to it, so the file reads as one
// run again: without this the resumed steps would follow a torn line and repeat steps already logged.
void trim_metrics_after(const fs::path& path, int64_t step, std::ostream& out) {
    std::ifstream in(path);
    if (!in) return;
    std::string kept, line;
    int64_t dropped = 0;
    while (std::getline(in, line)) {
        json entry;
        try {
            entry = json::parse(line);
        } catch (const json::exception&) {
            ++dropped;   // a torn line
            continue;
        }
        if (entry.contains("step") && entry["step"].is_number_integer() && entry["step"].get<int64_t>() > step) {
            ++dropped;
            continue;
        }
        kept += line + "\n";
    }
    in.close();
    if (dropped == 0) return;
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        check(static_cast<bool>(out << kept), tmp.string(), ": cannot write");
    }
    fs::rename(tmp, path);
    out << "metrics: dropped " << dropped << " line(s) of " << path.string() << " past step " << step
              << " (logged after the checkpoint, or cut off)\n";
}

}  // namespace

void Trainer::log_tracer_frames(bool runup) {
    if (!tracer_ || !log_.is_open() || config_.tracer.summary_every <= 0 || tracer_->frame_count() == 0) return;
    const double compute_max = config_.train.precision == "fp16" ? 65504.0 : static_cast<double>(std::numeric_limits<float>::max());
    const int64_t every = config_.tracer.summary_every;
    // The ring holds the last K frames, oldest first; its newest is the step just ended. Normally only the
    // newest is written, when it is due; on a trip every frame of the ring not written yet (the run-up, at
    // full resolution: those lines may come after a later due line; the report sorts by step).
    for (size_t i = 0; i < tracer_->frame_count(); ++i) {
        const FrameTracer::Frame& frame = tracer_->frame(i);
        const int64_t step = frame.step + 1;   // the frame's 0-based index; metrics.jsonl counts steps done
        const bool newest = i + 1 == tracer_->frame_count();
        const bool due = step % every == 0;
        const bool written = step <= last_tracer_line_step_ && (due || step <= last_runup_line_step_);
        if (written || (!runup && !(newest && due))) continue;
        TracerSummary summary = summarize_frame(*tracer_, frame, compute_max);
        summary.step = step;
        log_.write(tracer_summary_json(summary));
        last_tracer_line_step_ = std::max(last_tracer_line_step_, step);
        if (runup) last_runup_line_step_ = std::max(last_runup_line_step_, step);
    }
}

void Trainer::run() {
    const fs::path run_dir(config_.run_dir);
    fs::create_directories(run_dir);
    if (!config_.resume.empty()) resume(config_.resume);
    // Rank 0 owns the metrics, evals, checkpoints and the test; the other ranks train and wait for it in the
    // next collective (docs/distributed.md).
    const bool lead = comm_.rank() == 0;
    // A fresh run starts a fresh metrics file; a resumed one appends after the steps it already has.
    if (lead && step_ > 0) trim_metrics_after(run_dir / "metrics.jsonl", step_, out_);
    if (lead) {
        log_.open(run_dir.string(), /*append=*/step_ > 0, config_.tensorboard, step_);
        log_.write_config(config_.resolved);   // beside the metrics, for the report (a checkpoint keeps its own)
    }
    last_tracer_line_step_ = last_runup_line_step_ = step_;

    // Under mpirun stdout is a pseudo-terminal on every rank: a live bar there would be N interleaved bars.
    const bool tty = isatty(fileno(stdout)) && &out_ == &std::cout && comm_.size() == 1;
    const int64_t max_steps = config_.train.max_steps;
    out_ << "model: " << model_->num_parameters() << " parameters; training " << max_steps - step_
         << " optimizer steps of " << config_.train.grad_accum << " x " << config_.train.batch_size << " x "
         << config_.train.seq_len << " tokens on " << omp_get_max_threads() << " threads"
         << (comm_.size() > 1 ? concat(" per rank, ", comm_.size(), " ranks") : std::string()) << "\n";
    out_ << "blas: " << cpu::blas_summary() << "\n";

    auto log_eval = [&](int64_t show) -> EvalMetrics {
        const EvalMetrics e = evaluate(show);
        if (e.val_tokens > 0) {
            last_val_loss_ = e.val_loss;
            last_val_step_ = step_;
        }
        out_ << "eval step " << step_ << ": val loss " << std::fixed << std::setprecision(4) << e.val_loss;
        if (e.exact_match >= 0) out_ << ", exact match " << std::setprecision(1) << 100.0 * e.exact_match << "% of "
                                     << e.exact_match_examples;
        out_ << "\n";
        out_.unsetf(std::ios::floatfield);
        json line = {{"kind", "eval"}, {"step", step_}, {"val_loss", e.val_loss}, {"val_tokens", e.val_tokens}};
        if (e.exact_match >= 0) line["exact_match"] = e.exact_match;
        if (!e.samples.empty()) {
            line["samples"] = json::array();
            for (const EvalSample& x : e.samples) {
                line["samples"].push_back(
                    {{"prompt", x.prompt}, {"response", x.response}, {"answer", x.answer}, {"correct", x.correct}});
            }
        }
        log_.write(line);
        return e;
    };

    double train_seconds = 0.0;
    int64_t steps_timed = 0;
    bool stopped_early = false;
    const StopSignals stop_signals;
    stopped_by_signal_ = 0;
    while (step_ < max_steps) {
        // A stop signal: every rank stops after the same step (the flag is summed over the ranks).
        double stop = static_cast<double>(g_stop_signal.load());
        if (comm_.size() > 1) comm_.allreduce_sum(&stop, 1);
        if (stop != 0.0) {
            stopped_by_signal_ = g_stop_signal.load() != 0 ? g_stop_signal.load() : SIGTERM;
            const std::string dir = save_checkpoint();
            prune_checkpoints();
            finish_progress_line();
            out_ << "stopped by " << (stopped_by_signal_ == SIGINT ? "SIGINT" : "SIGTERM") << " after step " << step_
                 << " of " << max_steps << "; checkpoint: " << dir << "; continue with --set resume=latest\n";
            out_.flush();
            return;
        }
        const StepMetrics m = train_step();
        train_seconds += m.seconds;
        ++steps_timed;
        const double tok_per_s = static_cast<double>(m.tokens) * steps_timed / std::max(1e-9, train_seconds);
        const double eta = train_seconds / steps_timed * static_cast<double>(max_steps - step_);
        json line = {{"kind", "train"}, {"step", m.step}, {"loss", m.loss}, {"lr", m.lr},
                     {"tokens", m.tokens}, {"supervised_tokens", m.supervised_tokens}, {"seconds", m.seconds}};
        // JSON has no NaN: a skipped step's grad norm is null, and the skip is said explicitly.
        line["grad_norm"] = std::isfinite(m.grad_norm) ? json(m.grad_norm) : json(nullptr);
        if (loss_scaler_.enabled()) line["loss_scale"] = m.loss_scale;
        if (m.skipped) line["skipped"] = true;
        if (comm_.size() > 1) line["allreduce_seconds"] = m.allreduce_seconds;
        log_.write(line);   // flushed: a killed run keeps every step it logged
        if (m.skipped) clear_progress_line();
        if (m.skipped) out_ << "step " << m.step << " skipped: non-finite gradients"
                            << (loss_scaler_.enabled() ? concat(" (loss scale now ", loss_scaler_.scale(), ")") : "") << "\n";

        const bool log_now = m.step % config_.log_every == 0 || m.step == max_steps;
        if (tty) {
            // A live line, redrawn in place ("\r", the line, erase to its end), as wide as the terminal is now.
            const ProgressState state{m.step, max_steps, m.loss, m.lr, m.grad_norm, tok_per_s, eta};
            out_ << "\r" << format_progress(state, terminal_columns(fileno(stdout))) << "\x1b[K" << std::flush;
            bar_open_ = true;
            if (log_now && m.step == max_steps) finish_progress_line();
        } else if (log_now) {
            char line[256];
            std::snprintf(line, sizeof line, "step %lld/%lld loss %.4f lr %.2e grad_norm %.3f %.0f tok/s ETA %s\n",
                          (long long)m.step, (long long)max_steps, m.loss, m.lr, m.grad_norm, tok_per_s,
                          format_duration(eta).c_str());
            out_ << line << std::flush;
        }
        if (config_.eval.every > 0 && m.step % config_.eval.every == 0 && m.step < max_steps) {
            clear_progress_line();
            EvalMetrics e;
            if (lead) e = log_eval(config_.eval.samples);
            const double target = config_.eval.stop_at_exact_match;
            // Rank 0's verdict decides for every rank.
            comm_.broadcast(&e.exact_match, sizeof e.exact_match, 0);
            if (target > 0.0 && e.exact_match >= target) {
                out_ << "stopping at step " << step_ << ": val exact match " << std::fixed << std::setprecision(1)
                     << 100.0 * e.exact_match << "% reached eval.stop_at_exact_match = " << 100.0 * target << "%\n";
                out_.unsetf(std::ios::floatfield);
                stopped_early = true;
                break;
            }
        }
        if (config_.checkpoint_every > 0 && m.step % config_.checkpoint_every == 0 && m.step < max_steps) {
            const std::string dir = save_checkpoint();
            prune_checkpoints();
            if (!tty) out_ << "checkpoint: " << dir << "\n";
        }
    }
    finish_progress_line();
    log_.flush();
    if (comm_.size() > 1) check_params_in_sync();   // the replicas end as one model
    if (!lead) return;
    if (!stopped_early) log_eval(config_.eval.samples);
    if (!stopped_early && config_.eval.stop_at_exact_match > 0.0) {
        char note[160];
        std::snprintf(note, sizeof note, "note: eval.stop_at_exact_match = %.1f%% was never reached in %lld steps\n",
                      100.0 * config_.eval.stop_at_exact_match, static_cast<long long>(max_steps));
        out_ << note;
    }
    const std::string dir = save_checkpoint();
    prune_checkpoints();
    out_ << "checkpoint: " << dir << "\n";
    if (data_.task && config_.eval.final_test && !data_.test_examples.empty()) {
        const double acc = exact_match(*model_, *data_.chat, *data_.task, data_.test_examples, config_.data.system_prompt,
                                       config_.eval.max_new_tokens, 0, out_);
        char line[160];
        std::snprintf(line, sizeof line, "test: exact match %.1f%% on %zu held-out problems (greedy)\n", 100.0 * acc,
                      data_.test_examples.size());
        out_ << line;
        log_.write({{"kind", "test"}, {"step", step_}, {"exact_match", acc}, {"examples", data_.test_examples.size()}});
    }
    const std::string violated = invariants_.summary();
    if (!violated.empty()) out_ << "invariants violated during this run (warn mode):\n" << violated;
    if (steps_timed > 0) {
        char line[160];
        std::snprintf(line, sizeof line, "trained %lld steps in %.1f s (%.0f tok/s)\n", (long long)steps_timed,
                      train_seconds,
                      static_cast<double>(global_batch_rows() * config_.train.seq_len) *
                          steps_timed / std::max(1e-9, train_seconds));
        out_ << line;
    }
}

}  // namespace reftrain
