// tests/test_name_map.cpp — debug/name_map.h: patterns, splits, fusions, transposes, permutes, the
// RoPE pair reordering, derived prefixes, and every bad-map error naming the file and the entry.
// (tests/python/test_diff_outsider.py runs the shipped maps on four user models end to end.)
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "debug/name_map.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using testing::expect_error;
using nlohmann::json;

NamedArray arange(const std::string& name, std::vector<int64_t> shape) {
    NamedArray a{name, DType::F32, shape, {}};
    a.values.resize(static_cast<size_t>(a.numel()));
    std::iota(a.values.begin(), a.values.end(), 0.0);
    return a;
}

NameMap parse(const json& tensors) { return NameMap::parse(json{{"tensors", tensors}}, "m.json"); }

const NamedArray& named(const std::vector<NamedArray>& arrays, const std::string& name) {
    for (const NamedArray& a : arrays) {
        if (a.name == name) return a;
    }
    ADD_FAILURE() << "no tensor " << name;
    return arrays.front();
}

MapDims dims(int64_t layers, int64_t heads, int64_t kv, int64_t head_dim) {
    MapDims d;
    d.layers = layers;
    d.heads = heads;
    d.kv_heads = kv;
    d.head_dim = head_dim;
    d.hidden = heads * head_dim;
    d.intermediate = 6;
    return d;
}

TEST(NameMap, PatternsRenameEveryLayerAndUnmatchedNamesPassThrough) {
    NameMap map = parse({{{"theirs", "h.{i}.ln.weight"}, {"ours", "model.layers.{i}.input_layernorm.weight"}}});
    std::vector<NamedArray> out = map.apply({arange("h.0.ln.weight", {4}), arange("h.1.ln.weight", {4}),
                                             arange("other", {2})},
                                            dims(2, 2, 1, 2), MapUse::Dump);
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].name, "model.layers.0.input_layernorm.weight");
    EXPECT_EQ(out[1].name, "model.layers.1.input_layernorm.weight");
    EXPECT_EQ(out[2].name, "other");
}

TEST(NameMap, SplitsBySymbolicSizesAndKeepsDerivedPrefixes) {
    // Fused q/k/v rows: q_dim = 2 heads x 2 = 4 rows, kv_dim = 1 x 2 = 2 rows each; 3 columns.
    NameMap map = parse({{{"theirs", "h.{i}.qkv.weight"},
                          {"ours", {"q.{i}.weight", "k.{i}.weight", "v.{i}.weight"}},
                          {"split", {{"dim", 0}, {"sizes", {"q_dim", "kv_dim", "kv_dim"}}}}}});
    std::vector<NamedArray> out = map.apply({arange("h.0.qkv.weight", {8, 3}), arange("grad:h.0.qkv.weight", {8, 3})},
                                            dims(1, 2, 1, 2), MapUse::Dump);
    ASSERT_EQ(out.size(), 6u);
    EXPECT_EQ(named(out, "q.0.weight").shape, (std::vector<int64_t>{4, 3}));
    EXPECT_EQ(named(out, "k.0.weight").values, (std::vector<double>{12, 13, 14, 15, 16, 17}));
    EXPECT_EQ(named(out, "v.0.weight").values.front(), 18.0);
    EXPECT_EQ(named(out, "grad:k.0.weight").values, (std::vector<double>{12, 13, 14, 15, 16, 17}));
    // Along the last axis of an activation (B, T, 8), equal parts when no sizes are given.
    NameMap halves = parse({{{"theirs", "fc.out"}, {"ours", {"gate", "up"}}, {"split", {{"dim", -1}}}}});
    std::vector<NamedArray> parts = halves.apply({arange("fc.out", {1, 2, 4})}, MapDims{}, MapUse::Dump);
    EXPECT_EQ(named(parts, "gate").values, (std::vector<double>{0, 1, 4, 5}));
    EXPECT_EQ(named(parts, "up").values, (std::vector<double>{2, 3, 6, 7}));
}

