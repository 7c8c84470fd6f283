// tools/cmd_debug.cpp — `reftrain dump` and `reftrain diff`: one step's every named tensor, and the
// comparison of two such dumps that names the first tensor that disagrees.
//
//   reftrain dump --config C --weights W --batch B --out D [--dtype f64] [--map M.json]
//                 [--rope-angles hf|exact] [--optimizer adamw --lr .. --weight-decay .. --max-grad-norm ..]
//       one forward + backward (and with --optimizer one AdamW step: clipped gradients, moments and
//       updated parameters after the gradients) on the batch; W may be in the user's own layout, read
//       through the map M (debug/name_map.h).
//   reftrain diff A B [--map M.json] [--rtol X] [--atol Y] [--all] [--strict] [--partial] [--jump F]
//       walks the tensors in execution order (A's "reftrain.order" metadata, else B's), prints per
//       tensor max abs and max relative error (debug/diff.h defines both), and names the first tensor
//       over tolerance or suspicious, with where its error lives and the likely cause. Exit status: 0
//       same; 1 a tensor differs (over tolerance, another shape, or suspicious; with --strict also a
//       name in one file only); 2 could not compare (a file missing or not a valid safetensors file,
//       a bad map, no shared names); 3 insufficient coverage (nothing differs, but a parameter or
//       gradient has no counterpart or no activation was compared; --partial accepts it); CLI11's own
//       codes (>= 100) for a malformed command line.
//
// The callbacks report "differ" and "could not compare" themselves, through CLI::RuntimeError(code),
// which main()'s app.exit() turns into that exit status without printing anything more.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "debug/diff.h"
#include "debug/name_map.h"
#include "kernels/safetensors.h"
#include "model/dump.h"
#include "model/transformer.h"
#include "train/adamw.h"
#include "train/grad_clip.h"
#include "train/run_config.h"
#include "train/schedule.h"
#include "kernels/error.h"
#include "tools/commands.h"

