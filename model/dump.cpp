// model/dump.cpp — see dump.h.
#include "model/dump.h"

#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "debug/diff.h"
#include "kernels/random.h"
#include "kernels/safetensors.h"

namespace reftrain {

Batch load_batch(const std::string& path) {
    SafetensorsFile file = SafetensorsFile::open(path);
    for (const char* name : {"input_ids", "targets"}) {
        check(file.contains(name), path, ": batch file has no tensor '", name, "' (expected input_ids and targets, (B, T) I64)");
        check(file.entry(name).shape.size() == 2, path, ": tensor '", name, "' has shape ", file.entry(name).shape_str(),
              ", expected 2-D (B, T)");
    }
    const SafetensorsEntry& ids = file.entry("input_ids");
    check(file.entry("targets").shape == ids.shape, path, ": 'targets' has shape ", file.entry("targets").shape_str(),
          " but 'input_ids' has ", ids.shape_str());
    Batch batch;
    batch.batch_size = ids.shape[0];
    batch.seq_len = ids.shape[1];
    batch.input_ids.resize(batch.batch_size * batch.seq_len);
    batch.targets.resize(batch.input_ids.size());
    file.read_into("input_ids", batch.input_ids_tensor());
    file.read_into("targets", batch.targets_tensor());
    return batch;
}

void validate_batch(const Batch& batch, int64_t vocab_size, const std::string& source) {
    for (int64_t i = 0; i < batch.batch_size * batch.seq_len; ++i) {
        const int64_t b = i / batch.seq_len, t = i % batch.seq_len;
        check(batch.input_ids[i] >= 0 && batch.input_ids[i] < vocab_size, source, ": input_ids[", b, ", ", t, "] = ",
              batch.input_ids[i], " is outside the vocabulary [0, ", vocab_size, ")");
        const int64_t y = batch.targets[i];
        check(y == cpu::kIgnoreIndex || (y >= 0 && y < vocab_size), source, ": targets[", b, ", ", t, "] = ", y,
              " is neither a token id in [0, ", vocab_size, ") nor the ignore index ", cpu::kIgnoreIndex);
    }
}

void save_batch(const std::string& path, Batch& batch) {
    save_safetensors(path, {batch.input_ids_tensor(), batch.targets_tensor()});
}

Tensor DumpContents::keep_copy(const Tensor& t, const std::string& name) {
    std::vector<std::byte>& bytes = storage.emplace_back(t.nbytes());
    std::memcpy(bytes.data(), t.data, t.nbytes());
    return Tensor(bytes.data(), t.dtype, std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim), name);
}

ForwardResult dump_step(Transformer& model, Batch& batch, const std::string& path, const std::string& compute_dtype,
                        const std::function<void(DumpContents&)>& extend) {
    model.zero_grad();
    ForwardResult result = model.forward(batch.input_ids_tensor(), batch.targets_tensor());
    model.backward();
    // Walk order (debug/diff.h): parameters, activations forward, then parameter gradients in the
    // order backward produces them, which is the reverse of the declaration order (lm_head first,
    // the embedding last; within a layer the MLP before attention).
    DumpContents contents;
    for (const Tensor& t : model.params().tensors()) contents.tensors.push_back(extend ? contents.keep_copy(t, t.name) : t);
    for (const Tensor& t : model.acts().tensors()) contents.tensors.push_back(t);
    const std::vector<Tensor>& grads = model.grads().tensors();
    for (auto it = grads.rbegin(); it != grads.rend(); ++it) {
        contents.tensors.push_back(extend ? contents.keep_copy(*it, it->name) : *it);
    }
    contents.metadata = {{"format", "pt"}, {"producer", "reftrain"}, {"reftrain.config", model.config().to_json().dump()}};
    if (!compute_dtype.empty()) contents.metadata["reftrain.compute_dtype"] = compute_dtype;
    if (extend) extend(contents);
    std::vector<std::string> order;
    for (const Tensor& t : contents.tensors) order.push_back(t.name);
    contents.metadata[kDumpOrderKey] = encode_dump_order(order);
    save_safetensors(path, contents.tensors, contents.metadata);
    return result;
}

Batch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed) {
    Rng rng(seed);
    Batch batch{B, T, std::vector<int64_t>(B * T), std::vector<int64_t>(B * T)};
    for (auto& id : batch.input_ids) id = static_cast<int64_t>(rng.below(V));
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
            batch.targets[b * T + t] = t + 1 < T ? batch.input_ids[b * T + t + 1] : cpu::kIgnoreIndex;
        }
    }
    return batch;
}

}  // namespace reftrain
