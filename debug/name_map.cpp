// debug/name_map.cpp — see name_map.h for the file format and the checks.
#include "debug/name_map.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "kernels/json_strict.h"

namespace reftrain {

using nlohmann::json;

int64_t NamedArray::numel() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

MapDims MapDims::from_config_json(const json& c) {
    MapDims d;
    auto get = [&](const char* key, int64_t fallback) {
        return c.contains(key) && c[key].is_number_integer() ? c[key].get<int64_t>() : fallback;
    };
    d.layers = get("num_hidden_layers", -1);
    d.heads = get("num_attention_heads", -1);
    d.kv_heads = get("num_key_value_heads", d.heads);
    d.hidden = get("hidden_size", -1);
    d.head_dim = get("head_dim", d.heads > 0 && d.hidden > 0 ? d.hidden / d.heads : -1);
    d.intermediate = get("intermediate_size", -1);
    return d;
}

const std::vector<std::string>& derived_prefixes() {
    static const std::vector<std::string> prefixes = {"grad:", "grad.clipped:", "adam.m:", "adam.v:", "updated:"};
    return prefixes;
}

struct NameMap::Entry {
    int index = 0;        // 1-based position in the resolved list, for messages
    std::string where;    // "maps/x.json, entry 3"
    json raw;
    std::vector<std::string> theirs, ours;  // patterns; several theirs = concat, several ours = split
    std::vector<std::regex> theirs_re;
    std::optional<int64_t> concat_dim, split_dim, rope_axis;
    std::vector<json> sizes;
    std::vector<int64_t> permute;
    bool transpose = false, rope_interleaved = false, optional = false, parameter = false;