namespace reftrain {

namespace {

struct DiffArgs {
    std::string path_a, path_b, map_path;
    double rtol = -1, atol = -1;  // < 0: the per-dtype default
    double jump = 10.0;
    bool all = false, strict = false, partial = false;
};

void run_diff(const DiffArgs& args) {
    DiffOptions options;
    if (args.rtol >= 0) options.rtol = args.rtol;
    if (args.atol >= 0) options.atol = args.atol;
    options.strict = args.strict;
    options.partial = args.partial;
    options.jump = args.jump;
    options.map_path = args.map_path;
    DiffReport report;
    try {
        report = diff_dump_files(args.path_a, args.path_b, options);
    } catch (const Error& e) {
        std::fprintf(stderr, "reftrain diff: could not compare: %s\n", e.what());
        throw CLI::RuntimeError(2);
    }
    finish_comparison(format_diff_report(report, args.all), report.exit_status());
}

struct DumpArgs {
    std::string config, weights, batch, out, dtype = "f32", map, rope_angles = "hf", optimizer, run_config;
    double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0, max_grad_norm = 0.0;
};

DType parse_compute_dtype(const std::string& s) {
    if (s == "f32" || s == "fp32" || s == "float32") return DType::F32;
    if (s == "f64" || s == "fp64" || s == "float64") return DType::F64;
    fail("--dtype: '", s, "' is not a CPU compute dtype (f32 or f64)");
}

// The weights in the user's layout, read through the map into reftrain's names.
void load_mapped_weights(Transformer& model, const std::string& weights, const std::string& map_path) {
    const NameMap map = NameMap::load(map_path);
    const SafetensorsFile file = SafetensorsFile::open(weights);
    const std::vector<NamedArray> ours =
        map.apply(read_dump(file).tensors, MapDims::from_config_json(model.config().to_json()), MapUse::Weights);
    model.load_weights(ours, weights + " (through the map " + map_path + ")");
}

// After backward: clip, one AdamW step, and the tensors a user's torch.optim step is compared with.
void optimizer_step_dump(Transformer& model, const AdamWConfig& adamw, double max_grad_norm, DumpContents& contents) {
    const double norm = clip_grad_norm(model.grads(), max_grad_norm);
    for (const Tensor& g : model.grads().tensors()) {
        contents.tensors.push_back(contents.keep_copy(g, "grad.clipped:" + g.name.substr(std::string("grad:").size())));
    }
    AdamW optimizer(model.params(), model.grads(), adamw);
    optimizer.step();
    for (const char* which : {"adam.m:", "adam.v:"}) {
        for (const Tensor& p : model.params().tensors()) {
            const Tensor& moment = optimizer.moments().get(which + p.name);  // copied: the optimizer goes away
            contents.tensors.push_back(contents.keep_copy(moment, moment.name));
        }
    }
    for (const Tensor& p : model.params().tensors()) contents.tensors.push_back(contents.keep_copy(p, "updated:" + p.name));
    contents.metadata["reftrain.optimizer"] =
        nlohmann::json{{"name", "adamw"}, {"lr", adamw.lr}, {"beta1", adamw.beta1}, {"beta2", adamw.beta2},
                       {"eps", adamw.eps}, {"weight_decay", adamw.weight_decay}, {"max_grad_norm", max_grad_norm},
                       {"grad_norm", norm}, {"decays", "2-D parameters only"}}
            .dump();
    std::printf("adamw step: lr %g, betas (%g, %g), eps %g, weight decay %g on 2-D tensors, grad norm %.9g%s\n",
                adamw.lr, adamw.beta1, adamw.beta2, adamw.eps, adamw.weight_decay, norm,
                max_grad_norm > 0 ? (norm > max_grad_norm ? " (clipped)" : " (below max_grad_norm)") : " (no clipping)");
}

void run_dump(DumpArgs args, CLI::App& cmd) {
    ModelConfig config = ModelConfig::load(args.config);
    check(args.rope_angles == "hf" || args.rope_angles == "exact", "--rope-angles: '", args.rope_angles,
          "' is not hf or exact");
    config.exact_rope_angles = args.rope_angles == "exact";
    Batch batch = load_batch(args.batch);
    validate_batch(batch, config.vocab_size, args.batch);
    const DType dtype = parse_compute_dtype(args.dtype);
    Transformer model(config, batch.batch_size, batch.seq_len, dtype);
    if (args.map.empty()) {
        model.load_weights(args.weights);
    } else {
        load_mapped_weights(model, args.weights, args.map);
    }
    std::function<void(DumpContents&)> extend;
    if (!args.optimizer.empty()) {
        check(args.optimizer == "adamw", "--optimizer: '", args.optimizer, "' is not supported (adamw)");
        AdamWConfig adamw{.lr = args.lr, .beta1 = args.beta1, .beta2 = args.beta2, .eps = args.eps,
                          .weight_decay = args.weight_decay};
        double max_norm = args.max_grad_norm;
        if (!args.run_config.empty()) {
            // The run config's optimizer and the schedule's lr at the first step; flags given win.
            const RunConfig run = load_run_config(args.run_config, {});
            auto given = [&](const char* flag) { return cmd.count(flag) > 0; };
            if (!given("--lr")) adamw.lr = lr_at(run.schedule, 0);
            if (!given("--beta1")) adamw.beta1 = run.train.adamw.beta1;
            if (!given("--beta2")) adamw.beta2 = run.train.adamw.beta2;
            if (!given("--eps")) adamw.eps = run.train.adamw.eps;
            if (!given("--weight-decay")) adamw.weight_decay = run.train.adamw.weight_decay;
            if (!given("--max-grad-norm")) max_norm = run.train.grad_clip;
        }
        extend = [&model, adamw, max_norm](DumpContents& contents) { optimizer_step_dump(model, adamw, max_norm, contents); };
    }
    ForwardResult r = dump_step(model, batch, args.out, dtype_name(dtype), extend);
    std::printf("loss %.9g over %lld supervised tokens%s; wrote %s\n", r.loss, static_cast<long long>(r.supervised_tokens),
                r.no_supervised_tokens ? " (NO supervised tokens: loss defined as 0)" : "", args.out.c_str());
}

}  // namespace

void register_debug_commands(CLI::App& app) {
    auto dargs = std::make_shared<DumpArgs>();
    CLI::App* dump = app.add_subcommand("dump", "One forward+backward (and optionally one AdamW step) on a batch; write "
                                                "every named tensor");
    dump->add_option("--config", dargs->config, "HF-style config.json")->required();
    dump->add_option("--weights", dargs->weights, "Weights .safetensors (HF names, or the map's)")->required();
    dump->add_option("--batch", dargs->batch, ".safetensors with input_ids and targets, (B, T) I64")->required();
    dump->add_option("--out", dargs->out, "Output .safetensors")->required();
    dump->add_option("--dtype", dargs->dtype, "Compute dtype: f32 or f64");
    dump->add_option("--map", dargs->map, "Read --weights through this tensor-name map (maps/*.json, docs/diffing.md)");
    dump->add_option("--rope-angles", dargs->rope_angles,
                     "hf: float32 angles as HF computes them (default); exact: fp64 angles, for an fp64 model that "
                     "computes them exactly");
    dump->add_option("--optimizer", dargs->optimizer, "Also run one step of this optimizer (adamw) and dump it");
    dump->add_option("--run-config", dargs->run_config,
                     "Take lr (the schedule's first step), betas, eps, weight decay and clipping from this run config");
    dump->add_option("--lr", dargs->lr, "AdamW learning rate (default 1e-3)");
    dump->add_option("--beta1", dargs->beta1, "AdamW beta1 (default 0.9)");
    dump->add_option("--beta2", dargs->beta2, "AdamW beta2 (default 0.999)");
    dump->add_option("--eps", dargs->eps, "AdamW eps, added to sqrt(v_hat) (default 1e-8)");
    dump->add_option("--weight-decay", dargs->weight_decay, "Decoupled weight decay on 2-D tensors (default 0)");
    dump->add_option("--max-grad-norm", dargs->max_grad_norm, "Clip the global gradient norm first; <= 0: no clipping");
    dump->callback([dargs, dump] { run_dump(*dargs, *dump); });

    auto args = std::make_shared<DiffArgs>();
    CLI::App* diff = app.add_subcommand(
        "diff", "Compare two dumps in execution order; name the first tensor over tolerance or suspicious, where its "
                "error lives and the likely cause (exit 0 same, 1 differ, 2 could not compare, 3 insufficient coverage)");
    diff->add_option("A", args->path_a, "First dump (.safetensors); its reftrain.order metadata sets the walk order")
        ->required();
    diff->add_option("B", args->path_b, "Second dump (.safetensors)")->required();
    diff->add_option("--map", args->map_path,
                     "Map B's names and layouts to reftrain's (default: the map B stores, from dump_hooks.py)");
    diff->add_option("--rtol", args->rtol,
                     "Relative tolerance for every tensor, against max(max|a|, max|b|) (default per dtype: f64 1e-9, "
                     "f32 1e-4, f16 4e-3, bf16 3e-2)")
        ->check(CLI::NonNegativeNumber);
    diff->add_option("--atol", args->atol,
                     "Absolute tolerance for every tensor (default per dtype: f64 1e-12, f32 1e-7, f16/bf16 1e-5)")
        ->check(CLI::NonNegativeNumber);
    diff->add_option("--jump", args->jump,
                     "A tensor within tolerance is suspicious when its max rel exceeds this many times the floor set "
                     "by the tensors before it (default 10; 0 turns it off)")
        ->check(CLI::NonNegativeNumber);
    diff->add_flag("--all", args->all, "List every tensor (default: stop listing after the first flagged one)");
    diff->add_flag("--strict", args->strict, "A tensor present in only one file counts as a difference (exit 1)");
    diff->add_flag("--partial", args->partial,
                   "Comparing a subset is intended: a parameter or gradient without a counterpart, or no activation "
                   "compared, is not an insufficient-coverage failure");
    diff->callback([args] { run_diff(*args); });
}

}  // namespace reftrain
