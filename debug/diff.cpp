// debug/diff.cpp — see diff.h for the error measure and the walk order.
#include "debug/diff.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace reftrain {

std::string encode_dump_order(const std::vector<std::string>& names) { return nlohmann::json(names).dump(); }

std::optional<std::vector<std::string>> read_dump_order(const SafetensorsFile& file) {
    auto found = file.metadata().find(kDumpOrderKey);
    if (found == file.metadata().end()) return std::nullopt;
    nlohmann::json parsed;
    try {
        parsed = nlohmann::json::parse(found->second);
    } catch (const nlohmann::json::exception& e) {
        fail(file.path(), ": __metadata__ '", kDumpOrderKey, "' is not valid JSON (expected a list of tensor names): ",
             e.what());
    }
    check(parsed.is_array(), file.path(), ": __metadata__ '", kDumpOrderKey, "' must be a JSON list of tensor names, got ",
          parsed.type_name());
    std::vector<std::string> names;
    for (const auto& item : parsed) {
        check(item.is_string(), file.path(), ": __metadata__ '", kDumpOrderKey, "' holds ", item.dump(),
              ", expected only tensor names (strings)");
        names.push_back(item.get<std::string>());
    }
    return names;
}

namespace {

// Rank of a dtype's precision: a higher rank is a coarser (looser) tolerance.
int coarseness(DType dtype) {
    switch (dtype) {
        case DType::I32: case DType::I64: case DType::U8: return 0;
        case DType::F64: return 1;
        case DType::F32: return 2;
        case DType::F16: return 3;
        case DType::BF16: return 4;
    }
    return 4;
}

// Every element of the tensor as float64, whatever its stored dtype.
std::vector<double> read_as_double(const SafetensorsFile& file, const SafetensorsEntry& entry) {
    const int64_t n = entry.numel();
    std::vector<double> out(static_cast<size_t>(n));
    const std::byte* raw = file.raw_data(entry.name);
    const size_t width = dtype_size(entry.dtype);
    for (int64_t i = 0; i < n; ++i) {
        const std::byte* p = raw + static_cast<size_t>(i) * width;
        switch (entry.dtype) {
            case DType::F64: { double v; std::memcpy(&v, p, 8); out[i] = v; break; }
            case DType::F32: { float v; std::memcpy(&v, p, 4); out[i] = v; break; }
            case DType::BF16: { uint16_t v; std::memcpy(&v, p, 2); out[i] = bf16_to_float(v); break; }
            case DType::F16: { uint16_t v; std::memcpy(&v, p, 2); out[i] = f16_to_float(v); break; }
            case DType::I64: { int64_t v; std::memcpy(&v, p, 8); out[i] = static_cast<double>(v); break; }
            case DType::I32: { int32_t v; std::memcpy(&v, p, 4); out[i] = v; break; }
            case DType::U8: { uint8_t v; std::memcpy(&v, p, 1); out[i] = v; break; }
        }
    }
    return out;
}

std::vector<int64_t> without_unit_dims(const std::vector<int64_t>& shape) {
    std::vector<int64_t> out;
    for (int64_t s : shape) {
        if (s != 1) out.push_back(s);
    }
    return out;
}

// "(2, 9, 48)"; compact = "(2,9,48)", one word in the table.
std::string shape_text(const std::vector<int64_t>& shape, bool compact = false) {
    std::string out = "(";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? (compact ? "," : ", ") : "") + std::to_string(shape[i]);
    return out + ")";
}

std::vector<int64_t> unravel(int64_t flat, const std::vector<int64_t>& shape) {
    std::vector<int64_t> index(shape.size());
    for (size_t k = shape.size(); k-- > 0;) {
        index[k] = shape[k] > 0 ? flat % shape[k] : 0;
        flat = shape[k] > 0 ? flat / shape[k] : 0;
    }
    return index;
}

