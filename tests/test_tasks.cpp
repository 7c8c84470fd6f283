// tests/test_tasks.cpp — data/tasks.h: every toy task's examples verify, wrong answers and malformed
// prompts do not, generation is deterministic by seed, the train/val/test splits are disjoint with
// ~80/10/10 fractions, and bad requests (options, impossible unique counts) fail naming the problem.
#include <algorithm>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/tasks.h"
#include "kernels/error.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;

using json = nlohmann::json;

// The answer with its last character changed to another of the same kind (digit or letter), so the
// result still looks like an answer but is wrong.
std::string corrupt(std::string answer) {
    char& last = answer.back();
    if (last >= '0' && last <= '9') {
        last = static_cast<char>('0' + (last - '0' + 1) % 10);
    } else {
        last = static_cast<char>('a' + (last - 'a' + 1) % 26);
    }
    return answer;
}

TEST(TaskTest, EveryTaskNameIsMadeAndReportsItsName) {
    ASSERT_EQ(task_names().size(), 6u);
    for (const std::string& name : task_names()) EXPECT_EQ(make_task(name)->name(), name);
    expect_error([] { make_task("subtraction"); }, {"'subtraction'", "addition", "kv_recall"});
}

TEST(TaskTest, GeneratedExamplesVerifyAndWrongAnswersDoNot) {
    for (const std::string& name : task_names()) {
        SCOPED_TRACE("task " + name);
        auto task = make_task(name);
        Rng rng(7);
        for (int i = 0; i < 500; ++i) {
            const TaskExample example = task->generate(rng);
            ASSERT_FALSE(example.answer.empty()) << example.prompt;
            EXPECT_TRUE(task->verify(example.prompt, example.answer)) << example.prompt << " -> " << example.answer;
            // Surrounding whitespace of a sampled response is ignored, inner text is not.
            EXPECT_TRUE(task->verify(example.prompt, "  " + example.answer + "\n"));
            EXPECT_FALSE(task->verify(example.prompt, corrupt(example.answer))) << example.prompt;
            EXPECT_FALSE(task->verify(example.prompt, "")) << example.prompt;
            EXPECT_FALSE(task->verify(example.prompt, example.answer + example.answer)) << example.prompt;
        }
    }
}

TEST(TaskTest, DocumentedExamplesHaveTheDocumentedAnswers) {
    EXPECT_TRUE(make_task("addition")->verify("37+48", "85"));
    EXPECT_FALSE(make_task("addition")->verify("37+48", "86"));
    EXPECT_FALSE(make_task("addition")->verify("37+48", "085"));
    EXPECT_TRUE(make_task("addition")->verify("0+0", "0"));
    EXPECT_TRUE(make_task("reversal")->verify("reverse abcde", "edcba"));
    EXPECT_FALSE(make_task("reversal")->verify("reverse abcde", "abcde"));
    EXPECT_TRUE(make_task("copy")->verify("copy abcde", "abcde"));
    EXPECT_FALSE(make_task("copy")->verify("copy abcde", "edcba"));
    EXPECT_TRUE(make_task("sorting")->verify("sort 5 2 9 1", "1 2 5 9"));
    EXPECT_TRUE(make_task("sorting")->verify("sort 3 3 0", "0 3 3"));
    EXPECT_FALSE(make_task("sorting")->verify("sort 5 2 9 1", "1 2 9 5"));
    EXPECT_TRUE(make_task("modular")->verify("17*5 mod 23", "16"));
    EXPECT_TRUE(make_task("modular")->verify("3-5 mod 23", "21"));  // the representative in [0, 23)
    EXPECT_TRUE(make_task("modular")->verify("20+9 mod 23", "6"));
    EXPECT_FALSE(make_task("modular")->verify("3-5 mod 23", "-2"));
    EXPECT_TRUE(make_task("kv_recall")->verify("a=3 b=7 c=1 d=0 ? b", "7"));
    EXPECT_FALSE(make_task("kv_recall")->verify("a=3 b=7 c=1 d=0 ? b", "3"));
    EXPECT_TRUE(make_task("kv_recall", {{"pairs", 1}})->verify("q=5 ? q", "5"));
}

