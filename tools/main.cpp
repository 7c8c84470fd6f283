// tools/main.cpp — the `reftrain` command line: subcommand wiring only; the work lives in the layers.
//
//   reftrain demo    build a small random model, run forward/backward and a few AdamW steps, print a summary
//   reftrain init    write randomly initialised weights (HF names) for a config.json
//   reftrain train / sample   (tools/cmd_train.cpp);  reftrain data encode / show   (tools/cmd_data.cpp)
//   reftrain dump / diff      one step's every named tensor, and two dumps compared (tools/cmd_debug.cpp)
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kernels/random.h"
#include "kernels/cpu/blas.h"
#include "model/dump.h"
#include "model/transformer.h"
#include "tools/commands.h"
#include "train/adamw.h"
#include "train/dist.h"

using namespace reftrain;

namespace {

DType parse_store_dtype(const std::string& s) {
    if (s == "f32" || s == "fp32" || s == "float32") return DType::F32;
    if (s == "bf16" || s == "bfloat16") return DType::BF16;
    if (s == "f16" || s == "fp16" || s == "float16") return DType::F16;
    fail("--store-dtype: '", s, "' is not a storage dtype (f32, bf16 or f16)");
}

double rms(const Tensor& t) {
    double sum = 0.0;
    dispatch_float(t.dtype, "rms", [&](auto tag) {
        const auto* p = t.ptr<decltype(tag)>();
        for (int64_t i = 0; i < t.numel(); ++i) sum += static_cast<double>(p[i]) * p[i];
    });
    return std::sqrt(sum / std::max<int64_t>(1, t.numel()));
}

int run_demo(const std::string& config_path, int64_t B, int64_t T, uint64_t seed, int steps) {
    ModelConfig config = config_path.empty() ? ModelConfig{} : ModelConfig::load(config_path);
    if (T > config.max_position_embeddings) T = config.max_position_embeddings;
    std::printf("reftrain demo: a random Qwen3-style model, one batch, forward + backward + %d AdamW steps\n", steps);
    std::printf("config: %s\n", config.to_json().dump().c_str());
    Transformer model(config, B, T);
    model.init_weights(seed);
    std::printf("parameters: %lld in %zu tensors; activations: %.1f MiB; batch B=%lld T=%lld; threads=%d\n",
                static_cast<long long>(model.num_parameters()), model.params().size(),
                model.acts().nbytes() / 1048576.0, static_cast<long long>(B), static_cast<long long>(T),
                omp_get_max_threads());
    std::printf("blas: %s\n", cpu::blas_summary().c_str());
    Batch batch = random_batch(B, T, config.vocab_size, seed + 1);

    auto start = std::chrono::steady_clock::now();
    model.zero_grad();
    ForwardResult first = model.forward(batch.input_ids_tensor(), batch.targets_tensor());
    model.backward();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("initial loss %.4f (ln V = %.4f: a fresh model should predict uniformly), %lld supervised tokens\n",
                first.loss, std::log(static_cast<double>(config.vocab_size)),
                static_cast<long long>(first.supervised_tokens));
    std::printf("forward+backward: %.1f ms (%.0f tokens/s)\n", ms, B * T / (ms / 1000.0));
    std::printf("%-52s %12s %12s\n", "parameter", "rms", "grad rms");
    for (size_t i = 0; i < model.params().size(); ++i) {
        const Tensor& p = model.params().at(i);
        if (p.name.find("layers.") != std::string::npos && p.name.find("layers.0.") == std::string::npos) continue;
        std::printf("%-52s %12.4e %12.4e\n", p.name.c_str(), rms(p), rms(model.grads().at(i)));
    }
    std::printf("(layers 1..%lld omitted)\n", static_cast<long long>(config.num_hidden_layers - 1));

    AdamW optimizer(model.params(), model.grads(), AdamWConfig{.lr = 3e-3});
    optimizer.step();
    for (int s = 1; s < steps; ++s) {
        model.zero_grad();
        ForwardResult r = model.forward(batch.input_ids_tensor(), batch.targets_tensor());
        model.backward();
        optimizer.step();
        if (s % 5 == 0 || s == steps - 1) std::printf("step %3d  loss %.4f\n", s, r.loss);
    }
    ForwardResult last = model.forward(batch.input_ids_tensor(), batch.targets_tensor());
    std::printf("loss after %d steps on the same batch: %.4f (from %.4f)\n", steps, last.loss, first.loss);
    return 0;
}

}  // namespace

