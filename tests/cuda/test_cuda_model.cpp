// tests/cuda/test_cuda_model.cpp — the whole model and training step on the GPU against the CPU reference.
//
// Bounds (normwise relative error, max|gpu - cpu| / max|cpu| over a tensor):
//   F32    loss 2e-5; activations, parameter gradients and updated weights 1e-4. Both sides compute in
//          fp32 but sum in different orders (cuBLASLt vs OpenBLAS tiles, fp32 vs fp64 norm sums), which
//          moves results by a few ulps per op; 1e-4 leaves ~100x margin over what such reordering gives
//          through 2 layers, and is far below what any wrong index or missing term produces (O(1)).
//   BF16   against the CPU's bf16 emulation (the same rounding points): loss 1e-2, gradients 5e-2. One
//          bf16 rounding is 2^-9 relative; where the two sides' fp32 results differ by an ulp, a rounding
//          can flip to the neighbouring bf16 value (0.4%), and such flips compound through the layers.
// Determinism: with cuda::deterministic() on, two models stepping from the same weights on the same
// batches end bitwise equal (F32 and BF16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cuda/device.h"
#include "kernels/random.h"
#include "model/transformer.h"
#include "model/transformer_cuda.h"
#include "train/adamw.h"
#include "train/cuda_step.h"
#include "train/grad_clip.h"
#include "train/trainer.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

ModelConfig small_config() {
    ModelConfig c;
    c.vocab_size = 96;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 32;
    c.initializer_range = 0.1;  // larger than the default so the layers do real work
    return c;
}

constexpr int64_t kB = 2, kT = 12;

struct Batch {
    std::vector<int64_t> ids = std::vector<int64_t>(kB * kT), targets = std::vector<int64_t>(kB * kT);
    explicit Batch(uint64_t seed, int64_t V) {
        Rng rng(seed);
        for (auto& x : ids) x = static_cast<int64_t>(rng.below(static_cast<uint64_t>(V)));
        for (size_t i = 0; i < targets.size(); ++i) {
            // every fourth position is not supervised, as a chat mask would leave it
            targets[i] = i % 4 == 1 ? cpu::kIgnoreIndex : static_cast<int64_t>(rng.below(static_cast<uint64_t>(V)));
        }
    }
    Tensor ids_t() { return Tensor(ids.data(), DType::I64, {kB, kT}, "input_ids"); }
    Tensor targets_t() { return Tensor(targets.data(), DType::I64, {kB, kT}, "targets"); }
};

double normwise_error(const std::vector<float>& gpu, const Tensor& cpu) {
    const float* c = cpu.ptr<float>();
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < gpu.size(); ++i) {
        diff = std::max(diff, std::abs(static_cast<double>(gpu[i]) - c[i]));
        scale = std::max(scale, std::abs(static_cast<double>(c[i])));
        if (std::isnan(gpu[i])) return INFINITY;
    }
    return scale > 0 ? diff / scale : diff;
}

// Every tensor of a GPU arena against the CPU arena's tensor of the same name (parameters, gradients).
// Prints the worst tensor (cuda_test_util.h's "[measured]" line).
void expect_arena_close(const DeviceArena& gpu, const Arena& cpu, cudaStream_t stream, double bound, const char* what) {
    double worst = 0.0;
    std::string worst_name;
    for (const Tensor& t : gpu.tensors()) {
        const double error = normwise_error(download_f32(t, stream), cpu.get(t.name));
        EXPECT_LE(error, bound) << what << ": " << t.name;
        if (!(error <= worst)) worst = error, worst_name = t.name;
    }
    cuda_testing::report_measured(std::string(what) + " (" + gpu.label() + ", normwise, worst " + worst_name + ")", worst, bound);
}

