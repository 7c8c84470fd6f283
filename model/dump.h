// model/dump.h — one training step's every named tensor, written to a single safetensors file.
//
// The file holds the parameters (HF names), every activation in execution order ("logits", "loss"
// included), and the parameter gradients ("grad:<name>"), with that walk order stored in the header. tools/python/reftrain_mirror.py writes the
// same names from PyTorch, which is what makes a tensor-by-tensor diff of two implementations possible.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace reftrain {

// A batch as stored on disk: "input_ids" and "targets", both (B, T) I64 (targets already aligned
// with the inputs; kIgnoreIndex = not supervised).
struct Batch {
    int64_t batch_size = 0, seq_len = 0;
    std::vector<int64_t> input_ids, targets;
    Tensor input_ids_tensor() { return Tensor(input_ids.data(), DType::I64, {batch_size, seq_len}, "input_ids"); }
    Tensor targets_tensor() { return Tensor(targets.data(), DType::I64, {batch_size, seq_len}, "targets"); }
};

// A random batch for demos and tests: ids uniform over [0, V) from Rng(seed), every position's target
// the next id (the last position of a row unsupervised).
Batch random_batch(int64_t B, int64_t T, int64_t V, uint64_t seed);

// Reads a batch file; fails naming the file when a tensor is missing, not 2-D, or the shapes differ.
Batch load_batch(const std::string& path);
void save_batch(const std::string& path, Batch& batch);
// Fails naming `source`, the tensor, the row and the position when an input id is outside
// [0, vocab_size) or a target is neither such an id nor the ignore index (-100).
void validate_batch(const Batch& batch, int64_t vocab_size, const std::string& source);

// What a dump file will hold: tensors in walk order and the header's metadata. `storage` owns copies
// (of the parameters and gradients taken before an optimizer step changes them in place, of derived
// tensors) that `tensors` may point into.
struct DumpContents {
    std::vector<Tensor> tensors;
    std::map<std::string, std::string> metadata;
    std::vector<std::vector<std::byte>> storage;
    // A copy of `t` under `name`, owned by `storage`.
    Tensor keep_copy(const Tensor& t, const std::string& name);
};

// Runs forward + backward on `batch` (after zeroing the gradients) and writes to `path` the
// parameters, the activations in execution order, and the parameter gradients in the order backward
// produces them (reverse of the parameters'), recording that order in __metadata__ "reftrain.order"
// (debug/diff.h) for `reftrain diff`, the model config in "reftrain.config" (a diff's map reads the
// dimensions from it) and `compute_dtype` ("f32", "f64"), when given, in "reftrain.compute_dtype".
// `extend`, when given, runs after backward with the contents so far (parameters and gradients
// already copied, so it may step an optimizer) and appends its own tensors and metadata.
// Returns the forward result.
ForwardResult dump_step(Transformer& model, Batch& batch, const std::string& path, const std::string& compute_dtype = "",
                        const std::function<void(DumpContents&)>& extend = {});

}  // namespace reftrain