TEST(TaskTest, GeneratorsRespectTheirOptions) {
    // Addition draws the digit count first: both 1- and 3-digit operands appear, nothing longer.
    auto addition = make_task("addition", {{"min_digits", 1}, {"max_digits", 3}});
    std::set<size_t> lengths;
    Rng rng(3);
    for (int i = 0; i < 300; ++i) {
        const std::string prompt = addition->generate(rng).prompt;
        lengths.insert(prompt.find('+'));
    }
    EXPECT_EQ(lengths, (std::set<size_t>{1, 2, 3}));

    auto modular = make_task("modular", {{"modulus", 7}});
    std::set<char> ops;
    for (int i = 0; i < 300; ++i) {
        const std::string prompt = modular->generate(rng).prompt;
        ops.insert(prompt[prompt.find_first_of("+-*")]);
        EXPECT_EQ(prompt.substr(prompt.size() - 6), " mod 7");
    }
    EXPECT_EQ(ops, (std::set<char>{'+', '-', '*'}));

    auto kv = make_task("kv_recall", {{"pairs", 26}});  // every letter is a key exactly once
    const std::string prompt = kv->generate(rng).prompt;
    std::set<char> keys;
    for (size_t i = 0; i < 26; ++i) keys.insert(prompt[4 * i]);
    EXPECT_EQ(keys.size(), 26u) << prompt;
}

TEST(TaskTest, VerifyRefusesPromptsTheTaskCannotProduce) {
    const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
        {"addition", {"37-48", "037+48", "37+", "+48", "123+4", "37+48 ", "a+b", "3+4+5", ""}},
        {"reversal", {"reverse ", "reverse ABC", "reverse ab", "reverse abcdefghi", "copy abc", "reverse  abc",
                      "reverseabc"}},
        {"copy", {"reverse abc", "copy a1c", "copy"}},
        {"sorting", {"sort 1 2", "sort 1  2 3", "sort 1 2 10", "sort 01 2 3", "order 1 2 3", "sort 1 2 3 "}},
        {"modular", {"17*5 mod 22", "23+1 mod 23", "17/5 mod 23", "17*5", "-1+2 mod 23", "1+ mod 23"}},
        {"kv_recall", {"a=3 b=7 c=1 ? b", "a=3 a=7 c=1 d=2 ? a", "a=3 b=7 c=1 d=2 ? e", "a=3 b=17 c=1 d=2 ? a",
                       "A=3 b=7 c=1 d=2 ? b", "a=3 b=7 c=1 d=2 b", "a=3 b=7 c=1 d=2 ? "}},
    };
    for (const auto& [name, prompts] : cases) {
        auto task = make_task(name);
        for (const std::string& prompt : prompts) {
            SCOPED_TRACE("task " + name + ", prompt '" + prompt + "'");
            expect_error([&] { task->verify(prompt, "1"); }, {"task " + name, "'" + prompt + "'", "expected"});
        }
    }
}

TEST(TaskTest, SameSeedSameExamplesOtherSeedOthers) {
    for (const std::string& name : task_names()) {
        SCOPED_TRACE("task " + name);
        auto task = make_task(name);
        auto draw = [&](uint64_t seed) {
            Rng rng(seed);
            std::vector<std::string> prompts;
            for (int i = 0; i < 50; ++i) prompts.push_back(task->generate(rng).prompt);
            return prompts;
        };
        EXPECT_EQ(draw(11), draw(11));
        EXPECT_NE(draw(11), draw(12));

        auto prompts_of = [](const std::vector<TaskExample>& examples) {
            std::vector<std::string> prompts;
            for (const TaskExample& e : examples) prompts.push_back(e.prompt);
            return prompts;
        };
        EXPECT_EQ(prompts_of(generate_split(*task, Split::val, 40, 5)),
                  prompts_of(generate_split(*task, Split::val, 40, 5)));
        EXPECT_NE(prompts_of(generate_split(*task, Split::val, 40, 5)),
                  prompts_of(generate_split(*task, Split::val, 40, 6)));
    }
}

