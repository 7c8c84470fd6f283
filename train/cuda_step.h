// train/cuda_step.h — one optimizer step on the GPU: the twin of the step in train/trainer.cpp.
//
//   zero_grad; for each micro-batch: forward + backward(weight); [fp16: unscale + finite check];
//   clip the global norm (fp64, deterministic); AdamW on the fp32 master weights with the device
//   moments; [tracer: the parameters after the update].
// Everything is enqueued on the model's stream; the host reads back per step only the loss (forward),
// the pre-clip gradient norm and, with fp16, the loss scaler's found-inf flag.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/transformer_cuda.h"
#include "train/adamw.h"
#include "train/loss_scaler.h"

namespace reftrain {

// AdamW with fp32 moments in device memory; the same update as AdamW (cuda::adamw_step per tensor,
// weight decay on 2-D parameters only, AdamW::decays).
class CudaAdamW {
public:
    CudaAdamW(CudaTransformer& model, const AdamWConfig& config);
    ~CudaAdamW();
    void step(double lr);
    int64_t step_count() const { return step_count_; }
    void set_step_count(int64_t steps) { step_count_ = steps; }
    // Moments to / from a CPU AdamW over a Transformer of the same config (checkpoints).
    void store_to(AdamW& cpu) const;
    void load_from(AdamW& cpu);  // not const: AdamW exposes its moments non-const only

private:
    CudaTransformer& model_;
    AdamWConfig config_;
    DeviceArena moments_{"adam moments"};  // "exp_avg:<name>", "exp_avg_sq:<name>" in parameter order
    int64_t step_count_ = 0;
};

struct CudaMicroBatch {
    Tensor input_ids;  // host I64 (B, T)
    Tensor targets;    // host I64 (B, T)
    double weight = 1.0;  // loss weight (train/trainer.cpp: n_i / sum n_j)
};

struct CudaStepResult {
    double loss = 0.0;        // sum_i weight_i * loss_i (the step's mean loss when weights sum to 1)
    double grad_norm = 0.0;   // before clipping (of the unscaled gradients with fp16)
    double loss_scale = 1.0;  // the scale used in this step (1 without a scaler)
    bool skipped = false;     // no update: non-finite gradients (fp16) or a tracer trip
    bool scaler_skipped = false;  // the loss scaler skipped it (fp16 overflow: expected, not an error)
    int64_t supervised_tokens = 0;
};

// One optimizer step. `scaler` may be null (F32/BF16); with it the loss is scaled, the gradients
// unscaled and checked on the device, and the step skipped on inf/NaN (LossScaler::update decides the
// next scale). `max_norm` <= 0 disables clipping. With a tracer on the model, the step's frame is
// begun (step_index) and ended here, and the updated parameters are recorded as "adamw.update".
// `after_backward`, when set, runs once after the last backward and before the unscale, the clip and the
// update: the data-parallel all-reduce of the gradients (NCCL, train/dist_nccl.h), so that every decision
// after it is taken on the summed gradient, the same on every rank. It may change r.loss (the ranks' sum).
CudaStepResult cuda_train_step(CudaTransformer& model, CudaAdamW& optimizer, std::vector<CudaMicroBatch>& micro,
                               double lr, double max_norm, LossScaler* scaler, int64_t step_index,
                               const std::function<void(CudaStepResult&)>& after_backward = {});

}  // namespace reftrain
