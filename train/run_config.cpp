// train/run_config.cpp — defaults, strict merging, --set overrides and typed parsing of a run config.
#include "train/run_config.h"

#include <fstream>
#include <sstream>

#include <algorithm>

#include "kernels/bugs.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"
#include "train/config_fields.h"

namespace reftrain {

using json = nlohmann::json;

namespace {

// Every key of a run config but `model` (HF's fields, from ModelConfig) once: path, then where it lives.
const ConfigFields<RunConfig>& run_fields() {
    using R = RunConfig;
    using D = DataConfig;
    using T = TrainConfig;
    using S = ScheduleConfig;
    using E = EvalConfig;
    static const ConfigFields<RunConfig> fields = [] {
        ConfigFields<RunConfig> f;
        f.add("run_dir", &R::run_dir).add("seed", &R::seed).add("threads", &R::threads).non_negative();
        f.add("data.task", &R::data, &D::task)
            .add("data.task_options", &R::data, &D::task_options)
            .add("data.jsonl", &R::data, &D::jsonl)
            .add("data.val_jsonl", &R::data, &D::val_jsonl)
            .add("data.template", &R::data, &D::template_name)
            .add("data.tokenizer", &R::data, &D::tokenizer)
            .add("data.tokenizer_vocab_size", &R::data, &D::tokenizer_vocab_size)
            .add("data.tokenizer_cache", &R::data, &D::tokenizer_cache)
            .add("data.system_prompt", &R::data, &D::system_prompt)
            .add("data.train_examples", &R::data, &D::train_examples).positive()
            .add("data.val_examples", &R::data, &D::val_examples).non_negative()
            .add("data.test_examples", &R::data, &D::test_examples).non_negative()
            .add("data.bos_aligned", &R::data, &D::bos_aligned);
        f.add("train.batch_size", &R::train, &T::batch_size).positive()
            .add("train.seq_len", &R::train, &T::seq_len).positive()
            .add("train.grad_accum", &R::train, &T::grad_accum).positive()
            .add("train.global_batch", &R::train, &T::global_batch).non_negative()
            .add("train.max_steps", &R::train, &T::max_steps).positive()
            .add("train.grad_clip", &R::train, &T::grad_clip)
            .add("train.loss_normalization", &R::train, &T::loss_normalization).one_of({"tokens", "micro_batches"})
            .add("train.precision", &R::train, &T::precision).one_of({"fp32", "bf16", "fp16"})
            .add("train.device", &R::train, &T::device).one_of({"cpu", "cuda"})
            .add("train.deterministic", &R::train, &T::deterministic)
            .add("train.loss_spike_z", &R::train, &T::loss_spike_z).non_negative()
            .add("train.loss_spike_window", &R::train, &T::loss_spike_window).positive()
            .add("train.loss_spike_skip", &R::train, &T::loss_spike_skip)
            .add("train.beta1", &R::train, &T::adamw, &AdamWConfig::beta1).between(0.0, 0.999999)   // lr: the schedule's
            .add("train.beta2", &R::train, &T::adamw, &AdamWConfig::beta2).between(0.0, 0.999999999)
            .add("train.eps", &R::train, &T::adamw, &AdamWConfig::eps).between(1e-30, 1.0)
            .add("train.weight_decay", &R::train, &T::adamw, &AdamWConfig::weight_decay).between(0.0, 10.0);
        f.add("schedule.kind", &R::schedule, &S::kind)
            .add("schedule.lr", &R::schedule, &S::lr).between(0.0, 100.0)
            .add("schedule.warmup_steps", &R::schedule, &S::warmup_steps)
            .add("schedule.total_steps", &R::schedule, &S::total_steps)
            .add("schedule.final_lr_fraction", &R::schedule, &S::final_lr_fraction)
            .add("schedule.decay_fraction", &R::schedule, &S::decay_fraction)
            .add("schedule.decay_shape", &R::schedule, &S::decay_shape);
        f.add("eval.every", &R::eval, &E::every).non_negative()
            .add("eval.exact_match_examples", &R::eval, &E::exact_match_examples).non_negative()
            .add("eval.samples", &R::eval, &E::samples).non_negative()
            .add("eval.max_new_tokens", &R::eval, &E::max_new_tokens).positive()
            .add("eval.final_test", &R::eval, &E::final_test)
            .add("eval.stop_at_exact_match", &R::eval, &E::stop_at_exact_match);
        f.add("tracer.enabled", &R::tracer, &TracerConfig::enabled)
            .add("tracer.frames", &R::tracer, &TracerConfig::frames).between(1, 100000)
            .add("tracer.policy", &R::tracer, &TracerConfig::policy).one_of({"stop", "skip"})
            .add("tracer.summary_every", &R::tracer, &TracerConfig::summary_every).between(0, int64_t{1} << 40);
        f.add("loss_scaler.init_scale", &R::loss_scaler, &LossScalerSettings::init_scale)
            .add("loss_scaler.growth_factor", &R::loss_scaler, &LossScalerSettings::growth_factor)
            .add("loss_scaler.backoff_factor", &R::loss_scaler, &LossScalerSettings::backoff_factor)
            .add("loss_scaler.growth_interval", &R::loss_scaler, &LossScalerSettings::growth_interval);
        f.add("dist.sync_check_every", &R::dist, &DistConfig::sync_check_every).positive()
            .add("dist.check_first_step", &R::dist, &DistConfig::check_first_step)
            .add("dist.allow_global_batch_change", &R::dist, &DistConfig::allow_global_batch_change);
        f.add("log_every", &R::log_every).positive()
            .add("tensorboard", &R::tensorboard)
            .add("checkpoint_every", &R::checkpoint_every).non_negative()
            .add("checkpoint_keep", &R::checkpoint_keep).non_negative()
            .add("checkpoint_keep_best", &R::checkpoint_keep_best)
            .add("resume", &R::resume)
            .add("invariants", &R::invariants)
            .add("bugs", &R::bugs);
        return f;
    }();
    return fields;
}

}  // namespace

json default_run_config() {
    json j = run_fields().write(RunConfig{});
    json model = ModelConfig{}.to_json();
    // These two are written by to_json() for HF but are not settings of a run.
    model.erase("architectures");
    model.erase("model_type");
    model["vocab_size"] = 0;
    j["model"] = model;
    return j;
}

void check_bug_switches(const json& bugs, const std::string& source) {
    check(bugs.is_object(), source, ": 'bugs' must be an object of switches, e.g. {\"forgot-zero-grad\": true}, got ",
          bugs.dump());
    const std::vector<std::string> known = bug_names();
    for (const auto& [name, on] : bugs.items()) {
        check(on.is_boolean(), source, ": 'bugs.", name, "' must be true or false, got ", on.dump());
        std::string id = name;
        std::replace(id.begin(), id.end(), '_', '-');
        if (std::find(known.begin(), known.end(), id) == known.end()) {
            const std::string closest = closest_name(id, known);
            fail(source, ": unknown bug switch 'bugs.", name, "'",
                 closest.empty() ? std::string() : concat(" (did you mean '", closest, "'?)"));
        }
    }
}

namespace {

// JSON kinds that may replace each other: any number for a number (3 for 3.0), nothing else.
const char* kind_of(const json& j) {
    if (j.is_number()) return "number";
    if (j.is_boolean()) return "boolean";
    if (j.is_string()) return "string";
    if (j.is_object()) return "object";
    if (j.is_array()) return "array";
    return "null";
}

void merge_at(json& base, const json& overrides, const std::string& prefix, const std::string& source) {
    check(overrides.is_object(), source, ": ", prefix.empty() ? "the config" : "'" + prefix + "'",
          " must be a JSON object, got ", overrides.type_name());
    std::vector<std::string> known;
    for (const auto& [key, unused] : base.items()) known.push_back(key);
    for (const auto& [key, value] : overrides.items()) {
        const std::string dotted = prefix.empty() ? key : prefix + "." + key;
        if (!base.contains(key)) {
            const std::string closest = closest_name(key, known);
            fail(source, ": unknown key '", dotted, "'",
                 closest.empty() ? std::string() : concat(" (did you mean '", prefix.empty() ? "" : prefix + ".",
                                                          closest, "'?)"));
        }
        json& slot = base[key];
        // Free-form objects (a task's own options, HF's rope_scaling; their owner checks them) are
        // replaced whole by a config file, but a --set updates only the keys it names:
        // `--set data.task_options.answer=x` keeps the file's other task options.
        const bool rope_scaling = dotted == "model.rope_scaling";   // null = none
        if (rope_scaling || dotted == "data.task_options" || dotted == "invariants" || dotted == "bugs") {
            check(value.is_object() || (rope_scaling && value.is_null()), source, ": '", dotted, "' must be ",
                  rope_scaling ? "an HF rope_scaling object or null" : "an object", ", got ", value.type_name());
            const bool from_set = source.rfind("--set ", 0) == 0;
            if (from_set && slot.is_object() && value.is_object()) {
                slot.update(value);
            } else {
                slot = value;
            }
            continue;
        }
        if (slot.is_object()) {
            merge_at(slot, value, dotted, source);
            continue;
        }
        const bool integer_slot = slot.is_number_integer() || slot.is_number_unsigned();
        if (std::string(kind_of(slot)) != kind_of(value) || (integer_slot && value.is_number_float())) {
            fail(source, ": '", dotted, "' must be ", integer_slot ? "an integer" : concat("a ", kind_of(slot)),
                 ", got ", value.dump());
        }
        slot = value;
    }
}

}  // namespace

void merge_config(json& base, const json& overrides, const std::string& source) {
    merge_at(base, overrides, "", source);
}

void apply_set(json& config, const std::string& assignment) {
    const size_t eq = assignment.find('=');
    check(eq != std::string::npos && eq > 0, "--set '", assignment, "': expected key=value, e.g. train.max_steps=200");
    // Keys and bare-word values become JSON strings, which must be UTF-8: the messages below quote them
    // through json::dump(), which throws on anything else (found by tests/fuzz/fuzz_run_config.cpp).
    try {
        (void)json(assignment).dump();
    } catch (const json::exception&) {
        fail("--set: the assignment is not valid UTF-8 text (a byte sequence no key or value can hold)");
    }
    const std::string key = assignment.substr(0, eq);
    const std::string text = assignment.substr(eq + 1);
    json value;
    DuplicateKey duplicate;
    try {
        value = parse_json_noting_duplicates(text, &duplicate);
    } catch (const json::parse_error&) {
        value = text;  // a bare word is a string
    } catch (const json::exception& e) {   // valid JSON the reader refuses: 1e400, nesting
        fail("--set '", key, "=...': ", e.what());
    }
    check(duplicate.key.empty(), "--set '", key, "=...': key '", duplicate.key, "' appears twice in the value");
    // Build {"a": {"b": value}} for "a.b" and merge it strictly, so --set has the same checks as a file.
    json nested = value;
    std::string rest = key;
    std::vector<std::string> parts;
    for (size_t start = 0;;) {
        const size_t dot = rest.find('.', start);
        parts.push_back(rest.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        check(!it->empty(), "--set '", assignment, "': empty key component");
        nested = json{{*it, nested}};
    }
    merge_at(config, nested, "", "--set " + assignment);
}

MergedConfig merge_config_sources(json defaults, const std::string& what, const std::string& algorithm,
                                  const std::string& path, const std::vector<std::string>& sets) {
    MergedConfig merged{std::move(defaults), path.empty() ? "the default " + what : path};
    if (!path.empty()) {
        json file = read_json_file(path, what);
        check(file.is_object(), path, ": the ", what, " must be a JSON object, got ", file.type_name());
        if (file.contains("algorithm")) {
            // An RL config sent to `reftrain train`, or PPO's to GRPO's loader: say which command runs it.
            check(!algorithm.empty(), path, ": this is an RL config ('algorithm': ", file.at("algorithm").dump(),
                  "); run it with `reftrain rl --config ", path, "`, not `reftrain train`");
            check(file.at("algorithm") == algorithm, path, ": 'algorithm' is ", file.at("algorithm").dump(),
                  "; this is the ", what, " loader (`reftrain rl --config` sends each algorithm to its own)");
            if (!merged.json.contains("algorithm")) file.erase("algorithm");
        }
        merge_config(merged.json, file, path);
    }
    for (const std::string& s : sets) apply_set(merged.json, s);
    // A range error can come from the file or from a --set: name both when both were given.
    if (!sets.empty()) merged.source += " with its --set overrides";
    return merged;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& sets) {
    const MergedConfig merged = merge_config_sources(default_run_config(), "run config", "", path, sets);
    return parse_run_config(merged.json, merged.source);
}

RunConfig parse_saved_run_config(const json& saved, const std::string& source) {
    json merged = default_run_config();
    merge_config(merged, saved, source);
    return parse_run_config(merged, source);
}

RunConfig parse_run_config(const json& j, const std::string& source) {
    RunConfig r;
    r.resolved = j;
    run_fields().read(j, r, source);
    r.model = j.at("model");
    check(!r.run_dir.empty(), source, ": 'run_dir' must not be empty");
    check_bug_switches(r.bugs, source);
    if (r.schedule.total_steps == 0) r.schedule.total_steps = r.train.max_steps;
    r.train.adamw.lr = r.schedule.lr;

    // Rules that tie keys together, or that the table cannot say.
    check(r.data.task.empty() != r.data.jsonl.empty(), source,
          ": set exactly one of 'data.task' (a toy task) and 'data.jsonl' (your conversations); got task=\"",
          r.data.task, "\", jsonl=\"", r.data.jsonl, "\"");
    check(r.data.tokenizer_vocab_size >= 64, source, ": 'data.tokenizer_vocab_size' must be >= 64, got ",
          r.data.tokenizer_vocab_size);
    const double stop = r.eval.stop_at_exact_match;
    check(stop >= 0.0 && stop <= 1.0, source, ": 'eval.stop_at_exact_match' is a fraction in [0, 1] (0 = off), got ", stop);
    check(stop == 0.0 || (r.eval.every > 0 && r.eval.exact_match_examples > 0 && !r.data.task.empty()), source,
          ": 'eval.stop_at_exact_match' needs evals during training on a toy task: eval.every > 0 (got ", r.eval.every,
          "), eval.exact_match_examples > 0 (got ", r.eval.exact_match_examples, ") and data.task set");
    try {
        validate(r.schedule);
    } catch (const Error& err) {
        fail(source, ": ", err.what());
    }
    return r;
}

}  // namespace reftrain