TEST(NameMap, ConcatTransposePermute) {
    NameMap map = parse({{{"theirs", {"a.x", "a.y"}}, {"ours", "xy"}, {"concat", {{"dim", 0}}}},
                         {{"theirs", "conv.weight"}, {"ours", "lin.weight"}, {"transpose", true}},
                         {{"theirs", "q_bhtd"}, {"ours", "q_bthd"}, {"permute", {0, 2, 1, 3}}}});
    std::vector<NamedArray> out =
        map.apply({arange("a.y", {1, 2}), arange("conv.weight", {2, 3}), arange("a.x", {1, 2}), arange("q_bhtd", {1, 2, 3, 1})},
                  MapDims{}, MapUse::Dump);
    EXPECT_EQ(named(out, "xy").values, (std::vector<double>{0, 1, 0, 1}));
    EXPECT_EQ(named(out, "xy").shape, (std::vector<int64_t>{2, 2}));
    EXPECT_EQ(named(out, "lin.weight").shape, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(named(out, "lin.weight").values, (std::vector<double>{0, 3, 1, 4, 2, 5}));
    // (B=1, H=2, T=3, D=1) -> (B, T, H, D): element [t][h] = h * 3 + t.
    EXPECT_EQ(named(out, "q_bthd").values, (std::vector<double>{0, 3, 1, 4, 2, 5}));
}

TEST(NameMap, RopeInterleavedReordersEachHeadToRotateHalfPairs) {
    // head_dim 4: their slots (x0, y0, x1, y1) per head become ours (x0, x1, y0, y1).
    NameMap map = parse({{{"theirs", "wq.weight"}, {"ours", "q_proj.weight"}, {"rope", "interleaved"}},
                         {{"theirs", "wq.out"}, {"ours", "q_proj.out"}, {"rope", "interleaved"}}});
    std::vector<NamedArray> out = map.apply({arange("wq.weight", {8, 1}), arange("wq.out", {1, 8})}, dims(1, 2, 1, 4),
                                            MapUse::Dump);
    EXPECT_EQ(named(out, "q_proj.weight").values, (std::vector<double>{0, 2, 1, 3, 4, 6, 5, 7}));
    EXPECT_EQ(named(out, "q_proj.out").values, (std::vector<double>{0, 2, 1, 3, 4, 6, 5, 7}));
}

TEST(NameMap, WeightsUseSkipsActivationEntriesAndOptionalEntriesMayBeAbsent) {
    NameMap map = parse({{{"theirs", "tok.weight"}, {"ours", "model.embed_tokens.weight"}},
                         {{"theirs", "output.weight"}, {"ours", "lm_head.weight"}, {"optional", true}},
                         {{"theirs", "tok.out"}, {"ours", "model.embed_tokens.out"}}});
    std::vector<NamedArray> out = map.apply({arange("tok.weight", {3, 2})}, MapDims{}, MapUse::Weights);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].name, "model.embed_tokens.weight");
}

TEST(NameMap, BadMapsNameTheFileAndTheEntry) {
    // A tensor named twice, on either side.
    expect_error([] { parse({{{"theirs", "a"}, {"ours", "x"}}, {{"theirs", "a"}, {"ours", "y"}}}); },
                 {"m.json, entry 2", "their tensor 'a' is already mapped by m.json, entry 1"});
    expect_error([] { parse({{{"theirs", "a"}, {"ours", "x"}}, {{"theirs", "b"}, {"ours", "x"}}}); },
                 {"m.json, entry 2", "our tensor 'x' is already the target of m.json, entry 1"});
    // A split that does not add up.
    expect_error(
        [] {
            parse({{{"theirs", "qkv.weight"}, {"ours", {"q.weight", "k.weight"}}, {"split", {{"dim", 0}, {"sizes", {3, 4}}}}}})
                .apply({arange("qkv.weight", {8, 2})}, MapDims{}, MapUse::Dump);
        },
        {"m.json, entry 1", "split sizes 3 + 4 = 7 do not add up to the size 8 of 'qkv.weight' along axis 0"});
    // A parameter pattern that matches nothing.
    expect_error([] { parse({{{"theirs", "tok.weight"}, {"ours", "embed.weight"}}}).apply({arange("emb.weight", {2})}, MapDims{}, MapUse::Weights); },
                 {"m.json, entry 1", "matches no tensor of the checkpoint"});
    // Another layer count: a layer past the model's, or layers missing.
    NameMap layered = parse({{{"theirs", "h.{i}.w.weight"}, {"ours", "l.{i}.weight"}}});
    expect_error([&] { layered.apply({arange("h.0.w.weight", {1}), arange("h.2.w.weight", {1})}, dims(2, 1, 1, 2), MapUse::Weights); },
                 {"m.json, entry 1", "is layer 2 but the model has 2 layers"});
    expect_error([&] { layered.apply({arange("h.0.w.weight", {1})}, dims(3, 1, 1, 2), MapUse::Weights); },
                 {"m.json, entry 1", "matches layers {0} but the model has 3 layers"});
    // Malformed entries.
    expect_error([] { parse({{{"theirs", "h.{j}.w"}, {"ours", "x"}}}); }, {"m.json, entry 1", "placeholder other than {i}"});
    expect_error([] { parse({{{"theirs", "a"}, {"ours", {"x", "y"}}}}); }, {"m.json, entry 1", "need \"split\""});
    expect_error([] { parse({{{"theirs", "a"}, {"ours", "x"}, {"permute", {0, 0}}}}); }, {"m.json, entry 1", "permutation"});
    expect_error([] { parse({{{"theirs", "a"}, {"ours", "x"}, {"colour", 1}}}); }, {"m.json, entry 1", "unknown key 'colour'"});
    // Two tensors that become one name: an unmatched name collides with a mapped one.
    expect_error([] { parse({{{"theirs", "a"}, {"ours", "b"}}}).apply({arange("a", {1}), arange("b", {1})}, MapDims{}, MapUse::Dump); },
                 {"m.json", "two tensors become 'b'"});
}

TEST(NameMap, ShippedMapsParseAndExtendsResolves) {
    for (const char* name : {"hf", "meta-llama", "torchtitan-llama", "nanogpt"}) {
        NameMap map = NameMap::load(std::string(REFTRAIN_SOURCE_DIR) + "/maps/" + name + ".json");
        EXPECT_GT(map.size(), 15u) << name;
    }
    EXPECT_EQ(NameMap::load(std::string(REFTRAIN_SOURCE_DIR) + "/maps/torchtitan-llama.json").size(),
              NameMap::load(std::string(REFTRAIN_SOURCE_DIR) + "/maps/meta-llama.json").size());
}

}  // namespace
}  // namespace reftrain