TEST(TaskTest, SplitsAreDisjointAndEachExampleIsInItsSplit) {
    auto task = make_task("addition", {{"min_digits", 2}, {"max_digits", 2}});
    const auto train = generate_split(*task, Split::train, 3000, 1);
    const auto val = generate_split(*task, Split::val, 400, 1);
    const auto test = generate_split(*task, Split::test, 400, 1);
    ASSERT_EQ(train.size(), 3000u);
    ASSERT_EQ(val.size(), 400u);
    ASSERT_EQ(test.size(), 400u);
    for (const auto& e : train) EXPECT_EQ(split_of(e.prompt), Split::train) << e.prompt;
    for (const auto& e : val) EXPECT_EQ(split_of(e.prompt), Split::val) << e.prompt;
    for (const auto& e : test) EXPECT_EQ(split_of(e.prompt), Split::test) << e.prompt;
    for (const auto& e : val) EXPECT_TRUE(task->verify(e.prompt, e.answer)) << e.prompt;
    EXPECT_NO_THROW(check_disjoint(train, val));
    EXPECT_NO_THROW(check_disjoint(train, test));
    EXPECT_NO_THROW(check_disjoint(val, test));

    // A leak is caught and named: a training problem slipped into the test set.
    auto leaky_test = test;
    leaky_test.insert(leaky_test.begin() + 7, train[42]);
    expect_error([&] { check_disjoint(train, leaky_test); }, {"'" + train[42].prompt + "'", "both"});
}

TEST(TaskTest, SplitFractionsAreRoughly80_10_10) {
    // Over all 8100 problems with two-digit operands; the split is a hash, so only roughly 80/10/10
    // (one binomial standard deviation is ~0.3% here; the bounds allow ~4).
    auto task = make_task("addition", {{"min_digits", 2}, {"max_digits", 2}});
    ASSERT_EQ(task->problem_count(), 8100);
    int64_t counts[3] = {0, 0, 0};
    for (int a = 10; a < 100; ++a) {
        for (int b = 10; b < 100; ++b) {
            ++counts[static_cast<int>(split_of(std::to_string(a) + "+" + std::to_string(b)))];
        }
    }
    EXPECT_NEAR(counts[0] / 8100.0, 0.80, 0.015);
    EXPECT_NEAR(counts[1] / 8100.0, 0.10, 0.012);
    EXPECT_NEAR(counts[2] / 8100.0, 0.10, 0.012);
}

TEST(TaskTest, UniqueGenerationExhaustsASplitExactlyAndFailsBeyondIt) {
    auto task = make_task("addition", {{"min_digits", 2}, {"max_digits", 2}});
    std::set<std::string> val_problems;
    for (int a = 10; a < 100; ++a) {
        for (int b = 10; b < 100; ++b) {
            const std::string prompt = std::to_string(a) + "+" + std::to_string(b);
            if (split_of(prompt) == Split::val) val_problems.insert(prompt);
        }
    }
    const auto held = static_cast<int64_t>(val_problems.size());

    // Asking for exactly all of them yields exactly that set, no repeats.
    const auto all = generate_split(*task, Split::val, held, 3, /*unique=*/true);
    std::set<std::string> got;
    for (const auto& e : all) got.insert(e.prompt);
    EXPECT_EQ(static_cast<int64_t>(all.size()), held);
    EXPECT_EQ(got, val_problems);

    // One more cannot exist: the error says how many were found and what was asked.
    expect_error([&] { generate_split(*task, Split::val, held + 1, 3, true); },
                 {"addition", "val", "found only " + std::to_string(held), std::to_string(held + 1)});
    // More than the whole task holds fails at once, before any drawing.
    expect_error([&] { generate_split(*task, Split::train, 8101, 3, true); }, {"8101", "only 8100"});
    // Repeats are fine when not unique.
    EXPECT_EQ(generate_split(*task, Split::val, held + 1, 3).size(), static_cast<size_t>(held + 1));
}