// One line on stderr for an error that ends the program. In a data-parallel run (mpirun) it names the rank
// and ends every rank at once: the others would otherwise wait for this one in the next collective.
int report_error(const char* kind, const char* what, int code) {
    Comm* comm = nullptr;
    std::string prefix;
    try {
        comm = &world();
        prefix = rank_prefix(*comm);
    } catch (const std::exception&) {
    }
    std::fprintf(stderr, "reftrain: %s%s%s\n", kind, prefix.c_str(), what);
    std::fflush(stderr);
    if (comm != nullptr && comm->size() > 1) comm->abort_all(code);
    return code;
}

int main(int argc, char** argv) {
    CLI::App app{"reftrain — a reference training framework with debugging in every layer"};
    app.require_subcommand(1);

    std::string config_path, out_path, store_dtype = "f32";
    int64_t batch_size = 4, seq_len = 64;
    uint64_t seed = 1234;
    int steps = 20;

    CLI::App* demo = app.add_subcommand("demo", "Random model, one batch: forward, backward, a few AdamW steps");
    demo->add_option("--config", config_path, "HF-style config.json (default: the tiny built-in config)");
    demo->add_option("--batch-size", batch_size, "B")->check(CLI::PositiveNumber);
    demo->add_option("--seq-len", seq_len, "T")->check(CLI::PositiveNumber);
    demo->add_option("--seed", seed, "Seed for init and data");
    demo->add_option("--steps", steps, "AdamW steps on the batch")->check(CLI::PositiveNumber);

    CLI::App* init = app.add_subcommand("init", "Write randomly initialised weights for a config");
    init->add_option("--config", config_path, "HF-style config.json")->required();
    init->add_option("--seed", seed, "Init seed");
    init->add_option("--out", out_path, "Output .safetensors")->required();
    init->add_option("--store-dtype", store_dtype, "Dtype in the file: f32, bf16 or f16 (rounded to nearest even)");

    // Subcommand groups that live in their own files run from CLI11 callbacks during parse(), so
    // parsing sits inside the same try as the commands above: every reftrain::Error becomes one line.
    register_data_commands(app);
    register_train_commands(app);
    register_diagnose_commands(app);
    register_debug_commands(app);
    register_diff_runs_command(app);
    register_report_command(app);
    register_failure_commands(app);
    register_rl_commands(app);
    register_env_commands(app);

    try {
        // Under mpirun only training is data parallel; any other command would run N times over the same files.
        if (launched_by_mpi() && world().size() > 1 && argc > 1) {
            const std::string command = argv[1];
            check(command == "train" || command == "failure", "`reftrain ", command, "` is not data parallel: under mpirun "
                  "with ", world().size(), " ranks every rank would run it on the same files. Run it without mpirun "
                  "(only `train` and `failure run` take ranks; docs/distributed.md)");
        }
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (demo->parsed()) return run_demo(config_path, batch_size, seq_len, seed, steps);
        if (init->parsed()) {
            ModelConfig config = ModelConfig::load(config_path);
            Transformer model(config, 1, 1);
            model.init_weights(seed);
            model.save_weights(out_path, parse_store_dtype(store_dtype));
            std::printf("wrote %lld parameters in %zu tensors to %s\n", static_cast<long long>(model.num_parameters()),
                        model.params().size(), out_path.c_str());
            return 0;
        }
    } catch (const Error& e) {
        return report_error("error: ", e.what(), 1);
    } catch (const std::exception& e) {
        // Not one of our checked errors: still one line and a non-zero exit, never an abort.
        return report_error("unexpected error: ", e.what(), 2);
    }
    return 0;
}
