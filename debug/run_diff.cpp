// debug/run_diff.cpp — see run_diff.h for the pairing, the error measure and the tolerances.
#include "debug/run_diff.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "kernels/error.h"
#include "kernels/json_strict.h"

namespace reftrain {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The JSON parser's own words without its "[json.exception...] parse error at line 1, column 5: " prefix
// (every line is parsed on its own, so its "line 1" would mislead); the column goes into `column`.
std::string parse_error_text(const json::parse_error& e, size_t* column) {
    *column = e.byte;
    const std::string what = e.what();
    const size_t at = what.find("column");
    const size_t colon = at == std::string::npos ? std::string::npos : what.find(": ", at);
    return colon == std::string::npos ? what : what.substr(colon + 2);
}

int64_t step_of(const json& value, const std::string& path, int64_t line, const char* key) {
    if (value.is_number_integer()) return value.get<int64_t>();
    if (value.is_number_float()) {
        const double v = value.get<double>();
        if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15) return static_cast<int64_t>(v);
    }
    fail(path, " line ", line, ": \"", key, "\" is ", value.dump(), ", expected an integer (the step the line was logged at)");
}

bool is_timing(const std::string& field) {
    const std::string suffix = "_seconds";
    return field == "seconds" ||
           (field.size() > suffix.size() && field.compare(field.size() - suffix.size(), suffix.size(), suffix) == 0);
}

// The value of a compared field as a double: a number, or NaN for null (reftrain's NaN/Inf).
double numeric_value(const MetricsRecord& record, const std::string& field, const std::string& path) {
    const json& v = record.values.at(field);
    if (v.is_null()) return NAN;
    check(v.is_number(), path, " line ", record.line, ": field \"", field, "\" is ", v.dump(), " (", v.type_name(),
          "), expected a number, or null for a non-finite value");
    return v.get<double>();
}

bool skipped_value(const MetricsRecord& record, const std::string& path) {
    auto found = record.values.find("skipped");
    if (found == record.values.end()) return false;
    check(found->is_boolean(), path, " line ", record.line, ": field \"skipped\" is ", found->dump(),
          ", expected true or false");
    return found->get<bool>();
}

double relative_error(double a, double b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0.0 : INFINITY;
    if (a == b) return 0.0;  // also both zero, or the same infinity
    if (!std::isfinite(a) || !std::isfinite(b)) return INFINITY;
    return std::fabs(a - b) / std::max(std::fabs(a), std::fabs(b));
}

using Key = std::pair<std::string, int64_t>;  // (kind, step)

// The index of each (kind, step)'s last line: a resumed run appends the steps after its checkpoint again,
// and the later lines are the ones the run continued from. Repeated steps, per kind, go to `repeated`.
std::map<Key, size_t> last_line_of_each_step(const RunMetrics& run, std::map<std::string, std::set<int64_t>>& repeated) {
    std::map<Key, size_t> index;
    for (size_t i = 0; i < run.records.size(); ++i) {
        const MetricsRecord& r = run.records[i];
        auto [it, inserted] = index.try_emplace(Key{r.kind, r.step}, i);
        if (!inserted) {
            repeated[r.kind].insert(r.step);
            it->second = i;
        }
    }
    return index;
}

// Sorted steps as ranges of consecutive integers.
std::vector<StepRange> ranges_of(const std::string& kind, const std::set<int64_t>& steps) {
    std::vector<StepRange> out;
    for (int64_t s : steps) {
        if (!out.empty() && out.back().last + 1 == s) {
            out.back().last = s;
        } else {
            out.push_back({kind, s, s});
        }
    }
    return out;
}

// "train steps 1-20, 25" for a few ranges of one kind; at most `shown` ranges, then a count of the rest.
std::string ranges_text(const std::vector<StepRange>& ranges, size_t shown = 6) {
    std::string out;
    int64_t lines = 0;
    for (const StepRange& r : ranges) lines += r.last - r.first + 1;
    out += ranges.front().kind + (lines == 1 ? " step " : " steps ");
    for (size_t i = 0; i < ranges.size() && i < shown; ++i) {
        out += (i ? ", " : "") + std::to_string(ranges[i].first);
        if (ranges[i].last != ranges[i].first) out += "-" + std::to_string(ranges[i].last);
    }
    if (ranges.size() > shown) out += concat(", ... (", ranges.size() - shown, " more ranges)");
    return out + concat(" (", lines, lines == 1 ? " line)" : " lines)");
}

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
    return out;
}