TensorDiff compare_tensor(const SafetensorsFile& a, const SafetensorsFile& b, const std::string& name,
                          const DiffOptions& options) {
    const SafetensorsEntry& ea = a.entry(name);
    const SafetensorsEntry& eb = b.entry(name);
    TensorDiff row;
    row.name = name;
    row.shape_a = ea.shape;
    row.shape_b = eb.shape;
    row.dtype_a = ea.dtype;
    row.dtype_b = eb.dtype;
    row.tolerance = default_tolerance(ea.dtype, eb.dtype);
    if (options.rtol) row.tolerance.rtol = *options.rtol;
    if (options.atol) row.tolerance.atol = *options.atol;
    if (without_unit_dims(ea.shape) != without_unit_dims(eb.shape)) {
        row.status = TensorStatus::ShapeMismatch;
        row.max_abs = row.max_rel = INFINITY;
        return row;
    }
    const std::vector<double> va = read_as_double(a, ea), vb = read_as_double(b, eb);
    int64_t worst = -1;
    for (size_t i = 0; i < va.size(); ++i) {
        const double x = va[i], y = vb[i];
        double err;
        if (std::isfinite(x) && std::isfinite(y)) {
            row.scale = std::max({row.scale, std::fabs(x), std::fabs(y)});
            err = std::fabs(x - y);
        } else if ((std::isnan(x) && std::isnan(y)) || x == y) {  // the same NaN or the same Inf
            ++row.nonfinite_in_both;
            continue;
        } else {
            ++row.nonfinite_mismatches;
            err = INFINITY;
        }
        if (worst < 0 || err > row.max_abs) {
            row.max_abs = err;
            worst = static_cast<int64_t>(i);
        }
    }
    if (worst >= 0) {
        row.worst_index = unravel(worst, ea.shape);
        row.a_at_worst = va[worst];
        row.b_at_worst = vb[worst];
    }
    row.max_rel = row.scale > 0 ? row.max_abs / row.scale : (row.max_abs > 0 ? INFINITY : 0.0);
    const bool within = row.max_abs <= row.tolerance.atol + row.tolerance.rtol * row.scale;
    row.status = within ? TensorStatus::Ok : TensorStatus::OverTolerance;
    return row;
}

// A's stored order, else B's, else A's data layout; names A has but the order lacks go at the end.
std::vector<std::string> walk_order(const SafetensorsFile& a, const SafetensorsFile& b, DiffReport& report) {
    std::optional<std::vector<std::string>> stored = read_dump_order(a);
    report.order_source = "A's " + std::string(kDumpOrderKey);
    if (!stored) {
        stored = read_dump_order(b);
        report.order_source = "B's " + std::string(kDumpOrderKey);
    }
    std::vector<std::string> order;
    std::unordered_set<std::string> seen;
    if (stored) {
        for (const std::string& name : *stored) {
            if (seen.insert(name).second) order.push_back(name);
        }
    } else {
        report.order_source = "A's file layout";
        report.warnings.push_back(concat("neither file has __metadata__ '", kDumpOrderKey,
                                         "': walking A's tensors in data layout order, which need not be "
                                         "execution order (the first tensor over tolerance may not be the "
                                         "earliest difference)"));
    }
    // Names in the files that the stored order does not list: A's, then B's, in layout order.
    int64_t unlisted = 0;
    for (const SafetensorsFile* file : {&a, &b}) {
        for (const SafetensorsEntry& e : file->entries()) {
            if (seen.insert(e.name).second) {
                order.push_back(e.name);
                if (stored) ++unlisted;
            }
        }
    }
    if (unlisted > 0) {
        report.warnings.push_back(concat(unlisted, " tensor(s) are not in ", report.order_source,
                                         " and are walked last, in data layout order"));
    }
    return order;
}

}  // namespace

Tolerance default_tolerance(DType a, DType b) {
    const DType coarser = coarseness(a) >= coarseness(b) ? a : b;
    switch (coarser) {
        case DType::F64: return {1e-9, 1e-12};
        case DType::F32: return {1e-4, 1e-7};
        case DType::F16: return {4e-3, 1e-5};
        case DType::BF16: return {3e-2, 1e-5};
        default: return {0.0, 0.0};
    }
}

std::string TensorDiff::verdict() const {
    char text[160];
    if (status == TensorStatus::ShapeMismatch) {
        return "shape " + shape_text(shape_a) + " in A vs " + shape_text(shape_b) + " in B";
    }
    if (nonfinite_mismatches > 0) {
        std::snprintf(text, sizeof text, "%" PRId64 " NaN/Inf where the other side differs", nonfinite_mismatches);
        return text;
    }
    if (status == TensorStatus::OverTolerance) {
        if (scale > 0 && tolerance.atol < tolerance.rtol * scale) {
            std::snprintf(text, sizeof text, "max rel %.2e > rtol %.0e", max_rel, tolerance.rtol);
        } else {
            std::snprintf(text, sizeof text, "max abs %.2e > atol %.0e + rtol %.0e * %.2e", max_abs, tolerance.atol,
                          tolerance.rtol, scale);
        }
        return text;
    }
    return nonfinite_in_both > 0 ? "ok (" + std::to_string(nonfinite_in_both) + " NaN/Inf equal on both sides)" : "ok";
}

int64_t DiffReport::first_failure() const {
    for (size_t i = 0; i < tensors.size(); ++i) {
        if (!tensors[i].ok()) return static_cast<int64_t>(i);
    }
    return -1;
}

int64_t DiffReport::failure_count() const {
    return std::count_if(tensors.begin(), tensors.end(), [](const TensorDiff& t) { return !t.ok(); });
}