TEST(TaskTest, ASmallSplitRunsOutWithAnErrorInsteadOfSpinning) {
    // Copy of one letter: 26 problems, of which the test split holds only a handful (maybe none).
    auto task = make_task("copy", {{"min_len", 1}, {"max_len", 1}});
    EXPECT_EQ(task->problem_count(), 26);
    int64_t held = 0;
    for (char c = 'a'; c <= 'z'; ++c) held += split_of(std::string("copy ") + c) == Split::test;
    ASSERT_LT(held, 20);
    expect_error([&] { generate_split(*task, Split::test, held + 1, 1, true); },
                 {"copy", "test", "found only " + std::to_string(held)});
    if (held == 0) {  // a split with no problem at all stops even when repeats are allowed
        expect_error([&] { generate_split(*task, Split::test, 1, 1); }, {"found only 0"});
    }
}

TEST(TaskTest, ProblemCountsAreExact) {
    EXPECT_EQ(make_task("addition")->problem_count(), 100 * 100);
    EXPECT_EQ(make_task("addition", {{"min_digits", 3}, {"max_digits", 3}})->problem_count(), 900 * 900);
    EXPECT_EQ(make_task("addition", {{"max_digits", 18}})->problem_count(), 0);  // too many to count
    int64_t words = 0;
    for (int length = 3; length <= 8; ++length) {
        int64_t n = 1;
        for (int i = 0; i < length; ++i) n *= 26;
        words += n;
    }
    EXPECT_EQ(make_task("reversal")->problem_count(), words);
    EXPECT_EQ(make_task("copy")->problem_count(), words);
    EXPECT_EQ(make_task("sorting")->problem_count(), 1000 + 10000 + 100000 + 1000000);
    EXPECT_EQ(make_task("modular")->problem_count(), 3 * 23 * 23);
    EXPECT_EQ(make_task("kv_recall")->problem_count(), int64_t{26 * 25 * 24 * 23} * 10000 * 4);
    EXPECT_EQ(make_task("kv_recall", {{"pairs", 26}})->problem_count(), 0);
}

TEST(TaskTest, BadOptionsAreRefusedNamingTheKey) {
    expect_error([] { make_task("addition", {{"max_digit", 3}}); },
                 {"addition", "'max_digit'", "min_digits, max_digits"});
    expect_error([] { make_task("addition", {{"max_digits", "3"}}); }, {"'max_digits'", "integer"});
    expect_error([] { make_task("addition", {{"max_digits", 2.5}}); }, {"'max_digits'", "integer"});
    expect_error([] { make_task("addition", {{"max_digits", 19}}); }, {"'max_digits'", "19", "[1, 18]"});
    expect_error([] { make_task("addition", {{"min_digits", 3}, {"max_digits", 2}}); },
                 {"'min_digits' (3)", "'max_digits' (2)"});
    expect_error([] { make_task("sorting", {{"min_len", 0}}); }, {"sorting", "'min_len'", "0"});
    expect_error([] { make_task("modular", {{"modulus", 1}}); }, {"modular", "'modulus'"});
    expect_error([] { make_task("kv_recall", {{"pairs", 27}}); }, {"kv_recall", "'pairs'", "27"});
    expect_error([] { make_task("copy", json::array({1, 2})); }, {"copy", "object"});
    for (const std::string& name : task_names()) {
        expect_error([&] { make_task(name, {{"bogus", 1}}); }, {"task " + name, "'bogus'", "valid options"});
    }
    EXPECT_NO_THROW(make_task("addition", json()));  // null means "no options"
}

TEST(TaskTest, ToConversationBuildsOneExchange) {
    const TaskExample example{"37+48", "85"};
    const Conversation plain = to_conversation(example);
    ASSERT_EQ(plain.messages.size(), 2u);
    EXPECT_EQ(plain.messages[0].role, "user");
    EXPECT_EQ(plain.messages[0].content, "37+48");
    EXPECT_EQ(plain.messages[1].role, "assistant");
    EXPECT_EQ(plain.messages[1].content, "85");
    EXPECT_NE(plain.source.find("37+48"), std::string::npos);

    const Conversation prompt = to_conversation(example, "You add numbers.", /*with_answer=*/false);
    ASSERT_EQ(prompt.messages.size(), 2u);
    EXPECT_EQ(prompt.messages[0].role, "system");
    EXPECT_EQ(prompt.messages[0].content, "You add numbers.");
    EXPECT_EQ(prompt.messages[1].role, "user");
}

}  // namespace
}  // namespace reftrain