// "20 train lines (steps 1-20), 2 eval lines (steps 10-20)": what a file holds, for coverage messages.
std::string holdings(const RunMetrics& run) {
    std::vector<std::string> kinds;
    std::map<std::string, std::set<int64_t>> steps;
    for (const MetricsRecord& r : run.records) {
        if (steps[r.kind].empty()) kinds.push_back(r.kind);
        steps[r.kind].insert(r.step);
    }
    if (kinds.empty()) return "no lines";
    std::vector<std::string> parts;
    for (const std::string& kind : kinds) {
        const std::set<int64_t>& s = steps[kind];
        parts.push_back(concat(s.size(), " ", kind, s.size() == 1 ? " step (" : " steps (", *s.begin(),
                               s.size() == 1 ? "" : concat("-", *s.rbegin()), ")"));
    }
    return join(parts);
}

// Groups one-sided steps by kind in the order the kinds first appear in `run`.
std::vector<StepRange> one_sided(const RunMetrics& run, const std::map<Key, size_t>& own,
                                 const std::map<Key, size_t>& other, int64_t& count) {
    std::vector<std::string> kinds;
    std::map<std::string, std::set<int64_t>> steps;
    for (const auto& [key, index] : own) {
        if (other.count(key)) continue;
        steps[key.first].insert(key.second);
        ++count;
    }
    for (const MetricsRecord& r : run.records) {
        if (steps.count(r.kind) && std::find(kinds.begin(), kinds.end(), r.kind) == kinds.end()) kinds.push_back(r.kind);
    }
    std::vector<StepRange> out;
    for (const std::string& kind : kinds) {
        for (const StepRange& r : ranges_of(kind, steps[kind])) out.push_back(r);
    }
    return out;
}

std::string tolerance_text(double rtol) {
    if (rtol == 0.0) return "0 (exact)";
    char text[32];
    std::snprintf(text, sizeof text, "%.0e", rtol);
    if (std::stod(text) != rtol) std::snprintf(text, sizeof text, "%.3g", rtol);
    return text;
}

std::string rel_text(double rel) {
    if (rel == 0.0) return "0";
    if (std::isinf(rel)) return "inf";
    char text[32];
    std::snprintf(text, sizeof text, "%.2e", rel);
    return text;
}

std::string value_text(double v, const char* format = "%.9g") {
    if (std::isnan(v)) return "null";
    char text[40];
    std::snprintf(text, sizeof text, format, v);
    return text;
}

}  // namespace

RunMetrics parse_run_metrics(const std::string& text, const std::string& path) {
    RunMetrics run;
    run.path = path;
    size_t start = 0;
    int64_t line_number = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        const bool unterminated = end == std::string::npos;
        if (unterminated) end = text.size();
        std::string_view line(text.data() + start, end - start);
        start = end + 1;
        ++line_number;
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;

        DuplicateKey duplicate;
        json object;
        try {
            object = parse_json_noting_duplicates(line, &duplicate);
        } catch (const json::parse_error& e) {
            size_t column = 0;
            const std::string why = parse_error_text(e, &column);
            fail(path, " line ", line_number, ", column ", column, ": not valid JSON: ", why,
                 unterminated ? " (the file's last line has no newline: is the run still writing it?)" : "");
        } catch (const json::exception& e) {   // a NUL byte, nesting, a number out of range
            fail(path, " line ", line_number, ": not valid JSON: ", e.what());
        }
        check(object.is_object(), path, " line ", line_number, ": expected a JSON object with \"step\" (one per line), got ",
              object.type_name());
        check(duplicate.key.empty(), path, " line ", line_number, ": key \"", duplicate.key,
              "\" appears twice (which one did you mean?)");

        MetricsRecord record;
        record.line = line_number;
        if (auto kind = object.find("kind"); kind != object.end()) {
            check(kind->is_string(), path, " line ", line_number, ": \"kind\" is ", kind->dump(),
                  ", expected a string such as \"train\" or \"eval\"");
            record.kind = kind->get<std::string>();
        } else {
            record.kind = "train";
        }
        if (auto step = object.find("step"); step != object.end()) {
            record.step = step_of(*step, path, line_number, "step");
        } else if (auto update = object.find("update"); update != object.end()) {
            record.step = step_of(*update, path, line_number, "update");
            run.indexed_by_update = true;
        } else {
            fail(path, " line ", line_number, ": no \"step\" (every line needs the step it was logged at; a PPO or "
                 "GRPO line may give \"update\" instead): ", std::string(line.substr(0, 120)));
        }
        record.values = std::move(object);
        run.records.push_back(std::move(record));
    }
    return run;
}