TEST(CudaModel, F32ForwardBackwardMatchesCpu) {
    REFTRAIN_REQUIRE_GPU();
    const ModelConfig c = small_config();
    Transformer cpu(c, kB, kT);
    cpu.init_weights(7);
    CudaTransformer gpu(c, kB, kT);
    gpu.load_from(cpu);
    Batch batch(3, c.vocab_size);
    const ForwardResult rc = cpu.forward(batch.ids_t(), batch.targets_t());
    const ForwardResult rg = gpu.forward(batch.ids_t(), batch.targets_t());
    EXPECT_EQ(rg.supervised_tokens, rc.supervised_tokens);
    EXPECT_NEAR(rg.loss, rc.loss, 2e-5 * rc.loss);
    int compared = 0;
    double worst = 0.0;
    for (const Tensor& t : gpu.acts().tensors()) {
        if (!cpu.acts().contains(t.name)) continue;  // attn_lse (the CPU keeps attn_probs instead)
        const double error = normwise_error(download_f32(t, gpu.stream()), cpu.acts().get(t.name));
        EXPECT_LE(error, 1e-4) << t.name;
        worst = std::max(worst, error);
        ++compared;
    }
    cuda_testing::report_measured("F32 forward activations (normwise)", worst, 1e-4);
    cuda_testing::report_measured("F32 loss", std::abs(rg.loss - rc.loss) / rc.loss, 2e-5);
    EXPECT_GT(compared, 30);
    cpu.zero_grad();
    gpu.zero_grad();
    cpu.backward(0.75);
    gpu.backward(0.75);
    expect_arena_close(gpu.grads(), cpu.grads(), gpu.stream(), 1e-4, "F32 backward");
    expect_arena_close(gpu.act_grads(), cpu.act_grads(), gpu.stream(), 1e-4, "F32 backward");
}

TEST(CudaModel, F32TrainStepsMatchCpu) {
    REFTRAIN_REQUIRE_GPU();
    const ModelConfig c = small_config();
    Transformer cpu(c, kB, kT);
    cpu.init_weights(11);
    CudaTransformer gpu(c, kB, kT);
    gpu.load_from(cpu);
    const AdamWConfig adam{.lr = 1e-2, .weight_decay = 0.1};
    AdamW cpu_opt(cpu.params(), cpu.grads(), adam);
    CudaAdamW gpu_opt(gpu, adam);
    const double max_norm = 0.5;  // small enough that clipping happens
    for (int step = 0; step < 3; ++step) {
        Batch batch(100 + step, c.vocab_size);
        cpu.zero_grad();
        const double cpu_loss = cpu.forward(batch.ids_t(), batch.targets_t()).loss;
        cpu.backward();
        const double cpu_norm = clip_grad_norm(cpu.grads(), max_norm);
        cpu_opt.step(1e-2);
        std::vector<CudaMicroBatch> micro{{batch.ids_t(), batch.targets_t(), 1.0}};
        const CudaStepResult r = cuda_train_step(gpu, gpu_opt, micro, 1e-2, max_norm, nullptr, step);
        EXPECT_NEAR(r.loss, cpu_loss, 2e-5 * cpu_loss) << "step " << step;
        EXPECT_NEAR(r.grad_norm, cpu_norm, 1e-4 * cpu_norm) << "step " << step;
        cuda_testing::report_measured("F32 step " + std::to_string(step) + " loss", std::abs(r.loss - cpu_loss) / cpu_loss, 2e-5);
        cuda_testing::report_measured("F32 step " + std::to_string(step) + " grad norm",
                                      std::abs(r.grad_norm - cpu_norm) / cpu_norm, 1e-4);
        EXPECT_GT(cpu_norm, max_norm) << "the test wants clipping to be exercised";
        EXPECT_FALSE(r.skipped);
    }
    // AdamW divides each gradient element by its own running RMS, so an element whose CPU and GPU values
    // differ in relative terms (those near zero: the two sum in different orders) moves by a visibly
    // different fraction of lr. The first H200 run measured 1.04e-3 normwise (q_proj, layer 1) with the
    // loss at 1e-6 and the norm at 3e-6; the AdamW kernel itself is held to 2e-6 on identical gradients
    // (test_cuda_optim.cpp). 5e-3 leaves 5x; a missed update or a wrong lr is off by ~lr / |w| = 10%.
    expect_arena_close(gpu.params(), cpu.params(), gpu.stream(), 5e-3, "after 3 F32 steps");
}

TEST(CudaModel, Bf16MatchesCpuEmulation) {
    REFTRAIN_REQUIRE_GPU();
    const ModelConfig c = small_config();
    Transformer cpu(c, kB, kT);
    cpu.init_weights(5);
    cpu.set_precision(DType::BF16);
    CudaTransformer gpu(c, kB, kT, CudaModelOptions{DType::BF16});
    gpu.load_from(cpu);
    Batch batch(9, c.vocab_size);
    const double cpu_loss = cpu.forward(batch.ids_t(), batch.targets_t()).loss;
    const double gpu_loss = gpu.forward(batch.ids_t(), batch.targets_t()).loss;
    EXPECT_NEAR(gpu_loss, cpu_loss, 1e-2 * cpu_loss);
    cuda_testing::report_measured("BF16 loss against the CPU emulation", std::abs(gpu_loss - cpu_loss) / cpu_loss, 1e-2);
    cpu.zero_grad();
    gpu.zero_grad();
    cpu.backward();
    gpu.backward();
    expect_arena_close(gpu.grads(), cpu.grads(), gpu.stream(), 5e-2, "BF16 backward");
}

