// tests/test_run_diff.cpp — debug/run_diff.h on small synthetic metrics files: pairing by (kind, step),
// the per-field tolerances, the first step that differs, "skipped" on one side, one-sided steps, the
// coverage verdict, malformed input named by file and line, and run directories vs file paths.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "debug/run_diff.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;
using json = nlohmann::json;
namespace fs = std::filesystem;

// A "train" line as Trainer::run writes it (timing differs from run to run, as in real files).
json train_line(int64_t step, double loss, double grad_norm, double lr) {
    return json{{"kind", "train"}, {"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                {"tokens", 1024}, {"supervised_tokens", 171}, {"seconds", 0.05 + 0.001 * step}};
}

// Steps 1..n of a smoothly falling loss, grad norm and a warmup lr.
std::vector<json> smooth_run(int64_t n) {
    std::vector<json> lines;
    for (int64_t s = 1; s <= n; ++s) lines.push_back(train_line(s, 5.8 / std::sqrt(s), 7.0 / s, 1e-5 * s));
    return lines;
}

std::string jsonl(const std::vector<json>& lines) {
    std::string out;
    for (const json& line : lines) out += line.dump() + "\n";
    return out;
}

RunDiffReport diff(const std::vector<json>& a, const std::vector<json>& b, const RunDiffOptions& options = {}) {
    return diff_runs(parse_run_metrics(jsonl(a), "a.jsonl"), parse_run_metrics(jsonl(b), "b.jsonl"), options);
}

// The last line of a report: the verdict.
std::string verdict(const RunDiffReport& report) {
    std::string text = format_run_diff_report(report, false);
    text.pop_back();
    return text.substr(text.rfind('\n') + 1);
}

TEST(RunDiff, IdenticalRunsPassOnTheFieldsBothHave) {
    std::vector<json> a = smooth_run(10), b = smooth_run(10);
    for (json& line : b) line["seconds"] = 9.0;  // timing is never compared
    RunDiffReport report = diff(a, b);
    EXPECT_EQ(report.shared_steps, 10);
    EXPECT_EQ(report.steps.size(), 10u);
    EXPECT_EQ(report.first_difference(), -1);
    EXPECT_EQ(report.exit_status(), 0);
    // loss_scale (fp32 runs have none) is not compared and not warned about.
    EXPECT_EQ(report.fields_compared, (std::vector<std::string>{"loss", "grad_norm", "lr"}));
    EXPECT_EQ(report.fields_not_compared, std::vector<std::string>{"loss_scale"});
    EXPECT_TRUE(report.warnings.empty()) << report.warnings[0];
    EXPECT_EQ(report.other_shared_fields, (std::vector<std::string>{"supervised_tokens", "tokens"}));
    EXPECT_EQ(verdict(report), "no step differs beyond tolerance over 10 step(s) (fields: loss, grad_norm, lr)");
}

TEST(RunDiff, LossDriftAtStep7IsNamedAtStep7NotAtAnEarlierStepWithinTolerance) {
    std::vector<json> a = smooth_run(10), b = smooth_run(10);
    b[2]["loss"] = a[2]["loss"].get<double>() * (1 + 5e-5);  // step 3: rel 5e-5, within 1e-4
    for (int64_t s = 7; s <= 10; ++s) b[s - 1]["loss"] = a[s - 1]["loss"].get<double>() * (1 + 1e-3);
    RunDiffReport report = diff(a, b);
    ASSERT_EQ(report.first_difference(), 6);
    EXPECT_EQ(report.steps[6].step, 7);
    EXPECT_EQ(report.difference_count(), 4);
    EXPECT_EQ(report.exit_status(), 1);
    const FieldDiff* field = report.steps[6].first_failing_field();
    ASSERT_NE(field, nullptr);
    EXPECT_EQ(field->field, "loss");
    EXPECT_NEAR(field->rel, 1e-3 / (1 + 1e-3), 1e-9);
    EXPECT_NEAR(report.steps[2].fields[0].rel, 5e-5 / (1 + 5e-5), 1e-12);
    EXPECT_TRUE(report.steps[2].ok());
    expect_contains(verdict(report), {"first step that differs: step 7, loss A=2.19219394 B=2.194386", "(rel 9.99e-04 > rtol 1e-04)",
                                      "[A line 7, B line 7]"});
    // The table stops at the first difference; --all lists the steps after it.
    const std::string text = format_run_diff_report(report, false);
    EXPECT_NE(text.find("\n      7 "), std::string::npos) << text;
    EXPECT_EQ(text.find("\n      8 "), std::string::npos) << text;
    expect_contains(text, {"3 later step(s) not listed, 3 of them differ"});
    EXPECT_NE(format_run_diff_report(report, true).find("\n     10 "), std::string::npos);

    // A tighter tolerance finds step 3's difference: it was there, only within 1e-4.
    RunDiffOptions tight;
    tight.rtol = 1e-5;
    EXPECT_EQ(diff(a, b, tight).steps[diff(a, b, tight).first_difference()].step, 3);
    // A looser one for loss alone passes the run.
    RunDiffOptions loose;
    loose.field_rtol["loss"] = 2e-3;
    EXPECT_EQ(diff(a, b, loose).exit_status(), 0);
}

TEST(RunDiff, LrIsComparedAtItsOwnTighterTolerance) {
    std::vector<json> a = smooth_run(5), b = smooth_run(5);
    // rel 1e-7: within loss's 1e-4, over lr's 1e-9 (an fp32 schedule against our fp64 one).
    b[1]["lr"] = a[1]["lr"].get<double>() * (1 + 1e-7);
    RunDiffReport report = diff(a, b);
    ASSERT_EQ(report.first_difference(), 1);
    EXPECT_EQ(report.steps[1].first_failing_field()->field, "lr");
    EXPECT_DOUBLE_EQ(report.steps[1].first_failing_field()->rtol, 1e-9);
    expect_contains(verdict(report), {"first step that differs: step 2, lr A=2e-05 B=2.0000002e-05", "rtol 1e-09"});
    b = smooth_run(5);
    b[1]["loss"] = a[1]["loss"].get<double>() * (1 + 1e-7);
    EXPECT_EQ(diff(a, b).exit_status(), 0);
}

TEST(RunDiff, LossScaleIsExactAndNullEqualsOnlyNull) {
    std::vector<json> a = smooth_run(4), b = smooth_run(4);
    for (size_t i = 0; i < 4; ++i) a[i]["loss_scale"] = b[i]["loss_scale"] = 65536.0;
    a[1]["grad_norm"] = b[1]["grad_norm"] = nullptr;  // the same non-finite norm on both sides
    EXPECT_EQ(diff(a, b).exit_status(), 0);
    b[3]["loss_scale"] = 32768.0;
    RunDiffReport halved = diff(a, b);
    ASSERT_EQ(halved.first_difference(), 3);
    EXPECT_EQ(halved.steps[3].first_failing_field()->field, "loss_scale");
    b = a;
    b[2]["grad_norm"] = nullptr;
    RunDiffReport one_null = diff(a, b);
    ASSERT_EQ(one_null.first_difference(), 2);
    EXPECT_TRUE(std::isinf(one_null.steps[2].first_failing_field()->rel));
    expect_contains(verdict(one_null), {"grad_norm A=2.33333333 B=null (rel inf"});
}

TEST(RunDiff, SkippedOnOneSideOnlyIsADifference) {
    std::vector<json> a = smooth_run(6), b = smooth_run(6);
    a[4]["grad_norm"] = b[4]["grad_norm"] = nullptr;  // every compared field equal at step 5
    a[4]["skipped"] = true;
    RunDiffReport report = diff(a, b);
    ASSERT_EQ(report.first_difference(), 4);
    EXPECT_TRUE(report.steps[4].skipped_differs());
    EXPECT_EQ(report.steps[4].first_failing_field(), nullptr);
    EXPECT_EQ(report.exit_status(), 1);
    expect_contains(verdict(report), {"first step that differs: step 5, skipped A=true B=false"});
    b[4]["skipped"] = true;  // skipped on both sides: the same run
    EXPECT_EQ(diff(a, b).exit_status(), 0);
    b[4]["skipped"] = "yes";
    expect_error([&] { diff(a, b); }, {"b.jsonl line 5", "\"skipped\"", "\"yes\"", "expected true or false"});
}

TEST(RunDiff, StepsOnOneSideAreReportedAsRangesAndAMuchShorterRunWarns) {
    std::vector<json> a = smooth_run(200), b = smooth_run(100);
    a.erase(a.begin() + 49);  // step 50 only in B
    RunDiffReport report = diff(a, b);
    EXPECT_EQ(report.exit_status(), 0);
    EXPECT_EQ(report.shared_steps, 99);
    ASSERT_EQ(report.only_in_a.size(), 1u);
    EXPECT_EQ(report.only_in_a[0].first, 101);
    EXPECT_EQ(report.only_in_a[0].last, 200);
    EXPECT_EQ(report.only_in_a_count, 100);
    ASSERT_EQ(report.only_in_b.size(), 1u);
    EXPECT_EQ(report.only_in_b[0].first, 50);
    EXPECT_EQ(report.only_in_b_count, 1);
    ASSERT_EQ(report.warnings.size(), 1u);
    expect_contains(report.warnings[0], {"B is much shorter than A: its last step is 100, A's is 200"});
    const std::string text = format_run_diff_report(report, false);
    expect_contains(text, {"only in A: train steps 101-200 (100 lines)\n", "only in B: train step 50 (1 line)\n",
                           "compared 99 of 99 shared step(s)", "100 only in A, 1 only in B",
                           "no step differs beyond tolerance over 99 step(s)"});
    // A run logged every 10 steps against one logged every step: sparse, not shorter.
    std::vector<json> sparse;
    for (const json& line : smooth_run(200)) {
        if (line["step"].get<int64_t>() % 10 == 0) sparse.push_back(line);
    }
    RunDiffReport every_tenth = diff(a, sparse);
    EXPECT_TRUE(every_tenth.warnings.empty());
    EXPECT_EQ(every_tenth.shared_steps, 19);  // step 50 is in neither
    expect_contains(format_run_diff_report(every_tenth, false), {"only in A: train steps 1-9, 11-19, 21-29, 31-39, 41-49, "
                                                                 "51-59, ... (14 more ranges) (180 lines)"});
}

TEST(RunDiff, NoSharedStepOrNoSharedFieldIsInsufficientCoverage) {
    std::vector<json> a = smooth_run(20);
    std::vector<json> b(a.begin() + 10, a.end()), first(a.begin(), a.begin() + 10);
    RunDiffReport disjoint = diff(first, b);
    EXPECT_EQ(disjoint.shared_steps, 0);
    EXPECT_EQ(disjoint.exit_status(), 3);
    ASSERT_EQ(disjoint.warnings.size(), 1u);  // A is much shorter; no per-field noise on top of the verdict
    expect_contains(disjoint.warnings[0], {"A is much shorter than B"});
    EXPECT_EQ(verdict(disjoint), "insufficient coverage: A and B share no (kind, step): A has 10 train steps (1-10); "
                                 "B has 10 train steps (11-20)");
    // Shared steps, but B logs none of the compared fields: nothing is said to be the same.
    std::vector<json> counts_only;
    for (int64_t s = 1; s <= 10; ++s) counts_only.push_back(json{{"step", s}, {"tokens", 1024}});
    RunDiffReport no_field = diff(first, counts_only);
    EXPECT_EQ(no_field.shared_steps, 10);
    EXPECT_EQ(no_field.exit_status(), 3);
    expect_contains(verdict(no_field), {"insufficient coverage: the 10 shared step(s) have none of the compared fields",
                                        "both sides have tokens: name them with --fields"});
    // Named with --fields, the counts compare (exactly: both are integers).
    RunDiffOptions tokens;
    tokens.fields = {"tokens"};
    RunDiffReport counted = diff(first, counts_only, tokens);
    EXPECT_EQ(counted.exit_status(), 0);
    EXPECT_DOUBLE_EQ(counted.steps[0].fields[0].rtol, 0.0);
    counts_only[3]["tokens"] = 1023;
    EXPECT_EQ(diff(first, counts_only, tokens).first_difference(), 3);
}

TEST(RunDiff, MalformedInputIsAnErrorNamingTheFileTheLineAndTheField) {
    const std::string good = jsonl(smooth_run(2));
    expect_error([&] { parse_run_metrics(good + "{\"step\": 3, \"loss\": }\n", "runs/x/metrics.jsonl"); },
                 {"runs/x/metrics.jsonl line 3, column", "not valid JSON"});
    expect_error([&] { parse_run_metrics(good + "{\"step\": 3, \"lo", "m.jsonl"); },
                 {"m.jsonl line 3", "no newline: is the run still writing it?"});
    expect_error([&] { parse_run_metrics("{\"loss\": 5.8}\n", "m.jsonl"); }, {"m.jsonl line 1: no \"step\""});
    expect_error([&] { parse_run_metrics("\n[1, 2]\n", "m.jsonl"); }, {"m.jsonl line 2: expected a JSON object"});
    expect_error([&] { parse_run_metrics("{\"step\": 1.5}\n", "m.jsonl"); }, {"m.jsonl line 1: \"step\" is 1.5"});
    expect_error([&] { parse_run_metrics("{\"step\": 1, \"loss\": 1, \"loss\": 2}\n", "m.jsonl"); },
                 {"m.jsonl line 1: key \"loss\" appears twice"});
    expect_error([&] { parse_run_metrics("{\"step\": 1, \"kind\": 7}\n", "m.jsonl"); }, {"m.jsonl line 1: \"kind\" is 7"});
    // A compared field that is not a number, on a shared step or not.
    std::vector<json> a = smooth_run(3), b = smooth_run(3);
    b[1]["loss"] = "5.8";
    expect_error([&] { diff(a, b); }, {"b.jsonl line 2: field \"loss\" is \"5.8\" (string), expected a number"});
    b = smooth_run(3);
    a.push_back(train_line(4, 1.0, 1.0, 1.0));
    a[3]["grad_norm"] = true;
    expect_error([&] { diff(a, b); }, {"a.jsonl line 4: field \"grad_norm\" is true"});
    // Fields that may not be compared.
    RunDiffOptions timing;
    timing.fields = {"loss", "seconds"};
    expect_error([&] { diff(smooth_run(2), smooth_run(2), timing); }, {"'seconds'", "timing, which is never compared"});
    EXPECT_FALSE(compared_field_problem("update_seconds").empty());
    EXPECT_FALSE(compared_field_problem("step").empty());
    EXPECT_TRUE(compared_field_problem("val_loss").empty());
}

TEST(RunDiff, ReadsARunDirectoryOrAFilePath) {
    const fs::path dir = scratch_dir("run_diff_" + current_test_name());
    fs::create_directories(dir / "run");
    std::ofstream(dir / "run" / "metrics.jsonl") << jsonl(smooth_run(5));
    std::ofstream(dir / "port.jsonl") << jsonl(smooth_run(5));
    EXPECT_EQ(resolve_metrics_path((dir / "run").string()), (dir / "run" / "metrics.jsonl").string());
    EXPECT_EQ(resolve_metrics_path((dir / "port.jsonl").string()), (dir / "port.jsonl").string());
    RunDiffReport report = diff_run_files((dir / "run").string(), (dir / "port.jsonl").string());
    EXPECT_EQ(report.path_a, (dir / "run" / "metrics.jsonl").string());
    EXPECT_EQ(report.shared_steps, 5);
    EXPECT_EQ(report.exit_status(), 0);

    expect_error([&] { read_run_metrics((dir / "absent").string()); }, {"absent: no such run directory or metrics file"});
    fs::create_directories(dir / "empty_run");
    expect_error([&] { read_run_metrics((dir / "empty_run").string()); },
                 {"empty_run: a directory without metrics.jsonl"});
    std::ofstream(dir / "bad.jsonl") << "{\"step\": 1}\nnot json\n";
    expect_error([&] { read_run_metrics((dir / "bad.jsonl").string()); }, {"bad.jsonl line 2, column", "not valid JSON"});
}

TEST(RunDiff, PairsByKindAndStepInALinesOrder) {
    std::vector<json> a = smooth_run(4), b = smooth_run(4);
    // An eval line at step 2 with a loss of its own: paired with B's eval line, not with train step 2.
    a.insert(a.begin() + 2, json{{"kind", "eval"}, {"step", 2}, {"loss", 3.0}, {"val_tokens", 10}});
    b.push_back(json{{"kind", "eval"}, {"step", 2}, {"loss", 3.5}, {"val_tokens", 10}});
    RunDiffReport report = diff(a, b);
    ASSERT_EQ(report.steps.size(), 5u);
    EXPECT_EQ(report.steps[2].kind, "eval");  // after train step 2, as in A's file
    EXPECT_EQ(report.field_comparisons, (std::vector<int64_t>{5, 4, 4}));  // loss, grad_norm, lr
    expect_contains(format_run_diff_report(report, false), {"compared 5 of 5 shared step(s) on loss, grad_norm (on 4), "
                                                            "lr (on 4)"});
    ASSERT_EQ(report.first_difference(), 2);
    expect_contains(verdict(report), {"first step that differs: step 2 (eval), loss A=3 B=3.5"});
    // A line without "kind" is a train line.
    json plain = a[0];
    plain.erase("kind");
    EXPECT_EQ(diff(std::vector<json>{plain}, std::vector<json>{a[0]}).exit_status(), 0);
}

TEST(RunDiff, AResumedRunsRepeatedStepsCompareTheirLastLine) {
    std::vector<json> b = smooth_run(6), a = b;
    // A crashed after step 5, resumed from its step-3 checkpoint, and logged steps 4-6 again.
    a.insert(a.begin() + 5, train_line(4, 99.0, 1.0, 1.0));
    a.insert(a.begin() + 6, train_line(5, 99.0, 1.0, 1.0));
    std::swap(a[3], a[5]);  // file order: 1 2 3 4' 5' 4 5 6 with 4', 5' the lost ones
    std::swap(a[4], a[6]);
    RunDiffReport report = diff(a, b);
    EXPECT_EQ(report.exit_status(), 0);
    EXPECT_EQ(report.shared_steps, 6);
    ASSERT_EQ(report.warnings.size(), 1u);
    expect_contains(report.warnings[0], {"A: train step(s) 4-5 appear on more than one line", "the last line of each"});
}

TEST(RunDiff, PpoLinesWithoutStepAreIndexedByUpdate) {
    auto ppo_line = [](int64_t update, double grad_norm) {
        return json{{"update", update}, {"learning_rate", 2.5e-4}, {"policy_loss", -0.01}, {"grad_norm", grad_norm},
                    {"seconds", 0.1}};
    };
    RunMetrics a = parse_run_metrics(jsonl(std::vector<json>{ppo_line(1, 0.5), ppo_line(2, 0.4)}), "a.jsonl");
    EXPECT_TRUE(a.indexed_by_update);
    EXPECT_EQ(a.records[1].step, 2);
    RunMetrics b = parse_run_metrics(jsonl(std::vector<json>{ppo_line(1, 0.5), ppo_line(2, 0.41)}), "b.jsonl");
    RunDiffReport report = diff_runs(a, b);
    EXPECT_EQ(report.fields_compared, std::vector<std::string>{"grad_norm"});
    EXPECT_EQ(report.other_shared_fields, (std::vector<std::string>{"learning_rate", "policy_loss"}));
    ASSERT_EQ(report.first_difference(), 1);
    EXPECT_EQ(report.steps[1].step, 2);
}

}  // namespace
}  // namespace reftrain