std::string resolve_metrics_path(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
        const fs::path metrics = fs::path(path) / "metrics.jsonl";
        check(fs::is_regular_file(metrics, ec), path, ": a directory without metrics.jsonl (expected a run directory "
              "or a .jsonl metrics file)");
        return metrics.string();
    }
    check(fs::exists(path, ec), path, ": no such run directory or metrics file");
    return path;
}

RunMetrics read_run_metrics(const std::string& path) {
    const std::string file = resolve_metrics_path(path);
    std::ifstream in(file, std::ios::binary);
    check(static_cast<bool>(in), file, ": cannot open (", std::strerror(errno), ")");
    std::stringstream text;
    text << in.rdbuf();
    return parse_run_metrics(text.str(), file);
}

double default_field_rtol(const std::string& field, const json& a, const json& b) {
    if (field == "loss" || field == "grad_norm") return 1e-4;
    if (field == "lr" || field == "learning_rate") return 1e-9;
    if (field == "loss_scale") return 0.0;
    if (a.is_number_integer() && b.is_number_integer()) return 0.0;  // a count: tokens, examples, ...
    return 1e-4;
}

std::string compared_field_problem(const std::string& field) {
    if (field.empty()) return "an empty field name";
    if (is_timing(field)) return "\"" + field + "\" is timing, which is never compared (no two runs take the same time)";
    if (field == "step" || field == "update" || field == "kind") {
        return "\"" + field + "\" pairs the lines; it is not a compared field";
    }
    if (field == "skipped") return "\"skipped\" is always compared; it needs no --fields";
    return "";
}

bool StepDiff::ok() const {
    if (skipped_differs()) return false;
    return std::all_of(fields.begin(), fields.end(), [](const FieldDiff& f) { return f.ok(); });
}

const FieldDiff* StepDiff::first_failing_field() const {
    for (const FieldDiff& f : fields) {
        if (!f.ok()) return &f;
    }
    return nullptr;
}

int64_t RunDiffReport::first_difference() const {
    for (size_t i = 0; i < steps.size(); ++i) {
        if (!steps[i].ok()) return static_cast<int64_t>(i);
    }
    return -1;
}

int64_t RunDiffReport::difference_count() const {
    return std::count_if(steps.begin(), steps.end(), [](const StepDiff& s) { return !s.ok(); });
}

int RunDiffReport::exit_status() const {
    if (first_difference() >= 0) return 1;  // a difference found is a finding, however thin the rest
    if (!insufficient_coverage.empty()) return 3;
    return 0;
}