// Runs `steps` F32 or BF16 steps from seed-7 weights and returns the parameters' bytes and the losses.
std::pair<std::vector<float>, std::vector<double>> run_steps(DType precision, int steps) {
    const ModelConfig c = small_config();
    CudaTransformer gpu(c, kB, kT, CudaModelOptions{precision});
    gpu.init_weights(7);
    CudaAdamW opt(gpu, AdamWConfig{.lr = 1e-2});
    std::vector<double> losses;
    for (int step = 0; step < steps; ++step) {
        Batch batch(200 + step, c.vocab_size);
        std::vector<CudaMicroBatch> micro{{batch.ids_t(), batch.targets_t(), 1.0}};
        losses.push_back(cuda_train_step(gpu, opt, micro, 1e-2, 1.0, nullptr, step).loss);
    }
    std::vector<float> all;
    for (const Tensor& t : gpu.params().tensors()) {
        const std::vector<float> p = download_f32(t, gpu.stream());
        all.insert(all.end(), p.begin(), p.end());
    }
    return {all, losses};
}

TEST(CudaModel, DeterministicModeRepeatsBitwise) {
    REFTRAIN_REQUIRE_GPU();
    cuda::set_deterministic(true);
    for (DType precision : {DType::F32, DType::BF16}) {
        const auto [p1, l1] = run_steps(precision, 3);
        const auto [p2, l2] = run_steps(precision, 3);
        ASSERT_EQ(p1.size(), p2.size());
        EXPECT_EQ(std::memcmp(p1.data(), p2.data(), p1.size() * sizeof(float)), 0) << dtype_name(precision);
        EXPECT_EQ(l1, l2) << dtype_name(precision);
        EXPECT_NE(l1.front(), l1.back()) << "the steps must change the model";
    }
}

// ---- the tracer on the GPU -----------------------------------------------------------------------------------

RunConfig tracer_scenario(const std::string& run_dir, const std::string& device, const std::string& precision) {
    return load_run_config("", {"run_dir=" + run_dir, "threads=1", "model.hidden_size=48", "model.intermediate_size=96",
                                "model.num_hidden_layers=2", "model.num_attention_heads=4", "model.num_key_value_heads=2",
                                "model.head_dim=16", "model.max_position_embeddings=64", "data.tokenizer=byte",
                                "data.task_options={\"min_digits\": 1, \"max_digits\": 2}", "data.train_examples=500",
                                "data.val_examples=0", "data.test_examples=0", "train.batch_size=8", "train.seq_len=48",
                                "train.max_steps=4", "schedule.lr=0.003", "eval.every=0", "eval.exact_match_examples=0",
                                "eval.final_test=false", "invariants={\"default\": \"warn\"}",
                                // fp16-overflow's setting (probes/failures.cpp): huge weights, no loss scaling
                                "model.initializer_range=30.0", "tracer.policy=\"skip\"", "loss_scaler.init_scale=1.0",
                                "train.device=\"" + device + "\"", "train.precision=\"" + precision + "\""});
}

std::string temp_dir(const std::string& name) {
    return testing::scratch_dir("cuda_" + name).string();
}

TEST(CudaTracer, NamesTheSameFirstNonFiniteTensorAsTheCpu) {
    REFTRAIN_REQUIRE_GPU();
    std::ostringstream log_cpu, log_gpu;
    Trainer cpu(tracer_scenario(temp_dir("trace_cpu"), "cpu", "fp16"), log_cpu);
    Trainer gpu(tracer_scenario(temp_dir("trace_gpu"), "cuda", "fp16"), log_gpu);
    cpu.train_step();
    gpu.train_step();
    ASSERT_TRUE(cpu.tracer()->incident().has_value()) << "the CPU run must overflow in fp16";
    ASSERT_TRUE(gpu.tracer()->incident().has_value()) << "the GPU tracer missed the overflow\n" << log_gpu.str();
    EXPECT_EQ(gpu.tracer()->incident()->tensor, cpu.tracer()->incident()->tensor);
    EXPECT_EQ(gpu.tracer()->incident()->op, cpu.tracer()->incident()->op);
    EXPECT_FALSE(gpu.tracer()->incident()->dump_path.empty());
    EXPECT_TRUE(std::filesystem::exists(gpu.tracer()->incident()->dump_path));
}

