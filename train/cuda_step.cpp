// train/cuda_step.cpp — AdamW with device moments and one optimizer step on the GPU (cuda_step.h).
#include "train/cuda_step.h"

#include <cuda_runtime.h>

#include <cmath>
#include <limits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/optim.h"

namespace reftrain {

CudaAdamW::CudaAdamW(CudaTransformer& model, const AdamWConfig& config) : model_(model), config_(config) {
    for (const Tensor& p : model_.params().tensors()) {
        const std::vector<int64_t> shape(p.shape.begin(), p.shape.begin() + p.ndim);
        moments_.add("adam.m:" + p.name, DType::F32, shape);
        moments_.add("adam.v:" + p.name, DType::F32, shape);
    }
    moments_.allocate();
}

CudaAdamW::~CudaAdamW() = default;

void CudaAdamW::step(double lr) {
    ++step_count_;
    cuda::AdamWStepConfig c{lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay, step_count_};
    const auto& params = model_.params().tensors();
    const auto& grads = model_.grads().tensors();
    for (size_t i = 0; i < params.size(); ++i) {
        cuda::adamw_step(params[i], grads[i], moments_.tensors()[2 * i], moments_.tensors()[2 * i + 1], c,
                         AdamW::decays(params[i]), model_.stream());
    }
}

void CudaAdamW::store_to(AdamW& cpu) const {
    check(cpu.moments().size() == moments_.size(), "CudaAdamW::store_to: the CPU optimizer has ",
          cpu.moments().size(), " moment tensors, this one ", moments_.size());
    for (const Tensor& t : moments_.tensors()) {
        Tensor& h = cpu.moments().get(t.name);
        check(h.nbytes() == t.nbytes() && h.dtype == DType::F32, "CudaAdamW::store_to: '", t.name, "' differs");
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(h.data, t.data, t.nbytes(), cudaMemcpyDeviceToHost, model_.stream()));
    }
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(model_.stream()));
    cpu.set_step_count(step_count_);
}

void CudaAdamW::load_from(AdamW& cpu) {
    check(cpu.moments().size() == moments_.size(), "CudaAdamW::load_from: the CPU optimizer has ",
          cpu.moments().size(), " moment tensors, this one ", moments_.size());
    for (const Tensor& t : moments_.tensors()) {
        const Tensor& h = cpu.moments().get(t.name);
        check(h.nbytes() == t.nbytes() && h.dtype == DType::F32, "CudaAdamW::load_from: '", t.name, "' differs");
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(t.data, h.data, t.nbytes(), cudaMemcpyHostToDevice, model_.stream()));
    }
    REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(model_.stream()));
    step_count_ = cpu.step_count();
}

namespace {

// Device scalars the step reads back: the gradient norm (fp64) and the fp16 found-inf flag.
struct StepScalars {
    double* norm = nullptr;
    int32_t* found_nonfinite = nullptr;
    StepScalars() {
        REFTRAIN_CUDA_CHECK(cudaMalloc(&norm, sizeof(double)));
        REFTRAIN_CUDA_CHECK(cudaMalloc(&found_nonfinite, sizeof(int32_t)));
    }
    ~StepScalars() {
        cudaFree(norm);
        cudaFree(found_nonfinite);
    }
};

}  // namespace

CudaStepResult cuda_train_step(CudaTransformer& model, CudaAdamW& optimizer, std::vector<CudaMicroBatch>& micro,
                               double lr, double max_norm, LossScaler* scaler, int64_t step_index,
                               const std::function<void(CudaStepResult&)>& after_backward) {
    static thread_local StepScalars scalars;  // two device words, allocated once per thread
    cudaStream_t s = model.stream();
    FrameTracer* tracer = model.tracer();
    CudaStepResult r;
    if (tracer != nullptr) tracer->begin_step(step_index);
    const bool scaling = scaler != nullptr && scaler->enabled();
    const double scale = scaling ? scaler->scale() : 1.0;
    r.loss_scale = scale;
    model.zero_grad();
    for (CudaMicroBatch& mb : micro) {
        const ForwardResult f = model.forward(mb.input_ids, mb.targets);
        if (f.supervised_tokens > 0) model.backward(mb.weight * scale);
        r.loss += mb.weight * f.loss;
        r.supervised_tokens += f.supervised_tokens;
    }
    if (after_backward) after_backward(r);
    std::vector<Tensor> grads = model.grads().tensors();
    bool nonfinite = false;
    if (scaling) {
        cuda::unscale_and_check(grads, scale, scalars.found_nonfinite, s);
        int32_t flag = 0;
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(&flag, scalars.found_nonfinite, sizeof flag, cudaMemcpyDeviceToHost, s));
        REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(s));
        nonfinite = flag != 0;
        r.scaler_skipped = scaler->update(nonfinite);
        r.skipped = r.skipped || r.scaler_skipped;   // after_backward may have skipped it (another rank's trip)
    }
    if (tracer != nullptr && tracer->tripped()) r.skipped = true;  // the caller applies the tracer's policy
    if (r.skipped) {
        r.grad_norm = std::numeric_limits<double>::quiet_NaN();
    } else {
        cuda::clip_grad_norm(grads, max_norm, scalars.norm, s);
        REFTRAIN_CUDA_CHECK(cudaMemcpyAsync(&r.grad_norm, scalars.norm, sizeof(double), cudaMemcpyDeviceToHost, s));
        REFTRAIN_CUDA_CHECK(cudaStreamSynchronize(s));
        check(std::isfinite(r.grad_norm), "step ", step_index + 1, ": the gradient norm is ", r.grad_norm,
              " (not finite) with loss ", r.loss, "; the update was not applied. Lower schedule.lr or check the data");
        optimizer.step(lr);
        if (tracer != nullptr) model.trace_tensors("adamw.update", model.params().tensors());
    }
    if (tracer != nullptr) tracer->end_step();
    return r;
}

}  // namespace reftrain
