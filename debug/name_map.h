// debug/name_map.h — a declarative map from a user's tensor names and layouts to reftrain's.
//
// A user's model names its tensors its own way (`transformer.h.0.attn.c_attn.weight`,
// `layers.0.attention.wq.weight`) and may lay them out differently: q, k and v fused in one matrix,
// Conv1D weights stored transposed, Meta's q/k rows ordered for interleaved RoPE pairs, attention
// tensors as (B, H, T, D). A map file says, once, how each of their tensors becomes ours; the same
// map then serves their weights (`reftrain dump --weights THEIRS --map M.json`), their parameter
// gradients and optimizer state (`grad:<name>`, `adam.m:<name>`, ...: the prefix is kept and the
// same transform applies) and their activations (`<module>.out`, `<module>.in`, taps), which is
// how `reftrain diff` reads a dump written by tools/python/dump_hooks.py in the user's own names.
//
// The file (maps/*.json are the shipped ones; docs/diffing.md has the reference):
//   {
//     "about": "what layout this is",
//     "extends": "other.json",                       optional: that map's entries first, then these
//     "tensors": [
//       {"theirs": "tok_embeddings.weight", "ours": "model.embed_tokens.weight"},
//       {"theirs": "layers.{i}.attention.wq.weight", "ours": "model.layers.{i}.self_attn.q_proj.weight",
//        "rope": "interleaved"},                      their rows pair (2j, 2j+1) per head; ours pair (j, j+D/2)
//       {"theirs": "h.{i}.attn.c_attn.weight", "split": {"dim": 0, "sizes": ["q_dim", "kv_dim", "kv_dim"]},
//        "ours": ["...q_proj.weight", "...k_proj.weight", "...v_proj.weight"]},
//       {"theirs": ["a.{i}.x", "a.{i}.y"], "concat": {"dim": 0}, "ours": "..."},   a fusion
//       {"theirs": "h.{i}.mlp.c_fc.weight", "transpose": true, "ours": "..."},     Conv1D-style (in, out)
//       {"theirs": "blocks.{i}.attn.q_rot", "permute": [0, 2, 1, 3], "ours": "...q_rotary"},
//       {"theirs": "output.weight", "ours": "lm_head.weight", "optional": true}
//     ]
//   }
// `{i}` stands for a layer index. Transforms apply in the order concat, transpose, permute, rope,
// split. Split sizes are integers or names of model dimensions: hidden, intermediate, head_dim,
// q_dim (heads x head_dim), kv_dim (KV heads x head_dim); without sizes the parts are equal. `rope`
// works along `rope_axis` (default 0 for a parameter, -1 for anything else) in groups of head_dim.
// A name no entry matches passes through unchanged (HF's names need no entries).
//
// Checks, each failing with the map file and the entry: a tensor named twice (by two entries, on
// either side), a placeholder other than {i}, a split whose sizes do not add up to the tensor's
// dimension, a parameter entry that matches nothing (unless "optional"), a layer index outside the
// model's layer count, or a parameter entry that misses a layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kernels/dtype.h"

namespace reftrain {

// One tensor held as float64 whatever its stored dtype (`dtype` says what that was). Diffs and the
// map's transforms work on these; float64 holds every f32/bf16/f16 value and every integer below 2^53.
struct NamedArray {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    std::vector<double> values;
    int64_t numel() const;
};

// The model dimensions a map may need (-1 = unknown; a transform needing an unknown one fails).
struct MapDims {
    int64_t layers = -1, heads = -1, kv_heads = -1, head_dim = -1, hidden = -1, intermediate = -1;
    // From an HF-style config JSON (reftrain dumps store theirs in __metadata__ "reftrain.config").
    static MapDims from_config_json(const nlohmann::json& config);
};

// What the map is applied to: a checkpoint (only parameter entries are used, and every parameter
// entry must match) or a dump (every entry is used; activation entries may match nothing).
enum class MapUse { Weights, Dump };

class NameMap {
public:
    // Reads a map file (and the files it extends, relative to it). Fails naming the file and entry.
    static NameMap load(const std::string& path);
    // Parses a map already read; `source` names it in messages, `base_dir` resolves "extends".
    static NameMap parse(const nlohmann::json& map, const std::string& source, const std::string& base_dir = "");

    // Their tensors, in their order, become ours: each matched name is replaced in place by the
    // name(s) its entry makes. Unmatched names pass through unchanged.
    std::vector<NamedArray> apply(std::vector<NamedArray> theirs, const MapDims& dims, MapUse use) const;

    const std::string& source() const { return source_; }
    size_t size() const;
    // The map as one JSON object with "extends" resolved, for embedding in a dump's metadata.
    std::string to_json_text() const;

    struct Entry;
    NameMap();
    ~NameMap();
    NameMap(NameMap&&) noexcept;
    NameMap& operator=(NameMap&&) noexcept;
    NameMap(const NameMap&);
    NameMap& operator=(const NameMap&);

private:
    std::string source_;
    std::vector<Entry> entries_;
};

// The prefixes that name state derived from a parameter; the map applies to the name behind them.
// "grad:" (the gradient), "grad.clipped:" (as the optimizer saw it), "adam.m:", "adam.v:" (AdamW's
// moments after the step), "updated:" (the parameter after the step).
const std::vector<std::string>& derived_prefixes();

}  // namespace reftrain