RunDiffReport diff_runs(const RunMetrics& a, const RunMetrics& b, const RunDiffOptions& options) {
    std::vector<std::string> fields;
    for (const std::string& f : options.fields) {
        const std::string problem = compared_field_problem(f);
        check(problem.empty(), "reftrain diff-runs: cannot compare field '", f, "': ", problem);
        if (std::find(fields.begin(), fields.end(), f) == fields.end()) fields.push_back(f);
    }
    check(!fields.empty(), "reftrain diff-runs: no field to compare");
    for (const auto& [f, rtol] : options.field_rtol) {
        const std::string problem = compared_field_problem(f);
        check(problem.empty(), "reftrain diff-runs: a tolerance for field '", f, "': ", problem);
        check(rtol >= 0.0, "reftrain diff-runs: the tolerance for '", f, "' is ", rtol, ", expected >= 0");
    }
    check(!options.rtol || *options.rtol >= 0.0, "reftrain diff-runs: rtol is ", options.rtol.value_or(0),
          ", expected >= 0");

    RunDiffReport report;
    report.path_a = a.path;
    report.path_b = b.path;

    // Every requested field and "skipped" on every line must be well-formed, shared or not.
    std::map<std::string, bool> in_a, in_b;  // requested field -> on some line of that file
    for (const auto& [run, seen] : {std::pair{&a, &in_a}, std::pair{&b, &in_b}}) {
        for (const MetricsRecord& r : run->records) {
            skipped_value(r, run->path);
            for (const std::string& f : fields) {
                if (!r.values.contains(f)) continue;
                numeric_value(r, f, run->path);
                (*seen)[f] = true;
            }
        }
    }

    std::map<std::string, std::set<int64_t>> repeated_a, repeated_b;
    const std::map<Key, size_t> index_a = last_line_of_each_step(a, repeated_a);
    const std::map<Key, size_t> index_b = last_line_of_each_step(b, repeated_b);
    for (const auto& [run, repeated] : {std::pair{&a, &repeated_a}, std::pair{&b, &repeated_b}}) {
        for (const auto& [kind, steps] : *repeated) {
            std::string listed;
            for (const StepRange& r : ranges_of(kind, steps)) {
                listed += (listed.empty() ? "" : ", ") + std::to_string(r.first);
                if (r.last != r.first) listed += "-" + std::to_string(r.last);
            }
            report.warnings.push_back(concat(run == &a ? "A" : "B", ": ", kind, " step(s) ", listed,
                                             " appear on more than one line (a resumed run appends the steps after its "
                                             "checkpoint again); the last line of each is compared"));
        }
    }

    std::map<std::string, int64_t> compared_count;
    std::set<std::string> other_shared;
    for (size_t i = 0; i < a.records.size(); ++i) {
        const MetricsRecord& ra = a.records[i];
        const Key key{ra.kind, ra.step};
        if (index_a.at(key) != i) continue;  // an earlier copy of a repeated step
        auto found = index_b.find(key);
        if (found == index_b.end()) continue;
        const MetricsRecord& rb = b.records[found->second];
        ++report.shared_steps;

        StepDiff step;
        step.kind = ra.kind;
        step.step = ra.step;
        step.line_a = ra.line;
        step.line_b = rb.line;
        step.skipped_a = skipped_value(ra, a.path);
        step.skipped_b = skipped_value(rb, b.path);
        for (const std::string& f : fields) {
            if (!ra.values.contains(f) || !rb.values.contains(f)) continue;
            FieldDiff d;
            d.field = f;
            d.a = numeric_value(ra, f, a.path);
            d.b = numeric_value(rb, f, b.path);
            d.rel = relative_error(d.a, d.b);
            d.rtol = options.rtol.value_or(default_field_rtol(f, ra.values[f], rb.values[f]));
            if (auto own = options.field_rtol.find(f); own != options.field_rtol.end()) d.rtol = own->second;
            step.fields.push_back(d);
            ++compared_count[f];
        }
        for (const auto& [name, value] : ra.values.items()) {
            if (!value.is_number() || is_timing(name) || !compared_field_problem(name).empty()) continue;
            if (std::find(fields.begin(), fields.end(), name) != fields.end()) continue;
            auto other = rb.values.find(name);
            if (other != rb.values.end() && other->is_number()) other_shared.insert(name);
        }
        if (!step.fields.empty() || step.skipped_a || step.skipped_b) report.steps.push_back(std::move(step));
    }
    report.other_shared_fields.assign(other_shared.begin(), other_shared.end());

    const bool fields_named = fields != default_run_diff_fields();
    for (const std::string& f : fields) {
        if (compared_count[f] > 0) {
            report.fields_compared.push_back(f);
            report.field_comparisons.push_back(compared_count[f]);
            continue;
        }
        report.fields_not_compared.push_back(f);
        if (report.shared_steps == 0) continue;  // the coverage verdict says it all
        if (in_a[f] != in_b[f]) {
            report.warnings.push_back(concat("\"", f, "\" is only in ", in_a[f] ? "A" : "B",
                                             f == "loss_scale" ? " (mixed precision on one side only?)" : "",
                                             ": not compared"));
        } else if (in_a[f]) {
            report.warnings.push_back(concat("\"", f, "\" is in both files but on no step they share: not compared"));
        } else if (fields_named) {
            report.warnings.push_back(concat("\"", f, "\" is in neither file: not compared"));
        }
    }

    report.only_in_a = one_sided(a, index_a, index_b, report.only_in_a_count);
    report.only_in_b = one_sided(b, index_b, index_a, report.only_in_b_count);

    // A much shorter run: its last step (of any kind) under half the other's.
    int64_t last_a = 0, last_b = 0;
    for (const MetricsRecord& r : a.records) last_a = std::max(last_a, r.step);
    for (const MetricsRecord& r : b.records) last_b = std::max(last_b, r.step);
    // (min <= max / 2, not 2 * min <= max: a step near 2^63 in a file must not overflow.)
    if (last_a > 0 && last_b > 0 && std::min(last_a, last_b) <= std::max(last_a, last_b) / 2) {
        const bool a_shorter = last_a < last_b;
        report.warnings.push_back(concat(a_shorter ? "A" : "B", " is much shorter than ", a_shorter ? "B" : "A",
                                         ": its last step is ", std::min(last_a, last_b), ", ", a_shorter ? "B" : "A",
                                         "'s is ", std::max(last_a, last_b), "; the steps after ",
                                         std::min(last_a, last_b), " are not compared"));
    }

    if (report.shared_steps == 0) {
        report.insufficient_coverage = concat("A and B share no (kind, step): A has ", holdings(a), "; B has ",
                                              holdings(b));
    } else if (report.fields_compared.empty()) {
        report.insufficient_coverage = concat(
            "the ", report.shared_steps, " shared step(s) have none of the compared fields (", join(fields),
            ") on both sides",
            report.other_shared_fields.empty() ? std::string("")
                                               : concat("; both sides have ", join(report.other_shared_fields),
                                                        ": name them with --fields"));
    }
    return report;
}

