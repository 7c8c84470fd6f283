// train/grpo.cpp — GRPO on the chat transformer: config, group advantages, KL estimators, the update
// and the run (see grpo.h for the algorithm, docs/grpo.md for the measured runs).
//
// What is not obvious:
// - The group statistics run in fp64 and a group whose rewards are all equal gets advantage 0 by rule,
//   not by arithmetic: eight rewards of 0.1 have an fp64 mean of 0.09999999999999999, and (r - mean)
//   divided by a std of the same size is O(1). The catalog entry grpo-zero-signal is that bug in fp32.
// - A micro-batch whose token weights are all 0 (only zero-signal groups, no KL term) is not
//   backpropagated at all: its gradient is exactly 0, so skipping it changes no number.
// - The reference model is a frozen copy of the initial weights, scored on the same rows as the policy,
//   so at the first update every log-ratio is exactly 0 (the same ops on the same numbers).
#include "train/grpo.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "kernels/bugs.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "kernels/safetensors.h"
#include "model/generate.h"
#include "train/checkpoint.h"
#include "train/config_fields.h"
#include "train/grad_clip.h"
#include "train/run_config.h"
#include "train/run_log.h"
#include "train/trainer.h"

namespace reftrain {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- configuration ----------------------------------------------------------------------------------

namespace {

// Every key of a GRPO config once: path, then where it lives ("algorithm" is added by the default).
const ConfigFields<GrpoConfig>& grpo_fields() {
    using G = GrpoConfig;
    using A = AdamWConfig;
    static const ConfigFields<GrpoConfig> fields = [] {
        ConfigFields<GrpoConfig> f;
        f.add("run_dir", &G::run_dir).add("init", &G::init).add("seed", &G::seed).add("threads", &G::threads).non_negative();
        f.add("data.task", &G::task).add("data.task_options", &G::task_options);
        f.add("reward.correct", &G::reward_correct).add("reward.format", &G::reward_format);
        f.add("sampling.prompts_per_update", &G::prompts_per_update).positive()
            .add("sampling.group_size", &G::group_size)
            .add("sampling.temperature", &G::temperature)
            .add("sampling.top_k", &G::top_k).non_negative()
            .add("sampling.max_new_tokens", &G::max_new_tokens).positive();
        f.add("advantage.std_normalize", &G::std_normalize).add("advantage.std_eps", &G::std_eps).positive();
        f.add("kl_coef", &G::kl_coef).non_negative();
        f.add("loss.inner_epochs", &G::inner_epochs).positive().add("loss.clip_eps", &G::clip_eps).positive()
            .add("loss.old_logprobs", &G::old_logprobs);
        f.add("optimizer.lr", &G::adamw, &A::lr).positive()
            .add("optimizer.beta1", &G::adamw, &A::beta1)
            .add("optimizer.beta2", &G::adamw, &A::beta2)
            .add("optimizer.eps", &G::adamw, &A::eps)
            .add("optimizer.weight_decay", &G::adamw, &A::weight_decay)
            .add("optimizer.max_grad_norm", &G::max_grad_norm);
        f.add("updates", &G::updates).non_negative().add("seq_len", &G::seq_len).positive();
        f.add("micro_batch_size", &G::micro_batch_size).positive();
        f.add("eval.examples", &G::eval_examples).non_negative()
            .add("eval.every", &G::eval_every).non_negative()
            .add("eval.max_new_tokens", &G::eval_max_new_tokens).positive()
            .add("eval.samples", &G::eval_samples).non_negative();
        f.add("log_every", &G::log_every).non_negative().add("tensorboard", &G::tensorboard);
        f.add("invariants", &G::invariants).add("bugs", &G::bugs);
        return f;
    }();
    return fields;
}

}  // namespace

json default_grpo_config() {
    json j = grpo_fields().write(GrpoConfig{});
    j["algorithm"] = "grpo";
    return j;
}

GrpoConfig load_grpo_config(const std::string& path, const std::vector<std::string>& sets) {
    const MergedConfig merged = merge_config_sources(default_grpo_config(), "GRPO config", "grpo", path, sets);
    return parse_grpo_config(merged.json, merged.source);
}

GrpoConfig parse_grpo_config(const json& j, const std::string& source) {
    GrpoConfig c;
    c.resolved = j;
    const std::string algorithm = j.at("algorithm").get<std::string>();
    check(algorithm == "grpo", source, ": 'algorithm' is \"", algorithm, "\"; this loader reads \"grpo\" configs");
    grpo_fields().read(j, c, source);
    check_bug_switches(c.bugs, source);

    check(!c.run_dir.empty(), source, ": 'run_dir' must not be empty");
    check(!c.init.empty(), source, ": 'init' must name an SFT checkpoint (a run directory of `reftrain train` or ",
          "one of its checkpoints/step_NNNNNNN)");
    check(c.group_size >= 2, source, ": 'sampling.group_size' must be >= 2 (a group of one has no baseline), got ",
          c.group_size);
    check(c.old_logprobs == "trainer" || c.old_logprobs == "sampler", source,
          ": 'loss.old_logprobs' must be \"trainer\" or \"sampler\", got \"", c.old_logprobs, "\"");
    check(c.temperature > 0.0, source,
          ": 'sampling.temperature' must be > 0 (greedy samples are all alike: every group would carry no signal), got ",
          c.temperature);
    return c;
}

// ---- the pieces ---------------------------------------------------------------------------------------

namespace {

// a = (r - mean) / (std + eps) over one group of G rewards (or r - mean without std_normalize), the
// statistics computed in T; the sample std (G - 1).
template <class T>
void normalize_group(const double* r, int64_t G, bool std_normalize, T eps, double* a) {
    T mean = 0;
    for (int64_t i = 0; i < G; ++i) mean += static_cast<T>(r[i]);
    mean /= static_cast<T>(G);
    T squares = 0;
    for (int64_t i = 0; i < G; ++i) squares += (static_cast<T>(r[i]) - mean) * (static_cast<T>(r[i]) - mean);
    T std = G > 1 ? std::sqrt(squares / static_cast<T>(G - 1)) : T(0);
    if (bugs().std_cancellation) {
        // BUG std-cancellation: the one-pass variance E[r^2] - E[r]^2 in fp32. On a near-constant group
        // both terms agree to more digits than fp32 holds; their difference is rounding noise (0, or a
        // few ulps of E[r^2], or negative: clamped to 0), and a small reward difference is divided by it.
        float sum = 0.0f, sum_squares = 0.0f;
        for (int64_t i = 0; i < G; ++i) {
            sum += static_cast<float>(r[i]);
            sum_squares += static_cast<float>(r[i]) * static_cast<float>(r[i]);
        }
        const float m = sum / static_cast<float>(G);
        const float variance = std::max(0.0f, sum_squares / static_cast<float>(G) - m * m);
        std = static_cast<T>(std::sqrt(variance * static_cast<float>(G) / static_cast<float>(G - 1)));
    }
    for (int64_t i = 0; i < G; ++i) {
        const T centred = static_cast<T>(r[i]) - mean;
        a[i] = static_cast<double>(std_normalize ? centred / (std + eps) : centred);
    }
}

}  // namespace

GroupAdvantages group_advantages(std::span<const double> rewards, int64_t group_size, bool std_normalize,
                                 double std_eps) {
    check(group_size >= 1 && rewards.size() % static_cast<size_t>(group_size) == 0, "group_advantages: ",
          rewards.size(), " rewards do not form groups of ", group_size);
    GroupAdvantages out;
    out.groups = static_cast<int64_t>(rewards.size()) / group_size;
    out.advantages.assign(rewards.size(), 0.0);
    const int64_t G = group_size;
    for (int64_t g = 0; g < out.groups; ++g) {
        const double* r = rewards.data() + g * G;
        double* a = out.advantages.data() + g * G;
        const auto [lo, hi] = std::minmax_element(r, r + G);
        const bool uniform = *lo == *hi;
        // The group's statistics in double; a group with max == min carries no signal, and its
        // advantages stay exactly 0. BUG grpo-zero-signal: fp32 statistics, eps 1e-8 and no such rule.
        // Eight rewards of 0.1f have an fp32 mean 7.45e-9 above 0.1f; the std is that residue, and
        // (r - mean) / (std + 1e-8) = -0.41 for every member of a group that carries no signal at all.
        if (bugs().grpo_zero_signal) normalize_group<float>(r, G, std_normalize, 1e-8f, a);
        else if (!uniform) normalize_group<double>(r, G, std_normalize, std_eps, a);
        bool all_zero = true;
        for (int64_t i = 0; i < G; ++i) all_zero = all_zero && a[i] == 0.0;
        out.zero_advantage_groups += all_zero;
        if (uniform) {
            ++out.uniform_groups;
            for (int64_t i = 0; i < G; ++i) {
                out.max_abs_uniform_advantage = std::max(out.max_abs_uniform_advantage, std::fabs(a[i]));
            }
        }
    }
    return out;
}

double grpo_reward(bool correct, bool ended_turn_with_answer, double reward_correct, double reward_format) {
    return correct ? reward_correct : ended_turn_with_answer ? reward_format : 0.0;
}

double kl_log_ratio(double logp_policy, double logp_reference) {
    // BUG negative-kl: the pair the wrong way round, log p_ref - log p (k1 then estimates -KL, and the
    // k3 penalty's gradient pushes the policy AWAY from the reference).
    if (bugs().negative_kl) return logp_reference - logp_policy;
    return logp_policy - logp_reference;
}
double kl_k1(double log_ratio) { return log_ratio; }
double kl_k3(double log_ratio) { return std::expm1(-log_ratio) + log_ratio; }
double kl_k3_grad(double log_ratio) { return -std::expm1(-log_ratio); }

void build_policy_batch(std::span<const PolicyRow> rows, int64_t B, int64_t T, int64_t pad_id,
                        std::vector<int64_t>& inputs, std::vector<int64_t>& targets) {
    check(static_cast<int64_t>(rows.size()) <= B, "build_policy_batch: ", rows.size(), " rows for a batch of ", B);
    inputs.assign(static_cast<size_t>(B * T), pad_id);
    targets.assign(static_cast<size_t>(B * T), cpu::kIgnoreIndex);
    for (size_t b = 0; b < rows.size(); ++b) {
        const PolicyRow& row = rows[b];
        const int64_t n = static_cast<int64_t>(row.ids.size());
        check(n <= T + 1, "build_policy_batch: row ", b, " has ", n, " tokens (prompt ", row.prompt_tokens,
              "), more than seq_len + 1 = ", T + 1);
        check(row.prompt_tokens >= 1 && row.prompt_tokens <= n, "build_policy_batch: row ", b, " has a prompt of ",
              row.prompt_tokens, " tokens out of ", n);
        // Exactly the sampled tokens are supervised; the shift is data/chat.h's one rule.
        std::vector<uint8_t> sampled(static_cast<size_t>(n), uint8_t{0});
        std::fill(sampled.begin() + row.prompt_tokens, sampled.end(), uint8_t{1});
        std::copy_n(row.ids.begin(), n - 1, inputs.begin() + b * T);
        shift_targets(row.ids, sampled, std::span(targets).subspan(static_cast<size_t>(b * T), static_cast<size_t>(n - 1)));
    }
}

// ---- the trainer ------------------------------------------------------------------------------------

namespace {

// rl.sampler_matches_trainer's bar on the mean |log p_trainer - log p_sampler| before any step: the
// sampler (KV cache, fp64 softmax) and the trainer (full forward, fp32 cross-entropy) score the same
// weights, so they differ by rounding only (measured: see docs/failures/sampler-logprob-mismatch.md).
constexpr double kSamplerGapTolerance = 1e-3;

std::string trimmed(const std::string& text) {
    const size_t begin = text.find_first_not_of(" \t\n\r");
    if (begin == std::string::npos) return "";
    return text.substr(begin, text.find_last_not_of(" \t\n\r") - begin + 1);
}

}  // namespace

GrpoTrainer::GrpoTrainer(const GrpoConfig& config, std::ostream& out)
    : config_(config),
      bugs_before_(bugs()),
      out_(out),
      prompt_rng_(Rng::for_name(config.seed, "grpo.prompts")),
      sample_rng_(Rng::for_name(config.seed, "grpo.sampling")) {
    if (config_.threads > 0) omp_set_num_threads(static_cast<int>(config_.threads));
    invariants_.set_stream(out_);
    invariants_.configure(config_.invariants, "GRPO config 'invariants'");
    for (const auto& [name, on] : config_.bugs.items()) {
        set_bug(name, on.get<bool>());
        if (on.get<bool>()) out_ << "WARNING: bug switch '" << name << "' is ON (kernels/bugs.h): this run is wrong on purpose\n";
    }

    // Everything about the model, its tokenizer and template comes from the SFT checkpoint.
    init_dir_ = resolve_checkpoint_dir(config_.init);
    init_run_config_ = read_checkpoint_run_config(init_dir_);
    // Keys a checkpoint of an older version lacks take their defaults.
    const RunConfig sft = parse_saved_run_config(init_run_config_, (fs::path(init_dir_) / "run.json").string());
    const TrainState saved = read_checkpoint_state(init_dir_);
    system_prompt_ = sft.data.system_prompt;
    const fs::path sp = fs::path(init_dir_) / "tokenizer.model";
    if (fs::exists(sp)) {
        tokenizer_model_path_ = sp.string();
        tokenizer_ = load_sentencepiece(tokenizer_model_path_);
    } else {
        tokenizer_ = make_byte_tokenizer(ChatTemplate::special_tokens(sft.data.template_name));
    }
    chat_ = std::make_unique<ChatTemplate>(sft.data.template_name, *tokenizer_);
    check(chat_->fingerprint() == saved.template_fingerprint, init_dir_,
          ": the chat template rebuilt from run.json does not match the checkpoint's fingerprint");
    if (config_.task.empty()) {
        check(!sft.data.task.empty(), init_dir_, ": the checkpoint was trained on JSONL data; set data.task to the ",
              "verifiable task to optimise");
        task_ = make_task(sft.data.task, sft.data.task_options);
    } else {
        task_ = make_task(config_.task, config_.task_options);
    }
    eval_examples_ = generate_split(*task_, Split::test, config_.eval_examples, sft.seed, /*unique=*/true);

    const ModelConfig model_config = ModelConfig::load((fs::path(init_dir_) / "config.json").string());
    check(config_.seq_len <= model_config.max_position_embeddings, "GRPO config: seq_len ", config_.seq_len,
          " exceeds the model's max_position_embeddings ", model_config.max_position_embeddings);
    policy_ = std::make_unique<Transformer>(model_config, config_.micro_batch_size, config_.seq_len);
    reference_ = std::make_unique<Transformer>(model_config, config_.micro_batch_size, config_.seq_len);
    TrainState loaded;
    load_checkpoint(init_dir_, *policy_, nullptr, loaded);
    load_checkpoint(init_dir_, *reference_, nullptr, loaded);
    optimizer_ = std::make_unique<AdamW>(policy_->params(), policy_->grads(), config_.adamw);
    if (config_.top_k != 0) {
        out_ << "note: sampling with top_k " << config_.top_k << ": the loss scores softmax(logits / temperature) "
             << "over every id, so the samples are off-policy (rl.sampler_matches_trainer will say by how much; "
                "docs/grpo.md)\n";
    }
}

GrpoTrainer::~GrpoTrainer() { bugs() = bugs_before_; }

GrpoUpdateMetrics GrpoTrainer::update() {
    const auto start = std::chrono::steady_clock::now();
    const int64_t P = config_.prompts_per_update, G = config_.group_size, T = config_.seq_len;
    const int64_t end_of_turn = chat_->end_of_turn_id();

    // 1-3. Prompts from the train split, G samples each with the KV cache, verifier rewards.
    const int64_t session_len = std::min<int64_t>(T + 1, policy_->config().max_position_embeddings);
    InferenceSession session(*policy_, session_len);
    SamplingConfig sampling;
    sampling.temperature = config_.temperature;
    sampling.top_k = config_.top_k;
    sampling.max_new_tokens = config_.max_new_tokens;
    sampling.stop_ids = {end_of_turn};
    std::vector<PolicyRow> rows;
    std::vector<double> rewards, sampler_logprobs;   // sampler_logprobs: every sampled token, rows in order
    std::vector<uint8_t> row_correct;
    std::vector<std::string> row_text;               // prompt and response, for messages
    int64_t correct = 0, ended = 0;
    for (int64_t p = 0; p < P; ++p) {
        TaskExample example;
        for (int64_t draws = 0;; ++draws) {
            check(draws < 1'000'000, "GRPO: no training-split problem in a million draws of task ", task_->name());
            example = task_->generate(prompt_rng_);
            if (split_of(example.prompt) == Split::train) break;
        }
        const std::vector<int64_t> prompt = chat_->render_prompt(to_conversation(example, system_prompt_, false));
        const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
        check(prompt_tokens + config_.max_new_tokens <= session_len, "GRPO: the prompt '", example.prompt,
              "' renders to ", prompt_tokens, " tokens; with sampling.max_new_tokens = ", config_.max_new_tokens,
              " a row needs ", prompt_tokens + config_.max_new_tokens, " positions, but seq_len + 1 = ", T + 1,
              " and the model's max_position_embeddings = ", policy_->config().max_position_embeddings);
        for (int64_t g = 0; g < G; ++g) {
            const Generation gen = generate(session, prompt, sampling, sample_rng_);
            std::vector<int64_t> answer = gen.ids;
            if (gen.stopped) answer.pop_back();  // the end-of-turn token
            const std::string response = tokenizer_->decode(answer);
            // A completion cut off at max_new_tokens has not answered yet: only an ended turn can be
            // right (greedy eval, with its longer budget, would read on past the cut).
            const bool ok = gen.stopped && task_->verify(example.prompt, response);
            const bool ended_with_answer = gen.stopped && !trimmed(response).empty();
            correct += ok;
            ended += gen.stopped;
            double reward = grpo_reward(ok, ended_with_answer, config_.reward_correct, config_.reward_format);
            if (reward_hook_) reward = reward_hook_(example.prompt, response, reward);
            rewards.push_back(reward);
            row_correct.push_back(ok ? 1 : 0);
            row_text.push_back("'" + example.prompt + "' -> '" + response + "'");
            sampler_logprobs.insert(sampler_logprobs.end(), gen.logprobs.begin(), gen.logprobs.end());
            PolicyRow row{prompt, prompt_tokens};
            row.ids.insert(row.ids.end(), gen.ids.begin(), gen.ids.end());
            rows.push_back(std::move(row));
        }
    }
    const auto sampled = std::chrono::steady_clock::now();
    GrpoUpdateMetrics m;
    // The trainer scores what the sampler drew from: softmax(logits / temperature). BUG
    // sampler-logprob-mismatch: it scores softmax(logits) whatever the sampling temperature.
    const double scoring_temperature = bugs().sampler_logprob_mismatch ? 1.0 : config_.temperature;
    policy_->set_logit_temperature(scoring_temperature);
    reference_->set_logit_temperature(scoring_temperature);

    // 4. Group advantages. The checks name the update 1-based, as the log lines do. Rewards must be
    // finite before they meet the group statistics: a group holding a non-finite reward is left out of
    // the update (its rewards count as uniform, advantage 0) and named. BUG nan-reward-poisons-batch:
    // they go in as they are, and one NaN makes its whole group's mean, std and advantages NaN.
    std::vector<double> group_rewards = rewards;
    for (int64_t g = 0; g < P; ++g) {
        int64_t bad = 0;
        for (int64_t i = g * G; i < (g + 1) * G; ++i) bad += !std::isfinite(rewards[static_cast<size_t>(i)]);
        if (bad == 0) continue;
        if (m.nonfinite_rewards == 0) {
            for (int64_t i = g * G; i < (g + 1) * G; ++i) {
                if (!std::isfinite(rewards[static_cast<size_t>(i)])) {
                    out_ << "WARNING: GRPO update " << update_ + 1 << ": reward " << rewards[static_cast<size_t>(i)]
                         << " for " << row_text[static_cast<size_t>(i)]
                         << (bugs().nan_reward_poisons_batch ? " enters the group statistics\n"
                                                             : ": its group is left out of this update\n");
                    break;
                }
            }
        }
        m.nonfinite_rewards += bad;
        if (!bugs().nan_reward_poisons_batch) {
            std::fill(group_rewards.begin() + g * G, group_rewards.begin() + (g + 1) * G, 0.0);
        }
    }
    const GroupAdvantages adv = group_advantages(group_rewards, G, config_.std_normalize, config_.std_eps);
    check_uniform_group_zero_advantage(invariants_, group_rewards, adv.advantages, G, update_ + 1);
    check_advantages_bounded(invariants_, group_rewards, adv.advantages, G, config_.std_normalize, update_ + 1);
    for (double a : adv.advantages) {
        m.max_abs_advantage = std::isnan(m.max_abs_advantage) || std::isnan(a) ? std::nan("")
                                                                               : std::max(m.max_abs_advantage, std::fabs(a));
    }

    // 5-6. The loss over every sampled token, micro-batch by micro-batch (gradients accumulate), then
    // clip and step; inner_epochs times on the same samples. Token k of the update is the k-th sampled
    // token, rows in order: the index of logp_old, logp_ref and sampler_logprobs.
    int64_t N = 0;
    std::vector<int64_t> lengths;
    double correct_tokens = 0.0, incorrect_tokens = 0.0;
    for (size_t i = 0; i < rows.size(); ++i) {
        lengths.push_back(static_cast<int64_t>(rows[i].ids.size()) - rows[i].prompt_tokens);
        N += lengths.back();
        (row_correct[i] ? correct_tokens : incorrect_tokens) += static_cast<double>(lengths.back());
    }
    if (correct > 0) m.correct_length = correct_tokens / static_cast<double>(correct);
    if (P * G - correct > 0) m.incorrect_length = incorrect_tokens / static_cast<double>(P * G - correct);
    check(static_cast<int64_t>(sampler_logprobs.size()) == N, "GRPO: ", sampler_logprobs.size(),
          " sampler log-probs for ", N, " sampled tokens");
    const double inv_n = 1.0 / static_cast<double>(N);
    const double eps = config_.clip_eps;
    const int64_t Bm = config_.micro_batch_size;
    std::vector<double> logp_old(static_cast<size_t>(N)), logp_ref(static_cast<size_t>(N)), trainer_first(static_cast<size_t>(N));
    std::vector<double> token_k1;
    token_k1.reserve(static_cast<size_t>(N));
    double k1_sum = 0.0, k3_sum = 0.0, measured_sum = 0.0, loss = 0.0;
    double weight_lo = INFINITY, weight_hi = 0.0;  // per-unit-advantage token weights of the first epoch
    for (int64_t epoch = 0; epoch < config_.inner_epochs; ++epoch) {
        policy_->zero_grad();
        int64_t k = 0, clipped = 0;
        bool poisoned = false;
        double ratio_sum = 0.0, ratio_dev = 0.0, epoch_loss = 0.0;
        for (int64_t first = 0; first < P * G; first += Bm) {
            const int64_t count = std::min(Bm, P * G - first);
            const std::span<const PolicyRow> slice(rows.data() + first, static_cast<size_t>(count));
            build_policy_batch(slice, Bm, T, end_of_turn, inputs_, targets_);
            const Tensor ids(inputs_.data(), DType::I64, {Bm, T}, "input_ids");
            const Tensor targets(targets_.data(), DType::I64, {Bm, T}, "targets");
            std::vector<double> ref;  // the reference is frozen: scored once, in the first inner epoch
            if (epoch == 0) {
                reference_->forward(ids, targets);
                ref = reference_->target_logprobs();
            }
            policy_->forward(ids, targets);
            const std::vector<double> logp = policy_->target_logprobs();
            std::vector<double> weights(static_cast<size_t>(Bm * T), 0.0);
            bool any_weight = false;
            for (int64_t b = 0; b < count; ++b) {
                const double A = adv.advantages[static_cast<size_t>(first + b)];
                // Every sampled token of the update weighs 1 / N, whatever its completion's length (Dr.
                // GRPO, Liu et al. 2025). BUG grpo-length-bias: each completion's tokens averaged over its
                // own length, then over the completions (the original GRPO objective): each token of a long
                // wrong completion is pushed down less than a short one's, so wrong answers can grow longer.
                const double norm = bugs().grpo_length_bias
                                        ? 1.0 / (static_cast<double>(P * G) *
                                                 static_cast<double>(lengths[static_cast<size_t>(first + b)]))
                                        : inv_n;
                for (int64_t t = 0; t < T; ++t) {
                    const size_t n = static_cast<size_t>(b * T + t);
                    if (targets_[n] == cpu::kIgnoreIndex) continue;
                    const size_t kk = static_cast<size_t>(k++);
                    if (epoch == 0) {
                        logp_ref[kk] = ref[n];
                        trainer_first[kk] = logp[n];
                        logp_old[kk] = config_.old_logprobs == "sampler" ? sampler_logprobs[kk] : logp[n];
                    }
                    // p_old is fixed for the whole update. BUG ratio-always-one: re-taken from this
                    // forward at every inner epoch (exp(logp - logp.detach())): r = 1, the clip never acts.
                    const double old = bugs().ratio_always_one ? logp[n] : logp_old[kk];
                    const double ratio = std::exp(logp[n] - old);
                    const bool held = (A > 0.0 && ratio > 1.0 + eps) || (A < 0.0 && ratio < 1.0 - eps);
                    clipped += held;
                    ratio_sum += ratio;
                    ratio_dev = std::isnan(ratio) ? ratio : std::max(ratio_dev, std::fabs(ratio - 1.0));
                    const double clipped_ratio = std::clamp(ratio, 1.0 - eps, 1.0 + eps);
                    const double surrogate = -std::min(ratio * A, clipped_ratio * A);
                    const double rho = kl_log_ratio(logp[n], logp_ref[kk]);
                    const double k3 = kl_k3(rho);
                    if (epoch == 0) {
                        token_k1.push_back(kl_k1(rho));
                        k1_sum += kl_k1(rho);
                        measured_sum += logp[n] - logp_ref[kk];
                        k3_sum += k3;
                    }
                    epoch_loss += (surrogate + config_.kl_coef * k3) * norm;
                    // w = -dL/dlog p: d(-r A)/dlog p = -r A where the clip does not hold, 0 where it does.
                    weights[n] = ((held ? 0.0 : A * ratio) - config_.kl_coef * kl_k3_grad(rho)) * norm;
                    // The weight the policy-gradient term gives this token per unit of r * A, read back
                    // from the weight (first epoch, no KL term, tokens the clip does not hold).
                    if (epoch == 0 && A != 0.0 && config_.kl_coef == 0.0 && !held) {
                        const double per_unit = weights[n] / (A * ratio);
                        weight_lo = std::min(weight_lo, per_unit);
                        weight_hi = std::max(weight_hi, per_unit);
                    }
                    any_weight = any_weight || weights[n] != 0.0;
                }
            }
            // A non-finite token weight (a NaN advantage) would make every gradient NaN, as autograd would;
            // the op refuses one, so the step is marked poisoned instead and its gradient norm is NaN.
            if (!std::all_of(weights.begin(), weights.end(), [](double w) { return std::isfinite(w); })) {
                poisoned = true;
            } else if (any_weight) {
                policy_->backward_weighted(weights);
            }
        }
        m.clip_fraction.push_back(static_cast<double>(clipped) * inv_n);
        m.ratio_max_deviation.push_back(ratio_dev);
        m.ratio_mean.push_back(ratio_sum * inv_n);
        if (epoch == 0) {
            loss = epoch_loss;
            double gap_sum = 0.0;
            for (size_t i = 0; i < trainer_first.size(); ++i) {
                const double gap = std::fabs(trainer_first[i] - sampler_logprobs[i]);
                gap_sum += gap;
                m.logprob_gap_max = std::isnan(gap) ? gap : std::max(m.logprob_gap_max, gap);
            }
            m.logprob_gap_mean = gap_sum * inv_n;
            check_sampler_matches_trainer(invariants_, sampler_logprobs, trainer_first, kSamplerGapTolerance, update_ + 1);
            check_kl_nonnegative(invariants_, token_k1, lengths, update_ + 1);
            if (weight_hi > 0.0) m.token_weight_spread = weight_hi / weight_lo;
            check_token_weights_equal(invariants_, m.token_weight_spread, m.incorrect_length, m.correct_length, update_ + 1);
            check_loss_finite(invariants_, loss, update_ + 1);
        }
        check_ratio_moves(invariants_, epoch, ratio_dev, epoch > 0 && m.skipped_steps < epoch, update_ + 1);

        const double norm = poisoned ? std::nan("") : clip_grad_norm(policy_->grads(), config_.max_grad_norm);
        if (epoch == 0) m.grad_norm = norm;
        // A non-finite norm: fatal (the default) stops the run; warn skips this step and goes on.
        if (!check_grad_norm_finite(invariants_, norm, epoch_loss, update_)) {
            ++m.skipped_steps;
            continue;
        }
        check(std::isfinite(norm), "GRPO update ", update_ + 1, ": the gradient norm is ", norm,
              " (not finite); the update was not applied. Lower optimizer.lr");
        optimizer_->step(config_.adamw.lr);
    }
    ++update_;

    const double completions = static_cast<double>(P * G);
    m.update = update_;
    double reward_sum = 0.0;
    for (double r : rewards) reward_sum += r;
    m.reward_mean = reward_sum / completions;
    m.accuracy = static_cast<double>(correct) / completions;
    m.zero_signal_fraction = static_cast<double>(adv.uniform_groups) / static_cast<double>(adv.groups);
    m.zero_advantage_fraction = static_cast<double>(adv.zero_advantage_groups) / static_cast<double>(adv.groups);
    m.max_abs_uniform_advantage = adv.max_abs_uniform_advantage;
    m.kl_k1 = k1_sum * inv_n;
    m.kl_k3 = k3_sum * inv_n;
    m.kl_measured = measured_sum * inv_n;
    m.mean_length = static_cast<double>(N) / completions;
    m.ended_fraction = static_cast<double>(ended) / completions;
    m.loss = loss;
    m.sampled_tokens = N;
    const auto done = std::chrono::steady_clock::now();
    m.sample_seconds = std::chrono::duration<double>(sampled - start).count();
    m.update_seconds = std::chrono::duration<double>(done - sampled).count();
    return m;
}

GrpoEval GrpoTrainer::evaluate(int64_t show) {
    GrpoEval e;
    e.update = update_;
    e.examples = static_cast<int64_t>(eval_examples_.size());
    e.exact_match = exact_match(*policy_, *chat_, *task_, eval_examples_, system_prompt_, config_.eval_max_new_tokens,
                                show, out_);
    return e;
}

std::string GrpoTrainer::save_checkpoint() {
    TrainState state;
    state.step = update_;
    state.rng_states = {prompt_rng_.state(), sample_rng_.state()};
    state.template_fingerprint = chat_->fingerprint();
    state.tokenizer_fingerprint = tokenizer_->fingerprint();
    state.extra = {{"grpo", config_.resolved}, {"init", init_dir_}};
    // run.json stays the SFT run's: it describes the model, tokenizer and template, which is what
    // `reftrain sample` and a later GRPO run read from it.
    return save_run_checkpoint(config_.run_dir, *policy_, *optimizer_, state, init_run_config_, tokenizer_model_path_);
}

GrpoRunResult GrpoTrainer::run() {
    const auto start = std::chrono::steady_clock::now();
    const fs::path run_dir(config_.run_dir);
    RunLog metrics;   // run_dir/metrics.jsonl and its TensorBoard mirror
    metrics.open(run_dir.string(), false, config_.tensorboard);
    metrics.write_config(config_.resolved);
    GrpoRunResult result;
    out_ << "GRPO from " << init_dir_ << ": " << policy_->num_parameters() << " parameters, task " << task_->name()
         << ", " << config_.updates << " updates of " << config_.prompts_per_update << " prompts x "
         << config_.group_size << " samples on " << omp_get_max_threads() << " threads\n";
    out_ << "blas: " << cpu::blas_summary() << "\n";

    auto log_eval = [&](int64_t show) {
        const GrpoEval e = evaluate(show);
        result.evals.push_back(e);
        char line[160];
        std::snprintf(line, sizeof line, "eval update %lld: held-out exact match %.1f%% of %lld test problems (greedy)\n",
                      (long long)e.update, 100.0 * e.exact_match, (long long)e.examples);
        out_ << line;
        metrics.write(json{{"kind", "eval"}, {"update", e.update}, {"exact_match", e.exact_match},
                           {"examples", e.examples}});
    };

    log_eval(config_.eval_samples);
    while (update_ < config_.updates) {
        const GrpoUpdateMetrics m = update();
        result.updates.push_back(m);
        metrics.write(json{{"kind", "update"},
                           {"update", m.update},
                           {"reward_mean", m.reward_mean},
                           {"accuracy", m.accuracy},
                           {"zero_signal_fraction", m.zero_signal_fraction},
                           {"zero_advantage_fraction", m.zero_advantage_fraction},
                           {"max_abs_uniform_advantage", m.max_abs_uniform_advantage},
                           {"kl_k1", m.kl_k1},
                           {"kl_measured", m.kl_measured},
                           {"kl_k3", m.kl_k3},
                           {"mean_length", m.mean_length},
                           {"ended_fraction", m.ended_fraction},
                           {"loss", m.loss},
                           {"grad_norm", m.grad_norm},
                           {"sampled_tokens", m.sampled_tokens},
                           {"sample_seconds", m.sample_seconds},
                           {"update_seconds", m.update_seconds},
                           {"clip_fraction", m.clip_fraction},
                           {"ratio_max_deviation", m.ratio_max_deviation},
                           {"ratio_mean", m.ratio_mean},
                           {"logprob_gap_mean", m.logprob_gap_mean},
                           {"logprob_gap_max", m.logprob_gap_max},
                           {"correct_length", m.correct_length},
                           {"incorrect_length", m.incorrect_length},
                           {"nonfinite_rewards", m.nonfinite_rewards},
                           {"max_abs_advantage", std::isfinite(m.max_abs_advantage) ? json(m.max_abs_advantage) : json(nullptr)},
                           {"skipped_steps", m.skipped_steps}});
        if (config_.log_every > 0 && (m.update % config_.log_every == 0 || m.update == config_.updates)) {
            char line[256];
            std::snprintf(line, sizeof line,
                          "update %lld/%lld reward %.3f acc %.3f zero-signal %.2f kl k1 %.2e k3 %.2e len %.2f "
                          "gnorm %.3f %.2fs\n",
                          (long long)m.update, (long long)config_.updates, m.reward_mean, m.accuracy,
                          m.zero_signal_fraction, m.kl_k1, m.kl_k3, m.mean_length, m.grad_norm,
                          m.sample_seconds + m.update_seconds);
            out_ << line << std::flush;
        }
        if (config_.eval_every > 0 && m.update % config_.eval_every == 0 && m.update < config_.updates) log_eval(0);
    }
    log_eval(config_.eval_samples);
    result.checkpoint = save_checkpoint();
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const GrpoEval& before = result.evals.front();
    const GrpoEval& after = result.evals.back();
    char line[256];
    std::snprintf(line, sizeof line,
                  "GRPO: held-out exact match %.1f%% -> %.1f%% (%+.1f points) on %lld test problems; %lld updates, "
                  "%.1f s in all\n",
                  100.0 * before.exact_match, 100.0 * after.exact_match, 100.0 * (after.exact_match - before.exact_match),
                  (long long)after.examples, (long long)update_, result.seconds);
    out_ << line << "checkpoint: " << result.checkpoint << "\n";
    const std::string violated = invariants_.summary();
    if (!violated.empty()) out_ << "invariants violated during this run (warn mode):\n" << violated;
    return result;
}

int run_grpo_command(const std::string& config_path, const std::vector<std::string>& sets, std::ostream& out) {
    const GrpoConfig config = load_grpo_config(config_path, sets);
    out << "reftrain rl (GRPO): resolved config (" << (config_path.empty() ? "defaults" : config_path)
        << (sets.empty() ? "" : " + --set") << ")\n"
        << config.resolved.dump(2) << "\n";
    GrpoTrainer trainer(config, out);
    trainer.run();
    return 0;
}

}  // namespace reftrain
