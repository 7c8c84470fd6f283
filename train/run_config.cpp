// train/run_config.cpp — defaults, strict merging, --set overrides and typed parsing of a run config.
#include "train/run_config.h"

#include <fstream>
#include <sstream>

#include <algorithm>

#include "kernels/bugs.h"
#include "kernels/error.h"
#include "kernels/json_strict.h"

namespace reftrain {

using json = nlohmann::json;

json default_run_config() {
    const DataConfig d;
    const TrainConfig t;
    const ScheduleConfig s;
    const EvalConfig e;
    const RunConfig r;
    json model = ModelConfig{}.to_json();
    // These two are written by to_json() for HF but are not settings of a run.
    model.erase("architectures");
    model.erase("model_type");
    model["vocab_size"] = 0;
    return json{
        {"run_dir", r.run_dir},
        {"seed", r.seed},
        {"threads", r.threads},
        {"model", model},
        {"data",
         {{"task", d.task},
          {"task_options", d.task_options},
          {"jsonl", d.jsonl},
          {"val_jsonl", d.val_jsonl},
          {"template", d.template_name},
          {"tokenizer", d.tokenizer},
          {"tokenizer_vocab_size", d.tokenizer_vocab_size},
          {"tokenizer_cache", d.tokenizer_cache},
          {"system_prompt", d.system_prompt},
          {"train_examples", d.train_examples},
          {"val_examples", d.val_examples},
          {"test_examples", d.test_examples},
          {"bos_aligned", d.bos_aligned}}},
        {"train",
         {{"batch_size", t.batch_size},
          {"seq_len", t.seq_len},
          {"grad_accum", t.grad_accum},
          {"max_steps", t.max_steps},
          {"grad_clip", t.grad_clip},
          {"loss_normalization", t.loss_normalization},
          {"precision", t.precision},
          {"device", t.device},
          {"deterministic", t.deterministic},
          {"beta1", t.adamw.beta1},
          {"beta2", t.adamw.beta2},
          {"eps", t.adamw.eps},
          {"weight_decay", t.adamw.weight_decay}}},
        {"schedule",
         {{"kind", s.kind},
          {"lr", s.lr},
          {"warmup_steps", s.warmup_steps},
          {"total_steps", s.total_steps},
          {"final_lr_fraction", s.final_lr_fraction},
          {"decay_fraction", s.decay_fraction},
          {"decay_shape", s.decay_shape}}},
        {"eval",
         {{"every", e.every},
          {"exact_match_examples", e.exact_match_examples},
          {"samples", e.samples},
          {"max_new_tokens", e.max_new_tokens},
          {"final_test", e.final_test}}},
        {"tracer", {{"enabled", r.tracer.enabled}, {"frames", r.tracer.frames}, {"policy", r.tracer.policy}}},
        {"loss_scaler",
         {{"init_scale", r.loss_scaler.init_scale},
          {"growth_factor", r.loss_scaler.growth_factor},
          {"backoff_factor", r.loss_scaler.backoff_factor},
          {"growth_interval", r.loss_scaler.growth_interval}}},
        {"log_every", r.log_every},
        {"checkpoint_every", r.checkpoint_every},
        {"resume", r.resume},
        {"invariants", r.invariants},
        {"bugs", r.bugs},
    };
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
        // Free-form objects (a task's own options; their owner checks them) are replaced whole by a
        // config file, but a --set updates only the keys it names: `--set data.task_options.answer=x`
        // keeps the file's other task options.
        const bool from_set = source.rfind("--set ", 0) == 0;
        if (dotted == "data.task_options" || dotted == "invariants" || dotted == "bugs") {
            check(value.is_object(), source, ": '", dotted, "' must be an object, got ", value.type_name());
            if (from_set && slot.is_object()) {
                slot.update(value);
            } else {
                slot = value;
            }
            continue;
        }
        // HF's RoPE scaling object (null = none), likewise; ModelConfig::from_json checks it.
        if (dotted == "model.rope_scaling") {
            check(value.is_object() || value.is_null(), source, ": '", dotted,
                  "' must be an HF rope_scaling object or null, got ", value.type_name());
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


template <class T>
T get(const json& j, const char* key) {
    return j.at(key).get<T>();
}

}  // namespace

json read_config_json(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary);
    check(static_cast<bool>(in), path, ": cannot open the ", what);
    std::stringstream text;
    text << in.rdbuf();
    DuplicateKey duplicate;
    json j;
    try {
        j = parse_json_noting_duplicates(text.str(), &duplicate);
    } catch (const json::parse_error& e) {
        fail(path, ": not valid JSON: ", e.what());
    }
    check(duplicate.key.empty(), path, ": key '", duplicate.key, "' appears twice (which one did you mean?)");
    return j;
}

void merge_config(json& base, const json& overrides, const std::string& source) {
    merge_at(base, overrides, "", source);
}

void apply_set(json& config, const std::string& assignment) {
    const size_t eq = assignment.find('=');
    check(eq != std::string::npos && eq > 0, "--set '", assignment, "': expected key=value, e.g. train.max_steps=200");
    const std::string key = assignment.substr(0, eq);
    const std::string text = assignment.substr(eq + 1);
    json value;
    try {
        value = json::parse(text);
    } catch (const json::parse_error&) {
        value = text;  // a bare word is a string
    }
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

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& sets) {
    json config = default_run_config();
    if (!path.empty()) {
        const json file = read_config_json(path, "run config");
        // An RL config (configs/cartpole.json, configs/grpo_addition.json) names its algorithm; say
        // which command runs it instead of listing its keys as unknown.
        if (file.is_object() && file.contains("algorithm")) {
            fail(path, ": this is an RL config ('algorithm': ", file.at("algorithm").dump(),
                 "); run it with `reftrain rl --config ", path, "`, not `reftrain train`");
        }
        merge_config(config, file, path);
    }
    for (const std::string& s : sets) apply_set(config, s);
    // A range error can come from the file or from a --set: name both when both were given.
    const std::string source = (path.empty() ? std::string("the default config") : path) +
                               (sets.empty() ? "" : " with its --set overrides");
    return parse_run_config(config, source);
}

RunConfig parse_run_config(const json& j, const std::string& source) {
    RunConfig r;
    r.resolved = j;
    r.run_dir = get<std::string>(j, "run_dir");
    check(!r.run_dir.empty(), source, ": 'run_dir' must not be empty");
    r.seed = get<uint64_t>(j, "seed");
    r.threads = get<int64_t>(j, "threads");
    r.model = j.at("model");
    r.log_every = get<int64_t>(j, "log_every");
    r.checkpoint_every = get<int64_t>(j, "checkpoint_every");
    r.resume = get<std::string>(j, "resume");
    r.invariants = j.at("invariants");
    r.bugs = j.at("bugs");
    for (const auto& [name, on] : r.bugs.items()) {
        check(on.is_boolean(), source, ": 'bugs.", name, "' must be true or false, got ", on.dump());
        const std::vector<std::string> known = bug_names();
        std::string id = name;
        std::replace(id.begin(), id.end(), '_', '-');
        if (std::find(known.begin(), known.end(), id) == known.end()) {
            const std::string closest = closest_name(id, known);
            fail(source, ": unknown bug switch 'bugs.", name, "'",
                 closest.empty() ? std::string() : concat(" (did you mean '", closest, "'?)"));
        }
    }

    const json& d = j.at("data");
    r.data.task = get<std::string>(d, "task");
    r.data.task_options = d.at("task_options");
    r.data.jsonl = get<std::string>(d, "jsonl");
    r.data.val_jsonl = get<std::string>(d, "val_jsonl");
    r.data.template_name = get<std::string>(d, "template");
    r.data.tokenizer = get<std::string>(d, "tokenizer");
    r.data.tokenizer_vocab_size = get<int64_t>(d, "tokenizer_vocab_size");
    r.data.tokenizer_cache = get<std::string>(d, "tokenizer_cache");
    r.data.system_prompt = get<std::string>(d, "system_prompt");
    r.data.train_examples = get<int64_t>(d, "train_examples");
    r.data.val_examples = get<int64_t>(d, "val_examples");
    r.data.test_examples = get<int64_t>(d, "test_examples");
    r.data.bos_aligned = get<bool>(d, "bos_aligned");

    const json& t = j.at("train");
    r.train.batch_size = get<int64_t>(t, "batch_size");
    r.train.seq_len = get<int64_t>(t, "seq_len");
    r.train.grad_accum = get<int64_t>(t, "grad_accum");
    r.train.max_steps = get<int64_t>(t, "max_steps");
    r.train.grad_clip = get<double>(t, "grad_clip");
    r.train.loss_normalization = get<std::string>(t, "loss_normalization");
    r.train.precision = get<std::string>(t, "precision");
    r.train.device = get<std::string>(t, "device");
    r.train.deterministic = get<bool>(t, "deterministic");
    const json& tr = j.at("tracer");
    r.tracer.enabled = get<bool>(tr, "enabled");
    r.tracer.frames = get<int64_t>(tr, "frames");
    r.tracer.policy = get<std::string>(tr, "policy");
    const json& ls = j.at("loss_scaler");
    r.loss_scaler.init_scale = get<double>(ls, "init_scale");
    r.loss_scaler.growth_factor = get<double>(ls, "growth_factor");
    r.loss_scaler.backoff_factor = get<double>(ls, "backoff_factor");
    r.loss_scaler.growth_interval = get<int64_t>(ls, "growth_interval");
    r.train.adamw.beta1 = get<double>(t, "beta1");
    r.train.adamw.beta2 = get<double>(t, "beta2");
    r.train.adamw.eps = get<double>(t, "eps");
    r.train.adamw.weight_decay = get<double>(t, "weight_decay");

    const json& s = j.at("schedule");
    r.schedule.kind = get<std::string>(s, "kind");
    r.schedule.lr = get<double>(s, "lr");
    r.schedule.warmup_steps = get<int64_t>(s, "warmup_steps");
    r.schedule.total_steps = get<int64_t>(s, "total_steps");
    r.schedule.final_lr_fraction = get<double>(s, "final_lr_fraction");
    r.schedule.decay_fraction = get<double>(s, "decay_fraction");
    r.schedule.decay_shape = get<std::string>(s, "decay_shape");
    if (r.schedule.total_steps == 0) r.schedule.total_steps = r.train.max_steps;
    r.train.adamw.lr = r.schedule.lr;

    const json& e = j.at("eval");
    r.eval.every = get<int64_t>(e, "every");
    r.eval.exact_match_examples = get<int64_t>(e, "exact_match_examples");
    r.eval.samples = get<int64_t>(e, "samples");
    r.eval.max_new_tokens = get<int64_t>(e, "max_new_tokens");
    r.eval.final_test = get<bool>(e, "final_test");

    // Ranges. Each message names the key and what is expected.
    auto positive = [&](int64_t v, const char* key) { check(v > 0, source, ": '", key, "' must be > 0, got ", v); };
    auto non_negative = [&](int64_t v, const char* key) {
        check(v >= 0, source, ": '", key, "' must be >= 0, got ", v);
    };
    positive(r.train.batch_size, "train.batch_size");
    positive(r.train.seq_len, "train.seq_len");
    positive(r.train.grad_accum, "train.grad_accum");
    positive(r.train.max_steps, "train.max_steps");
    positive(r.log_every, "log_every");
    non_negative(r.threads, "threads");
    non_negative(r.checkpoint_every, "checkpoint_every");
    non_negative(r.eval.every, "eval.every");
    non_negative(r.eval.exact_match_examples, "eval.exact_match_examples");
    non_negative(r.eval.samples, "eval.samples");
    positive(r.eval.max_new_tokens, "eval.max_new_tokens");
    positive(r.data.train_examples, "data.train_examples");
    non_negative(r.data.val_examples, "data.val_examples");
    non_negative(r.data.test_examples, "data.test_examples");
    check(r.train.loss_normalization == "tokens" || r.train.loss_normalization == "micro_batches", source,
          ": 'train.loss_normalization' must be \"tokens\" or \"micro_batches\", got \"", r.train.loss_normalization,
          "\"");
    check(r.train.precision == "fp32" || r.train.precision == "bf16" || r.train.precision == "fp16", source,
          ": 'train.precision' must be \"fp32\", \"bf16\" or \"fp16\", got \"", r.train.precision, "\"");
    check(r.train.device == "cpu" || r.train.device == "cuda", source, ": 'train.device' must be \"cpu\" or \"cuda\", got \"",
          r.train.device, "\"");
    check(r.tracer.policy == "stop" || r.tracer.policy == "skip", source,
          ": 'tracer.policy' must be \"stop\" or \"skip\", got \"", r.tracer.policy, "\"");
    positive(r.tracer.frames, "tracer.frames");
    check(r.data.task.empty() != r.data.jsonl.empty(), source,
          ": set exactly one of 'data.task' (a toy task) and 'data.jsonl' (your conversations); got task=\"",
          r.data.task, "\", jsonl=\"", r.data.jsonl, "\"");
    check(r.data.tokenizer_vocab_size >= 64, source, ": 'data.tokenizer_vocab_size' must be >= 64, got ",
          r.data.tokenizer_vocab_size);
    try {
        validate(r.schedule);
    } catch (const Error& err) {
        fail(source, ": ", err.what());
    }
    return r;
}

}  // namespace reftrain