    std::string describe() const { return where + " (" + raw.dump() + ")"; }
};

NameMap::NameMap() = default;
NameMap::~NameMap() = default;
size_t NameMap::size() const { return entries_.size(); }
NameMap::NameMap(NameMap&&) noexcept = default;
NameMap& NameMap::operator=(NameMap&&) noexcept = default;
NameMap::NameMap(const NameMap&) = default;
NameMap& NameMap::operator=(const NameMap&) = default;

namespace {

bool is_parameter_name(const std::string& name) {
    auto ends = [&](const char* s) {
        const std::string suffix(s);
        return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    return ends(".weight") || ends(".bias");
}

// "layers.{i}.wq.weight" -> ^layers\.(\d+)\.wq\.weight$; any other {...} is refused.
std::regex compile_pattern(const std::string& pattern, const std::string& where) {
    std::string re;
    for (size_t k = 0; k < pattern.size(); ++k) {
        const char ch = pattern[k];
        if (ch == '{') {
            check(pattern.compare(k, 3, "{i}") == 0, where, ": pattern '", pattern,
                  "' has a placeholder other than {i} (the layer index is the only one)");
            re += "(\\d+)";
            k += 2;
        } else if (std::string("\\^$.|?*+()[]}").find(ch) != std::string::npos) {
            re += '\\';
            re += ch;
        } else {
            re += ch;
        }
    }
    return std::regex(re);
}

std::string substitute(const std::string& pattern, const std::string& layer) {
    std::string out = pattern;
    for (size_t at; (at = out.find("{i}")) != std::string::npos;) out.replace(at, 3, layer);
    return out;
}

std::vector<std::string> string_or_list(const json& v, const char* field, const std::string& where) {
    std::vector<std::string> out;
    if (v.is_string()) {
        out.push_back(v.get<std::string>());
    } else if (v.is_array() && !v.empty()) {
        for (const json& item : v) {
            check(item.is_string(), where, ": '", field, "' must hold tensor names (strings), got ", item.dump());
            out.push_back(item.get<std::string>());
        }
    } else {
        fail(where, ": '", field, "' must be a tensor name or a non-empty list of names, got ", v.dump());
    }
    return out;
}

int64_t axis_of(int64_t axis, size_t ndim, const std::string& what) {
    const int64_t n = static_cast<int64_t>(ndim);
    check(axis >= -n && axis < n, what, ": axis ", axis, " is outside a tensor of ", n, " dimensions");
    return axis < 0 ? axis + n : axis;
}

// outer x n x inner view of `shape` around `axis`.
void around(const std::vector<int64_t>& shape, int64_t axis, int64_t& outer, int64_t& inner) {
    outer = inner = 1;
    for (int64_t k = 0; k < axis; ++k) outer *= shape[k];
    for (size_t k = static_cast<size_t>(axis) + 1; k < shape.size(); ++k) inner *= shape[k];
}

// out[.., k, ..] = x[.., index[k], ..] along `axis`.
NamedArray gather(const NamedArray& x, int64_t axis, const std::vector<int64_t>& index) {
    int64_t outer, inner;
    around(x.shape, axis, outer, inner);
    const int64_t n = x.shape[axis], m = static_cast<int64_t>(index.size());
    NamedArray out{x.name, x.dtype, x.shape, std::vector<double>(static_cast<size_t>(outer * m * inner))};
    out.shape[axis] = m;
    for (int64_t o = 0; o < outer; ++o) {
        for (int64_t k = 0; k < m; ++k) {
            const double* src = x.values.data() + (o * n + index[k]) * inner;
            std::copy(src, src + inner, out.values.data() + (o * m + k) * inner);
        }
    }
    return out;
}

NamedArray permute_axes(const NamedArray& x, const std::vector<int64_t>& perm) {
    const size_t nd = x.shape.size();
    NamedArray out{x.name, x.dtype, std::vector<int64_t>(nd), std::vector<double>(x.values.size())};
    std::vector<int64_t> in_stride(nd, 1);
    for (size_t k = nd; k-- > 1;) in_stride[k - 1] = in_stride[k] * x.shape[k];
    for (size_t k = 0; k < nd; ++k) out.shape[k] = x.shape[perm[k]];
    std::vector<int64_t> idx(nd, 0);
    for (size_t flat = 0; flat < out.values.size(); ++flat) {
        int64_t src = 0;
        for (size_t k = 0; k < nd; ++k) src += idx[k] * in_stride[perm[k]];
        out.values[flat] = x.values[static_cast<size_t>(src)];
        for (size_t k = nd; k-- > 0;) {  // next output index, row-major
            if (++idx[k] < out.shape[k]) break;
            idx[k] = 0;
        }
    }
    return out;
}

int64_t size_value(const json& size, const MapDims& dims, const std::string& where) {
    if (size.is_number_integer()) return size.get<int64_t>();
    check(size.is_string(), where, ": split size ", size.dump(), " must be an integer or a dimension name");
    const std::string s = size.get<std::string>();
    const std::map<std::string, int64_t> named = {
        {"hidden", dims.hidden}, {"intermediate", dims.intermediate}, {"head_dim", dims.head_dim},
        {"q_dim", dims.heads > 0 && dims.head_dim > 0 ? dims.heads * dims.head_dim : -1},
        {"kv_dim", dims.kv_heads > 0 && dims.head_dim > 0 ? dims.kv_heads * dims.head_dim : -1}};
    auto found = named.find(s);
    check(found != named.end(), where, ": split size '", s,
          "' is not a dimension name (hidden, intermediate, head_dim, q_dim, kv_dim) or an integer");
    check(found->second > 0, where, ": split size '", s, "' needs the model's dimensions, which are not known here");
    return found->second;
}

}  // namespace

NameMap NameMap::parse(const json& map, const std::string& source, const std::string& base_dir) {
    NameMap out;
    out.source_ = source;
    check(map.is_object(), source, ": a map must be a JSON object with a \"tensors\" list, got ", map.type_name());
    for (const auto& [key, value] : map.items()) {
        check(key == "about" || key == "extends" || key == "tensors" || key == "source", source, ": unknown key '", key,
              "' (a map has about, extends and tensors)");
        (void)value;
    }
    if (map.contains("extends")) {
        check(map["extends"].is_string(), source, ": 'extends' must name another map file");
        const std::filesystem::path parent = std::filesystem::path(base_dir) / map["extends"].get<std::string>();
        out.entries_ = load(parent.string()).entries_;
    }
    check(map.contains("tensors") && map["tensors"].is_array(), source, ": a map needs a \"tensors\" list of entries");
    for (const json& raw : map["tensors"]) {
        Entry e;
        e.index = static_cast<int>(out.entries_.size()) + 1;
        e.where = concat(source, ", entry ", e.index);
        e.raw = raw;
        check(raw.is_object(), e.where, ": an entry must be an object with \"theirs\" and \"ours\", got ", raw.dump());
        static const std::set<std::string> keys = {"theirs", "ours", "split", "concat", "transpose", "permute",
                                                   "rope", "rope_axis", "optional", "about"};
        for (const auto& [key, value] : raw.items()) {
            check(keys.count(key) != 0, e.describe(), ": unknown key '", key,
                  "' (an entry has theirs, ours, split, concat, transpose, permute, rope, rope_axis, optional)");
            (void)value;
        }
        check(raw.contains("theirs") && raw.contains("ours"), e.describe(), ": an entry needs both 'theirs' and 'ours'");
        e.theirs = string_or_list(raw["theirs"], "theirs", e.where);
        e.ours = string_or_list(raw["ours"], "ours", e.where);
        for (const std::string& p : e.theirs) e.theirs_re.push_back(compile_pattern(p, e.where));
        for (const std::string& p : e.ours) compile_pattern(p, e.where);
        auto dim_of = [&](const char* field) -> int64_t {
            const json& v = raw[field];
            check(v.is_object() && v.contains("dim") && v["dim"].is_number_integer(), e.describe(), ": '", field,
                  "' must be an object with an integer \"dim\"");
            return v["dim"].get<int64_t>();
        };
        if (raw.contains("concat")) e.concat_dim = dim_of("concat");
        if (raw.contains("split")) {
            e.split_dim = dim_of("split");
            if (raw["split"].contains("sizes")) {
                const json& sizes = raw["split"]["sizes"];
                check(sizes.is_array() && sizes.size() == e.ours.size(), e.describe(), ": split sizes must be a list of ",
                      e.ours.size(), " (one per name in 'ours')");
                for (const json& s : sizes) e.sizes.push_back(s);
            }
        }
        check(e.theirs.size() == 1 || e.concat_dim, e.describe(), ": several names in 'theirs' need \"concat\": {\"dim\": d}");
        check(e.theirs.size() > 1 || !e.concat_dim, e.describe(), ": \"concat\" needs several names in 'theirs'");
        check(e.ours.size() == 1 || e.split_dim, e.describe(), ": several names in 'ours' need \"split\": {\"dim\": d}");
        check(e.ours.size() > 1 || !e.split_dim, e.describe(), ": \"split\" needs several names in 'ours'");
        if (raw.contains("transpose")) {
            check(raw["transpose"].is_boolean(), e.describe(), ": 'transpose' must be true or false");
            e.transpose = raw["transpose"].get<bool>();
        }
        if (raw.contains("permute")) {
            check(raw["permute"].is_array(), e.describe(), ": 'permute' must be a list of axes");
            for (const json& a : raw["permute"]) {
                check(a.is_number_integer(), e.describe(), ": 'permute' must be a list of integer axes");
                e.permute.push_back(a.get<int64_t>());
            }
            std::vector<int64_t> sorted = e.permute;
            std::sort(sorted.begin(), sorted.end());
            for (size_t k = 0; k < sorted.size(); ++k) {
                check(sorted[k] == static_cast<int64_t>(k), e.describe(), ": 'permute' must be a permutation of 0..",
                      sorted.size() - 1);
            }
        }
        if (raw.contains("rope")) {
            check(raw["rope"] == "interleaved" || raw["rope"] == "half", e.describe(),
                  ": 'rope' must be \"interleaved\" (their pairs are (2j, 2j+1)) or \"half\" (as ours)");
            e.rope_interleaved = raw["rope"] == "interleaved";
            check(!e.rope_interleaved || !e.split_dim, e.describe(),
                  ": 'rope' with 'split' is not supported (it would reorder every part); map the parts separately");
        }
        if (raw.contains("rope_axis")) {
            check(raw["rope_axis"].is_number_integer(), e.describe(), ": 'rope_axis' must be an integer");
            e.rope_axis = raw["rope_axis"].get<int64_t>();
        }
        if (raw.contains("optional")) {
            check(raw["optional"].is_boolean(), e.describe(), ": 'optional' must be true or false");
            e.optional = raw["optional"].get<bool>();
        }
        e.parameter = std::all_of(e.ours.begin(), e.ours.end(), is_parameter_name);
        // A name may appear in one entry only, on either side.
        for (const Entry& other : out.entries_) {
            for (const std::string& t : e.theirs) {
                check(std::find(other.theirs.begin(), other.theirs.end(), t) == other.theirs.end(), e.describe(),
                      ": their tensor '", t, "' is already mapped by ", other.describe());
            }
            for (const std::string& o : e.ours) {
                check(std::find(other.ours.begin(), other.ours.end(), o) == other.ours.end(), e.describe(),
                      ": our tensor '", o, "' is already the target of ", other.describe());
            }
        }
        for (size_t a = 0; a < e.ours.size(); ++a) {
            for (size_t b = a + 1; b < e.ours.size(); ++b) {
                check(e.ours[a] != e.ours[b], e.describe(), ": names our tensor '", e.ours[a], "' twice");
            }
        }
        out.entries_.push_back(std::move(e));
    }
    return out;
}

NameMap NameMap::load(const std::string& path) {
    const json map = read_json_file(path, "tensor-name map");
    return parse(map, path, std::filesystem::path(path).parent_path().string());
}

std::string NameMap::to_json_text() const {
    json tensors = json::array();
    for (const Entry& e : entries_) tensors.push_back(e.raw);
    return json{{"source", source_}, {"tensors", tensors}}.dump();
}

std::vector<NamedArray> NameMap::apply(std::vector<NamedArray> theirs, const MapDims& dims, MapUse use) const {
    struct Match {
        size_t entry;
        size_t part;         // which of the entry's 'theirs' names
        std::string prefix;  // "" or one of derived_prefixes()
        std::string layer;   // the {i} value, "" without one
    };
    std::vector<std::optional<Match>> matches(theirs.size());
    for (size_t t = 0; t < theirs.size(); ++t) {
        std::string prefix, base = theirs[t].name;
        for (const std::string& p : derived_prefixes()) {
            if (base.rfind(p, 0) == 0) {
                prefix = p;
                base = base.substr(p.size());
                break;
            }
        }
        for (size_t e = 0; e < entries_.size(); ++e) {
            const Entry& entry = entries_[e];
            if (use == MapUse::Weights && !entry.parameter) continue;
            for (size_t part = 0; part < entry.theirs_re.size(); ++part) {
                std::smatch m;
                if (!std::regex_match(base, m, entry.theirs_re[part])) continue;
                check(!matches[t], entry.describe(), ": tensor '", theirs[t].name, "' is also matched by ",
                      entries_[matches[t] ? matches[t]->entry : 0].describe(), "; a tensor may match one entry only");
                std::string layer;
                for (size_t g = 1; g < m.size(); ++g) {
                    check(layer.empty() || layer == m[g].str(), entry.describe(), ": tensor '", theirs[t].name,
                          "' gives {i} two values (", layer, " and ", m[g].str(), ")");
                    layer = m[g].str();
                }
                if (!layer.empty() && dims.layers > 0) {
                    check(std::stoll(layer) < dims.layers, entry.describe(), ": tensor '", theirs[t].name,
                          "' is layer ", layer, " but the model has ", dims.layers,
                          " layers (num_hidden_layers): is this map, or this file, for another model?");
                }
                matches[t] = Match{e, part, prefix, layer};
            }
        }
    }

    // Which (entry, prefix, layer) groups exist, and which layers each parameter entry saw.
    std::map<std::tuple<size_t, std::string, std::string>, std::vector<size_t>> groups;
    std::vector<std::set<std::string>> layers_seen(entries_.size());
    for (size_t t = 0; t < theirs.size(); ++t) {
        if (!matches[t]) continue;
        const Match& m = *matches[t];
        auto& members = groups[{m.entry, m.prefix, m.layer}];
        if (members.empty()) members.assign(entries_[m.entry].theirs.size(), SIZE_MAX);
        check(members[m.part] == SIZE_MAX, entries_[m.entry].describe(), ": two tensors match '",
              entries_[m.entry].theirs[m.part], "': '", theirs[members[m.part] == SIZE_MAX ? t : members[m.part]].name,
              "' and '", theirs[t].name, "'");
        members[m.part] = t;
        if (m.prefix.empty()) layers_seen[m.entry].insert(m.layer);
    }
    for (size_t e = 0; e < entries_.size(); ++e) {
        const Entry& entry = entries_[e];
        if (!entry.parameter || entry.optional) continue;
        check(!layers_seen[e].empty(), entry.describe(), ": matches no tensor of ",
              use == MapUse::Weights ? "the checkpoint" : "the dump",
              " (is the pattern spelled as the model names it? mark the entry \"optional\": true if the tensor may be absent)");
        const bool per_layer = entry.theirs[0].find("{i}") != std::string::npos;
        if (per_layer && dims.layers > 0 && static_cast<int64_t>(layers_seen[e].size()) != dims.layers) {
            std::string seen;
            for (const std::string& l : layers_seen[e]) seen += (seen.empty() ? "" : ", ") + l;
            fail(entry.describe(), ": matches layers {", seen, "} but the model has ", dims.layers,
                 " layers (num_hidden_layers): is this map, or this file, for another model?");
        }
    }

    std::vector<NamedArray> out;
    std::set<std::string> produced;
    auto emit = [&](NamedArray a, const std::string& origin) {
        check(produced.insert(a.name).second, source_, ": two tensors become '", a.name, "' (the second from '", origin,
              "'): a name no entry maps collides with a mapped one, or two entries overlap");
        out.push_back(std::move(a));
    };
    for (size_t t = 0; t < theirs.size(); ++t) {
        if (!matches[t]) {
            const std::string name = theirs[t].name;
            emit(std::move(theirs[t]), name);
            continue;
        }
        const Match m = *matches[t];
        const Entry& entry = entries_[m.entry];
        const std::vector<size_t>& members = groups.at({m.entry, m.prefix, m.layer});
        for (size_t p = 0; p < members.size(); ++p) {
            check(members[p] != SIZE_MAX, entry.describe(), ": '", theirs[t].name, "' is there but '",
                  m.prefix + substitute(entry.theirs[p], m.layer), "', which it is concatenated with, is not");
        }
        if (members.front() != t) continue;  // a concat group is emitted where its first part stands
        const std::string origin = theirs[t].name;
        NamedArray x = std::move(theirs[members[0]]);
        if (entry.concat_dim) {
            const int64_t axis = axis_of(*entry.concat_dim, x.shape.size(), entry.describe());
            int64_t outer, inner;
            around(x.shape, axis, outer, inner);
            std::vector<const NamedArray*> parts{&x};
            for (size_t p = 1; p < members.size(); ++p) parts.push_back(&theirs[members[p]]);
            int64_t total = 0;
            for (const NamedArray* part : parts) {
                std::vector<int64_t> a = part->shape, b = x.shape;
                check(a.size() == b.size(), entry.describe(), ": '", part->name, "' and '", x.name,
                      "' have different numbers of dimensions");
                a[axis] = b[axis] = 0;
                check(a == b, entry.describe(), ": '", part->name, "' and '", x.name, "' differ outside the concat axis");
                total += part->shape[axis];
            }
            NamedArray joined{x.name, x.dtype, x.shape, std::vector<double>(static_cast<size_t>(outer * total * inner))};
            joined.shape[axis] = total;
            for (int64_t o = 0; o < outer; ++o) {
                double* dst = joined.values.data() + o * total * inner;
                for (const NamedArray* part : parts) {
                    const int64_t n = part->shape[axis] * inner;
                    std::copy(part->values.data() + o * n, part->values.data() + (o + 1) * n, dst);
                    dst += n;
                }
            }
            x = std::move(joined);
        }
        if (entry.transpose) {
            check(x.shape.size() >= 2, entry.describe(), ": cannot transpose '", origin, "' of shape with ",
                  x.shape.size(), " dimension(s)");
            std::vector<int64_t> perm(x.shape.size());
            std::iota(perm.begin(), perm.end(), 0);
            std::swap(perm[perm.size() - 1], perm[perm.size() - 2]);
            x = permute_axes(x, perm);
        }
        if (!entry.permute.empty()) {
            check(entry.permute.size() == x.shape.size(), entry.describe(), ": 'permute' has ", entry.permute.size(),
                  " axes but '", origin, "' has ", x.shape.size(), " dimensions");
            x = permute_axes(x, entry.permute);
        }
        if (entry.rope_interleaved) {
            const int64_t D = dims.head_dim;
            check(D > 0, entry.describe(), ": 'rope' needs head_dim, which is not known here");
            const int64_t axis = axis_of(entry.rope_axis.value_or(entry.parameter ? 0 : -1), x.shape.size(),
                                         entry.describe());
            const int64_t n = x.shape[axis], h = D / 2;
            check(n % D == 0, entry.describe(), ": 'rope' along axis ", axis, " of '", origin, "' (size ", n,
                  ") needs a multiple of head_dim ", D);
            std::vector<int64_t> index(static_cast<size_t>(n));
            for (int64_t g = 0; g < n; g += D) {
                for (int64_t j = 0; j < h; ++j) {
                    index[g + j] = g + 2 * j;          // our first half: their even slots
                    index[g + h + j] = g + 2 * j + 1;  // our second half: their odd slots
                }
            }
            x = gather(x, axis, index);
        }
        if (entry.split_dim) {
            const int64_t axis = axis_of(*entry.split_dim, x.shape.size(), entry.describe());
            std::vector<int64_t> sizes;
            for (const json& s : entry.sizes) sizes.push_back(size_value(s, dims, entry.describe()));
            if (sizes.empty()) {
                check(x.shape[axis] % static_cast<int64_t>(entry.ours.size()) == 0, entry.describe(), ": '", origin,
                      "' has size ", x.shape[axis], " along axis ", axis, ", which does not split into ",
                      entry.ours.size(), " equal parts");
                sizes.assign(entry.ours.size(), x.shape[axis] / static_cast<int64_t>(entry.ours.size()));
            }
            const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
            std::string sizes_text;
            for (size_t k = 0; k < sizes.size(); ++k) sizes_text += (k ? " + " : "") + std::to_string(sizes[k]);
            check(total == x.shape[axis], entry.describe(), ": split sizes ", sizes_text, " = ", total,
                  " do not add up to the size ", x.shape[axis], " of '", origin, "' along axis ", axis);
            int64_t offset = 0;
            for (size_t k = 0; k < sizes.size(); ++k) {
                std::vector<int64_t> index(static_cast<size_t>(sizes[k]));
                std::iota(index.begin(), index.end(), offset);
                offset += sizes[k];
                NamedArray part = gather(x, axis, index);
                part.name = m.prefix + substitute(entry.ours[k], m.layer);
                emit(std::move(part), origin);
            }
        } else {
            x.name = m.prefix + substitute(entry.ours[0], m.layer);
            emit(std::move(x), origin);
        }
    }
    return out;
}

}  // namespace reftrain