int DiffReport::exit_status() const {
    if (first_failure() >= 0) return 1;
    if (strict && (!only_in_a.empty() || !only_in_b.empty())) return 1;
    return 0;
}

DiffReport diff_dumps(const SafetensorsFile& a, const SafetensorsFile& b, const DiffOptions& options) {
    DiffReport report;
    report.path_a = a.path();
    report.path_b = b.path();
    report.strict = options.strict;
    for (const std::string& name : walk_order(a, b, report)) {
        const bool in_a = a.contains(name), in_b = b.contains(name);
        if (in_a && in_b) {
            report.tensors.push_back(compare_tensor(a, b, name, options));
        } else if (in_a) {
            report.only_in_a.push_back(name);
        } else if (in_b) {
            report.only_in_b.push_back(name);
        }
    }
    check(!report.tensors.empty(), "reftrain diff: ", a.path(), " and ", b.path(),
          " share no tensor name, so nothing can be compared (", a.entries().size(), " and ", b.entries().size(),
          " tensors; are both reftrain-named dumps?)");
    return report;
}

DiffReport diff_dump_files(const std::string& path_a, const std::string& path_b, const DiffOptions& options) {
    const SafetensorsFile a = SafetensorsFile::open(path_a);
    const SafetensorsFile b = SafetensorsFile::open(path_b);
    return diff_dumps(a, b, options);
}

std::string format_diff_report(const DiffReport& report, bool all) {
    std::string out;
    char line[512];
    out += "A: " + report.path_a + "\nB: " + report.path_b + "\n";
    out += "order: " + report.order_source + "; a tensor passes when max|a-b| <= atol + rtol * max(max|a|, max|b|)\n";
    for (const std::string& w : report.warnings) out += "warning: " + w + "\n";

    size_t width = 6;
    for (const TensorDiff& t : report.tensors) width = std::max(width, t.name.size());
    std::snprintf(line, sizeof line, "%5s  %-*s  %-9s  %-20s %10s %10s  %s\n", "#", static_cast<int>(width), "tensor",
                  "dtype A/B", "shape", "max_abs", "max_rel", "status");
    out += line;
    const int64_t first = report.first_failure();
    const int64_t last_row = all || first < 0 ? static_cast<int64_t>(report.tensors.size()) - 1 : first;
    for (int64_t i = 0; i <= last_row; ++i) {
        const TensorDiff& t = report.tensors[i];
        std::string dtypes = std::string(dtype_name(t.dtype_a)) + "/" + dtype_name(t.dtype_b);
        std::snprintf(line, sizeof line, "%5" PRId64 "  %-*s  %-9s  %-20s %10.3e %10.3e  %s\n", i + 1,
                      static_cast<int>(width), t.name.c_str(), dtypes.c_str(), shape_text(t.shape_a, true).c_str(), t.max_abs,
                      t.max_rel, t.verdict().c_str());
        out += line;
    }
    if (last_row + 1 < static_cast<int64_t>(report.tensors.size())) {
        std::snprintf(line, sizeof line, "  ... %zu more tensors not listed (--all lists every one)\n",
                      report.tensors.size() - static_cast<size_t>(last_row + 1));
        out += line;
    }

    auto list_names = [&](const std::vector<std::string>& names, const char* side) {
        if (names.empty()) return;
        out += std::to_string(names.size()) + " tensor(s) only in " + side + ":";
        for (const std::string& n : names) out += " " + n;
        out += "\n";
    };
    list_names(report.only_in_a, "A");
    list_names(report.only_in_b, "B");

    std::snprintf(line, sizeof line, "compared %zu tensors: %" PRId64 " over tolerance; %zu only in A, %zu only in B%s\n",
                  report.tensors.size(), report.failure_count(), report.only_in_a.size(), report.only_in_b.size(),
                  report.strict && (!report.only_in_a.empty() || !report.only_in_b.empty()) ? " (--strict: a difference)"
                                                                                           : "");
    out += line;
    if (first >= 0) {
        const TensorDiff& t = report.tensors[first];
        out += "first tensor over tolerance: " + t.name + " (" + t.verdict() + ")";
        if (t.status == TensorStatus::OverTolerance) {
            std::snprintf(line, sizeof line, "; worst element %s: A %.9g, B %.9g", shape_text(t.worst_index).c_str(),
                          t.a_at_worst, t.b_at_worst);
            out += line;
        }
        out += "\n";
    } else if (report.exit_status() == 0) {
        out += "no tensor over tolerance\n";
    } else {
        out += "every shared tensor is within tolerance, but --strict counts the one-sided names above\n";
    }
    return out;
}

}  // namespace reftrain