TEST(CudaTracer, StaysSilentInBf16) {
    REFTRAIN_REQUIRE_GPU();
    std::ostringstream log;
    Trainer gpu(tracer_scenario(temp_dir("trace_bf16"), "cuda", "bf16"), log);
    for (int i = 0; i < 4; ++i) gpu.train_step();
    EXPECT_EQ(gpu.tracer()->trips(), 0) << log.str();
    // and it did record: one frame per step with every tensor of the forward and backward
    ASSERT_GT(gpu.tracer()->frame_count(), 0u);
    EXPECT_GT(gpu.tracer()->frame(gpu.tracer()->frame_count() - 1).entries.size(), 100u);
}

TEST(CudaTracer, FrameHasTheCpuTensorsInTheCpuOrder) {
    REFTRAIN_REQUIRE_GPU();
    std::ostringstream log_cpu, log_gpu;
    Trainer cpu(tracer_scenario(temp_dir("order_cpu"), "cpu", "bf16"), log_cpu);
    Trainer gpu(tracer_scenario(temp_dir("order_gpu"), "cuda", "bf16"), log_gpu);
    cpu.train_step();
    gpu.train_step();
    const auto& fc = cpu.tracer()->frame(cpu.tracer()->frame_count() - 1).entries;
    const auto& fg = gpu.tracer()->frame(gpu.tracer()->frame_count() - 1).entries;
    // The GPU has no attn_logits_max and names attn_lse for attn_probs; everything else lines up.
    std::vector<std::string> names_cpu, names_gpu;
    for (const auto& e : fc) {
        const std::string& n = cpu.tracer()->name(e.name);
        if (n.find("attn_logits_max") == std::string::npos && n != "loss") names_cpu.push_back(n);
    }
    for (const auto& e : fg) names_gpu.push_back(gpu.tracer()->name(e.name));
    ASSERT_EQ(names_gpu.size(), names_cpu.size());
    for (size_t i = 0; i < names_cpu.size(); ++i) {
        std::string expected = names_cpu[i];
        if (const auto at = expected.find("attn_probs"); at != std::string::npos) expected.replace(at, 10, "attn_lse");
        EXPECT_EQ(names_gpu[i], expected) << "entry " << i;
    }
}

// ---- the trainer on the GPU --------------------------------------------------------------------------------

TEST(CudaTrainer, DeviceCudaWithoutAGpuIsAClearError) {
    if (cuda_testing::gpu_available()) GTEST_SKIP() << "this machine has a GPU: the error path needs none";
    std::ostringstream log;
    try {
        Trainer t(tracer_scenario(temp_dir("nogpu"), "cuda", "fp32"), log);
        FAIL() << "expected an error";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
    }
}

TEST(CudaTrainer, RejectsAnUnknownDevice) {
    try {
        load_run_config("", {"train.device=\"tpu\""});
        FAIL() << "expected an error";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("'train.device' must be one of \"cpu\", \"cuda\", got \"tpu\""), std::string::npos) << e.what();
    }
}

// The acceptance run: configs/addition.json in bf16 on the GPU and on the CPU (emulated), same seed,
// same data; the held-out exact match must agree within 3 points and both must learn the task.
double addition_accuracy(const std::string& device) {
    const std::string root = REFTRAIN_SOURCE_DIR;
    RunConfig config = load_run_config(root + "/configs/addition.json",
                                       {"run_dir=" + temp_dir("addition_" + device), "train.precision=\"bf16\"",
                                        "train.device=\"" + device + "\"", "eval.every=0", "eval.samples=0",
                                        "data.tokenizer_cache=\"" + temp_dir("addition_tok_" + device) + "\""});
    std::ostringstream log;
    Trainer trainer(config, log);
    for (int64_t i = 0; i < config.train.max_steps; ++i) trainer.train_step();
    trainer.sync_from_gpu();
    std::ostringstream quiet;
    return exact_match(trainer.model(), *trainer.data().chat, *trainer.data().task, trainer.data().test_examples,
                       config.data.system_prompt, config.eval.max_new_tokens, 0, quiet);
}

TEST(CudaTrainer, Bf16AdditionReachesTheCpuAccuracy) {
    REFTRAIN_REQUIRE_GPU();
    const double gpu = addition_accuracy("cuda");
    const double cpu = addition_accuracy("cpu");
    std::printf("bf16 addition, test exact match: GPU %.1f%%, CPU %.1f%%\n", 100 * gpu, 100 * cpu);
    EXPECT_GE(cpu, 0.9);
    EXPECT_GE(gpu, 0.9);
    EXPECT_NEAR(gpu, cpu, 0.03);
}

}  // namespace
}  // namespace reftrain