RunDiffReport diff_run_files(const std::string& path_a, const std::string& path_b, const RunDiffOptions& options) {
    const RunMetrics a = read_run_metrics(path_a);
    const RunMetrics b = read_run_metrics(path_b);
    return diff_runs(a, b, options);
}

std::string format_run_diff_report(const RunDiffReport& report, bool all) {
    std::string out;
    out += "A: " + report.path_a + "\nB: " + report.path_b + "\n";

    // The tolerance of each compared field, from its first comparison (they differ only for a field that
    // is an integer on some lines and not on others).
    std::vector<std::string> tolerances;
    for (const std::string& f : report.fields_compared) {
        for (const StepDiff& s : report.steps) {
            auto d = std::find_if(s.fields.begin(), s.fields.end(), [&](const FieldDiff& x) { return x.field == f; });
            if (d == s.fields.end()) continue;
            tolerances.push_back(f + " " + tolerance_text(d->rtol));
            break;
        }
    }
    if (!tolerances.empty()) {
        out += "pairs lines by (kind, step); a field passes when |a-b| / max(|a|,|b|) <= rtol: " + join(tolerances) + "\n";
    }

    std::set<std::string> kinds;
    for (const StepDiff& s : report.steps) {
        if (!s.fields.empty()) kinds.insert(s.kind);
    }
    const bool show_kind = kinds.size() > 1 || (kinds.size() == 1 && *kinds.begin() != "train");
    const int64_t first = report.first_difference();
    const int64_t rows = static_cast<int64_t>(report.steps.size());
    if (rows > 0) {
        const int64_t last_row = all || first < 0 ? rows - 1 : first;
        const int64_t first_row = all ? 0 : std::max<int64_t>(0, last_row - 19);
        std::vector<int> widths;
        std::string header = "   step";
        if (show_kind) header += "  kind  ";
        for (const std::string& f : report.fields_compared) {
            const int w = std::max<int>(12, static_cast<int>(f.size()) + 2);
            widths.push_back(w);
            header += concat("  ", std::string(w - f.size() - 2, ' '), f, " A", std::string(1, ' '));
            header += concat(std::string(w - f.size() - 2, ' '), f, " B", "      rel");
        }
        out += header + "  status\n";
        if (first_row > 0) {
            out += concat("      ... ", first_row, " earlier step(s) within tolerance, not listed (--all lists every one)\n");
        }
        char cell[64];
        for (int64_t i = first_row; i <= last_row; ++i) {
            const StepDiff& s = report.steps[i];
            std::snprintf(cell, sizeof cell, "%7" PRId64, s.step);
            std::string line = cell;
            if (show_kind) {
                std::snprintf(cell, sizeof cell, "  %-6s", s.kind.c_str());
                line += cell;
            }
            std::vector<std::string> failing;
            for (size_t k = 0; k < report.fields_compared.size(); ++k) {
                auto d = std::find_if(s.fields.begin(), s.fields.end(),
                                      [&](const FieldDiff& x) { return x.field == report.fields_compared[k]; });
                const int w = widths[k];
                if (d == s.fields.end()) {
                    std::snprintf(cell, sizeof cell, "  %*s %*s %8s", w, "-", w, "-", "-");
                } else {
                    std::snprintf(cell, sizeof cell, "  %*s %*s %8s", w, value_text(d->a, "%.7g").c_str(), w,
                                  value_text(d->b, "%.7g").c_str(), rel_text(d->rel).c_str());
                    if (!d->ok()) failing.push_back(d->field);
                }
                line += cell;
            }
            if (s.skipped_differs()) {
                failing.push_back(concat("skipped (A ", s.skipped_a ? "true" : "false", ", B ", s.skipped_b ? "true" : "false",
                                         ")"));
            }
            line += failing.empty() ? (s.skipped_a ? "  ok (skipped on both)" : "  ok") : "  DIFFERS: " + join(failing);
            out += line + "\n";
        }
        if (last_row + 1 < rows) {
            out += concat("      ... ", rows - last_row - 1, " later step(s) not listed, ", report.difference_count() - 1,
                          " of them differ (--all lists every one)\n");
        }
    }

    auto list_one_sided = [&](const std::vector<StepRange>& ranges, const char* side) {
        for (size_t i = 0; i < ranges.size();) {
            size_t j = i;
            while (j < ranges.size() && ranges[j].kind == ranges[i].kind) ++j;
            out += "only in " + std::string(side) + ": " +
                   ranges_text(std::vector<StepRange>(ranges.begin() + i, ranges.begin() + j)) + "\n";
            i = j;
        }
    };
    list_one_sided(report.only_in_a, "A");
    list_one_sided(report.only_in_b, "B");
    if (!report.other_shared_fields.empty()) {
        out += "also on both sides, not compared: " + join(report.other_shared_fields) + " (--fields names them)\n";
    }
    for (const std::string& w : report.warnings) out += "warning: " + w + "\n";

    const int64_t compared = std::count_if(report.steps.begin(), report.steps.end(),
                                           [](const StepDiff& s) { return !s.fields.empty(); });
    // A field that only some compared steps have says on how many, so "compared 20 steps" claims no more.
    std::vector<std::string> field_coverage;
    for (size_t k = 0; k < report.fields_compared.size(); ++k) {
        const int64_t n = report.field_comparisons[k];
        field_coverage.push_back(n < compared ? concat(report.fields_compared[k], " (on ", n, ")")
                                              : report.fields_compared[k]);
    }
    out += concat("compared ", compared, " of ", report.shared_steps, " shared step(s) on ",
                  field_coverage.empty() ? std::string("no field") : join(field_coverage), ": ",
                  report.difference_count(), " differ beyond tolerance; ", report.only_in_a_count, " only in A, ",
                  report.only_in_b_count, " only in B\n");
    if (first >= 0) {
        const StepDiff& s = report.steps[first];
        std::string where = concat("step ", s.step, s.kind == "train" ? "" : " (" + s.kind + ")");
        out += "first step that differs: " + where;
        const FieldDiff* f = s.first_failing_field();
        if (f) {
            out += concat(", ", f->field, " A=", value_text(f->a), " B=", value_text(f->b), " (rel ", rel_text(f->rel),
                          " > rtol ", tolerance_text(f->rtol), ")");
        }
        std::vector<std::string> also;
        for (const FieldDiff& d : s.fields) {
            if (!d.ok() && &d != f) also.push_back(concat(d.field, " (rel ", rel_text(d.rel), ")"));
        }
        if (s.skipped_differs()) {
            also.push_back(concat("skipped A=", s.skipped_a ? "true" : "false", " B=", s.skipped_b ? "true" : "false"));
        }
        if (!also.empty()) out += (f ? "; also " : ", ") + join(also);
        out += concat(" [A line ", s.line_a, ", B line ", s.line_b, "]\n");
    } else if (!report.insufficient_coverage.empty()) {
        out += "insufficient coverage: " + report.insufficient_coverage + "\n";
    } else {
        out += concat("no step differs beyond tolerance over ", compared, " step(s) (fields: ", join(report.fields_compared),
                      ")\n");
    }
    return out;
}

}  // namespace reftrain
