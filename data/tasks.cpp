// data/tasks.cpp — the six toy tasks, their verifiers, and hash-based train/val/test splits.
//
// What is not obvious:
// - verify() never trusts a stored answer: it parses the prompt back into numbers or letters and
//   recomputes. The parser is exactly as strict as the generator (digit counts, alphabet, single
//   spaces, no leading zeros), so a prompt from another task or another configuration is an error,
//   not a silent "wrong answer" that would poison an RL reward or an eval score.
// - A problem's split is a pure function of its prompt text, so generators with different seeds,
//   counts or processes can never leak a test problem into training. FNV-1a's low bits depend only
//   on the characters' low bits (its multiply carries upward only) and "mod 100" reads them (100 =
//   4 * 25), so one SplitMix64 step mixes the hash first.
// - generate_split() is rejection sampling: a draw lands in train with probability ~0.8 and in
//   val/test with ~0.1 each. A small task may have few (or no) problems in a split, so the loop stops
//   with an error once no new example has turned up for a long stretch, instead of spinning forever.
#include "data/tasks.h"

#include <algorithm>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "kernels/error.h"

namespace reftrain {
namespace {

using json = nlohmann::json;

// problem_count() reports 0 beyond this: such a task never runs out of problems in practice.
constexpr int64_t kCountLimit = 1'000'000'000'000;

// a * b, saturating just above kCountLimit (operands are never negative).
int64_t capped_mul(int64_t a, int64_t b) {
    if (a == 0 || b == 0) return 0;
    if (a > kCountLimit / b) return kCountLimit + 1;
    return a * b;
}
int64_t capped_add(int64_t a, int64_t b) { return std::min(a + b, kCountLimit + 1); }
int64_t count_or_zero(int64_t n) { return n > kCountLimit ? 0 : n; }

int64_t power_of_ten(int64_t exponent) {
    int64_t p = 1;
    for (int64_t i = 0; i < exponent; ++i) p *= 10;
    return p;
}

std::string join(const std::vector<std::string>& parts, const char* separator) {
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) {
        if (i) out += separator;
        out += parts[i];
    }
    return out;
}

std::string_view trim(std::string_view text) {
    const char* space = " \t\n\r\f\v";
    const size_t begin = text.find_first_not_of(space);
    if (begin == std::string_view::npos) return {};
    return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

// Pieces between single spaces; a doubled, leading or trailing space yields an empty piece, which
// every caller rejects (the generators never emit one).
std::vector<std::string_view> split_on_spaces(std::string_view text) {
    std::vector<std::string_view> pieces;
    size_t start = 0;
    while (true) {
        const size_t space = text.find(' ', start);
        pieces.push_back(text.substr(start, space == std::string_view::npos ? space : space - start));
        if (space == std::string_view::npos) return pieces;
        start = space + 1;
    }
}

// A non-negative decimal as the generators write it: digits only, no sign, no leading zero (except
// "0" itself), at most 18 digits so it fits in int64.
bool parse_number(std::string_view text, int64_t& value) {
    if (text.empty() || text.size() > 18) return false;
    if (text.size() > 1 && text[0] == '0') return false;
    value = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return false;
        value = value * 10 + (c - '0');
    }
    return true;
}

bool is_lowercase_word(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

constexpr int64_t kLetters = 26;  // reversal, copy and kv_recall keys draw from 'a'..'z'

// Reads a task's options: refuses anything but an object, unknown keys (listing the valid ones) and
// values that are not integers within range.
class OptionReader {
public:
    OptionReader(std::string task, const json& options, std::vector<std::string> valid_keys)
        : task_(std::move(task)), options_(options.is_null() ? json::object() : options) {
        check(options_.is_object(), "task ", task_, ": options must be a JSON object, got ", options_.dump());
        for (const auto& item : options_.items()) {
            if (std::find(valid_keys.begin(), valid_keys.end(), item.key()) == valid_keys.end()) {
                fail("task ", task_, ": unknown option '", item.key(), "' (valid options: ", join(valid_keys, ", "),
                     ")");
            }
        }
    }
    int64_t get(const std::string& key, int64_t default_value, int64_t min_value, int64_t max_value) const {
        if (!options_.contains(key)) return default_value;
        const json& value = options_.at(key);
        check(value.is_number_integer(), "task ", task_, ": option '", key, "' must be an integer, got ",
              value.dump());
        const int64_t v = value.get<int64_t>();
        check(v >= min_value && v <= max_value, "task ", task_, ": option '", key, "' = ", v,
              " is out of range [", min_value, ", ", max_value, "]");
        return v;
    }
    // Two options that bound one quantity, e.g. min_len <= max_len.
    void check_ordered(const std::string& low_key, int64_t low, const std::string& high_key, int64_t high) const {
        check(low <= high, "task ", task_, ": option '", low_key, "' (", low, ") must not exceed '", high_key,
              "' (", high, ")");
    }

private:
    std::string task_;
    json options_;
};

class TaskBase : public Task {
public:
    explicit TaskBase(std::string name) : name_(std::move(name)) {}
    std::string name() const override { return name_; }

protected:
    [[noreturn]] void refuse_prompt(const std::string& prompt, const std::string& expected_form) const {
        fail("task ", name_, ": prompt '", prompt, "' is not one this task produces (expected ", expected_form,
             ")");
    }

private:
    std::string name_;
};

// ---- addition: "37+48" -> "85" -------------------------------------------------------------------
class AdditionTask : public TaskBase {
public:
    explicit AdditionTask(const json& options) : TaskBase("addition") {
        OptionReader reader("addition", options, {"min_digits", "max_digits"});
        // 18 digits: both operands and their sum (< 2e18) still fit in int64.
        min_digits_ = reader.get("min_digits", 1, 1, 18);
        max_digits_ = reader.get("max_digits", 2, 1, 18);
        reader.check_ordered("min_digits", min_digits_, "max_digits", max_digits_);
    }
    TaskExample generate(Rng& rng) const override {
        const int64_t a = operand(rng), b = operand(rng);
        return {std::to_string(a) + "+" + std::to_string(b), std::to_string(a + b)};
    }
    bool verify(const std::string& prompt, const std::string& response) const override {
        const size_t plus = prompt.find('+');
        int64_t a = 0, b = 0;
        if (plus == std::string::npos || !parse_operand(std::string_view(prompt).substr(0, plus), a) ||
            !parse_operand(std::string_view(prompt).substr(plus + 1), b)) {
            refuse_prompt(prompt, concat("'A+B' with A and B of ", min_digits_, " to ", max_digits_, " digits"));
        }
        return trim(response) == std::to_string(a + b);
    }
    int64_t problem_count() const override {
        const int64_t operands = power_of_ten(max_digits_) - lowest_operand();
        return count_or_zero(capped_mul(operands, operands));
    }

private:
    int64_t min_digits_, max_digits_;
    // 0 counts as a one-digit number; every longer number starts with a non-zero digit.
    int64_t lowest_operand() const { return min_digits_ == 1 ? 0 : power_of_ten(min_digits_ - 1); }
    // The digit count is drawn first, so short operands are as common as long ones (a uniform value
    // would make almost every operand max_digits long).
    int64_t operand(Rng& rng) const {
        const int64_t digits = min_digits_ + static_cast<int64_t>(rng.below(max_digits_ - min_digits_ + 1));
        if (digits == 1) return static_cast<int64_t>(rng.below(10));
        const int64_t low = power_of_ten(digits - 1);
        return low + static_cast<int64_t>(rng.below(9 * low));
    }
    bool parse_operand(std::string_view text, int64_t& value) const {
        // No leading zeros, so the length is the digit count.
        const auto digits = static_cast<int64_t>(text.size());
        return parse_number(text, value) && digits >= min_digits_ && digits <= max_digits_;
    }
};

// ---- reversal "reverse abc" -> "cba", copy "copy abc" -> "abc" -----------------------------------
class LetterTask : public TaskBase {
public:
    LetterTask(const std::string& name, const std::string& keyword, bool reverse, const json& options)
        : TaskBase(name), keyword_(keyword), reverse_(reverse) {
        OptionReader reader(name, options, {"min_len", "max_len"});
        min_len_ = reader.get("min_len", 3, 1, 64);
        max_len_ = reader.get("max_len", 8, 1, 64);
        reader.check_ordered("min_len", min_len_, "max_len", max_len_);
    }
    TaskExample generate(Rng& rng) const override {
        const int64_t length = min_len_ + static_cast<int64_t>(rng.below(max_len_ - min_len_ + 1));
        std::string word;
        for (int64_t i = 0; i < length; ++i) word += static_cast<char>('a' + rng.below(kLetters));
        return {keyword_ + " " + word, answer_for(word)};
    }
    bool verify(const std::string& prompt, const std::string& response) const override {
        const std::string head = keyword_ + " ";
        const std::string_view word = std::string_view(prompt).substr(std::min(prompt.size(), head.size()));
        const auto length = static_cast<int64_t>(word.size());
        if (prompt.compare(0, head.size(), head) != 0 || !is_lowercase_word(word) || length < min_len_ ||
            length > max_len_) {
            refuse_prompt(prompt, concat("'", keyword_, " WORD' with WORD of ", min_len_, " to ", max_len_,
                                         " letters a-z"));
        }
        return trim(response) == answer_for(std::string(word));
    }
    int64_t problem_count() const override {
        int64_t total = 0;
        for (int64_t length = min_len_; length <= max_len_; ++length) {
            int64_t words = 1;
            for (int64_t i = 0; i < length; ++i) words = capped_mul(words, kLetters);
            total = capped_add(total, words);
        }
        return count_or_zero(total);
    }

private:
    std::string keyword_;
    bool reverse_;
    int64_t min_len_, max_len_;
    std::string answer_for(std::string word) const {
        if (reverse_) std::reverse(word.begin(), word.end());
        return word;
    }
};

// ---- sorting: "sort 5 2 9 1" -> "1 2 5 9" --------------------------------------------------------
class SortingTask : public TaskBase {
public:
    explicit SortingTask(const json& options) : TaskBase("sorting") {
        OptionReader reader("sorting", options, {"min_len", "max_len", "max_value"});
        min_len_ = reader.get("min_len", 3, 1, 64);
        max_len_ = reader.get("max_len", 6, 1, 64);
        max_value_ = reader.get("max_value", 9, 1, 1'000'000'000);
        reader.check_ordered("min_len", min_len_, "max_len", max_len_);
    }
    TaskExample generate(Rng& rng) const override {
        const int64_t length = min_len_ + static_cast<int64_t>(rng.below(max_len_ - min_len_ + 1));
        std::vector<int64_t> values(length);
        for (int64_t& v : values) v = static_cast<int64_t>(rng.below(max_value_ + 1));
        std::string prompt = "sort";
        for (int64_t v : values) {
            prompt += ' ';
            prompt += std::to_string(v);
        }
        return {prompt, sorted_answer(values)};
    }
    bool verify(const std::string& prompt, const std::string& response) const override {
        const std::vector<std::string_view> pieces = split_on_spaces(prompt);
        const auto length = static_cast<int64_t>(pieces.size()) - 1;
        std::vector<int64_t> values;
        bool ok = pieces[0] == "sort" && length >= min_len_ && length <= max_len_;
        for (size_t i = 1; ok && i < pieces.size(); ++i) {
            int64_t v = 0;
            ok = parse_number(pieces[i], v) && v <= max_value_;
            values.push_back(v);
        }
        if (!ok) {
            refuse_prompt(prompt, concat("'sort N N ...' with ", min_len_, " to ", max_len_,
                                         " numbers in 0..", max_value_, " separated by single spaces"));
        }
        return trim(response) == sorted_answer(values);
    }
    int64_t problem_count() const override {
        int64_t total = 0;
        for (int64_t length = min_len_; length <= max_len_; ++length) {
            int64_t lists = 1;
            for (int64_t i = 0; i < length; ++i) lists = capped_mul(lists, max_value_ + 1);
            total = capped_add(total, lists);
        }
        return count_or_zero(total);
    }

private:
    int64_t min_len_, max_len_, max_value_;
    static std::string sorted_answer(std::vector<int64_t> values) {
        std::sort(values.begin(), values.end());
        std::string answer;
        for (size_t i = 0; i < values.size(); ++i) {
            if (i) answer += ' ';
            answer += std::to_string(values[i]);
        }
        return answer;
    }
};

// ---- modular: "17*5 mod 23" -> "16" ---------------------------------------------------------------
class ModularTask : public TaskBase {
public:
    explicit ModularTask(const json& options) : TaskBase("modular") {
        OptionReader reader("modular", options, {"modulus"});
        // Below 1e9 the product of two residues stays under 1e18, inside int64.
        modulus_ = reader.get("modulus", 23, 2, 1'000'000'000);
    }
    TaskExample generate(Rng& rng) const override {
        const int64_t a = static_cast<int64_t>(rng.below(modulus_));
        const int64_t b = static_cast<int64_t>(rng.below(modulus_));
        const char op = "+-*"[rng.below(3)];
        return {std::to_string(a) + op + std::to_string(b) + " mod " + std::to_string(modulus_),
                std::to_string(evaluate(a, op, b))};
    }
    bool verify(const std::string& prompt, const std::string& response) const override {
        const std::string tail = " mod " + std::to_string(modulus_);
        const std::string_view text(prompt);
        int64_t a = 0, b = 0;
        bool ok = text.size() > tail.size() && text.substr(text.size() - tail.size()) == tail;
        const std::string_view expression = ok ? text.substr(0, text.size() - tail.size()) : std::string_view();
        const size_t op = expression.find_first_of("+-*");
        ok = ok && op != std::string_view::npos && parse_number(expression.substr(0, op), a) &&
             parse_number(expression.substr(op + 1), b) && a < modulus_ && b < modulus_;
        if (!ok) {
            refuse_prompt(prompt, concat("'A op B mod ", modulus_, "' with A, B in 0..", modulus_ - 1,
                                         " and op one of + - *"));
        }
        return trim(response) == std::to_string(evaluate(a, expression[op], b));
    }
    int64_t problem_count() const override {
        return count_or_zero(capped_mul(3, capped_mul(modulus_, modulus_)));
    }

private:
    int64_t modulus_;
    // Always the representative in [0, p), also for a - b < 0.
    int64_t evaluate(int64_t a, char op, int64_t b) const {
        if (op == '+') return (a + b) % modulus_;
        if (op == '-') return ((a - b) % modulus_ + modulus_) % modulus_;
        return (a * b) % modulus_;
    }
};

// ---- kv_recall: "a=3 b=7 c=1 ? b" -> "7" ----------------------------------------------------------
class KvRecallTask : public TaskBase {
public:
    explicit KvRecallTask(const json& options) : TaskBase("kv_recall") {
        OptionReader reader("kv_recall", options, {"pairs"});
        pairs_ = reader.get("pairs", 4, 1, kLetters);  // keys are distinct letters
    }
    TaskExample generate(Rng& rng) const override {
        // Distinct keys: the first `pairs_` entries of a partial Fisher-Yates shuffle of a..z.
        std::string letters = "abcdefghijklmnopqrstuvwxyz";
        for (int64_t i = 0; i < pairs_; ++i) std::swap(letters[i], letters[i + rng.below(kLetters - i)]);
        std::string prompt, answer;
        const int64_t query = static_cast<int64_t>(rng.below(pairs_));
        for (int64_t i = 0; i < pairs_; ++i) {
            const char value = static_cast<char>('0' + rng.below(10));
            prompt += std::string(1, letters[i]) + "=" + value + " ";
            if (i == query) answer = std::string(1, value);
        }
        return {prompt + "? " + letters[query], answer};
    }
    bool verify(const std::string& prompt, const std::string& response) const override {
        const std::vector<std::string_view> pieces = split_on_spaces(prompt);
        std::unordered_map<char, char> values;
        bool ok = static_cast<int64_t>(pieces.size()) == pairs_ + 2 && pieces[pairs_] == "?";
        for (int64_t i = 0; ok && i < pairs_; ++i) {
            const std::string_view pair = pieces[i];
            ok = pair.size() == 3 && is_lowercase_word(pair.substr(0, 1)) && pair[1] == '=' && pair[2] >= '0' &&
                 pair[2] <= '9' && values.emplace(pair[0], pair[2]).second;
        }
        ok = ok && pieces.back().size() == 1 && values.count(pieces.back()[0]) == 1;
        if (!ok) {
            refuse_prompt(prompt, concat("'k=v ... ? k' with ", pairs_,
                                         " distinct keys a-z, values 0-9, and a query key among them"));
        }
        return trim(response) == std::string(1, values.at(pieces.back()[0]));
    }
    int64_t problem_count() const override {
        // Ordered distinct keys * values * which key is asked.
        int64_t total = pairs_;
        for (int64_t i = 0; i < pairs_; ++i) total = capped_mul(total, capped_mul(kLetters - i, 10));
        return count_or_zero(total);
    }

private:
    int64_t pairs_;
};

}  // namespace

std::vector<std::string> task_names() { return {"addition", "reversal", "copy", "sorting", "modular", "kv_recall"}; }

std::unique_ptr<Task> make_task(const std::string& name, const nlohmann::json& options) {
    if (name == "addition") return std::make_unique<AdditionTask>(options);
    if (name == "reversal") return std::make_unique<LetterTask>("reversal", "reverse", true, options);
    if (name == "copy") return std::make_unique<LetterTask>("copy", "copy", false, options);
    if (name == "sorting") return std::make_unique<SortingTask>(options);
    if (name == "modular") return std::make_unique<ModularTask>(options);
    if (name == "kv_recall") return std::make_unique<KvRecallTask>(options);
    fail("unknown task '", name, "' (known tasks: ", join(task_names(), ", "), ")");
}

const char* split_name(Split split) {
    switch (split) {
        case Split::train: return "train";
        case Split::val: return "val";
        case Split::test: return "test";
    }
    fail("split_name: invalid Split value ", static_cast<int>(split));
}

Split split_of(const std::string& prompt) {
    Rng mixer(Rng::hash_name(prompt));
    const uint64_t bucket = mixer.next_u64() % 100;
    if (bucket < 80) return Split::train;
    if (bucket < 90) return Split::val;
    return Split::test;
}

std::vector<TaskExample> generate_split(const Task& task, Split split, int64_t count, uint64_t seed, bool unique) {
    const std::string what = concat("generate_split(task ", task.name(), ", split ", split_name(split), ")");
    check(count >= 0, what, ": count must be >= 0, got ", count);
    const int64_t problems = task.problem_count();
    check(!unique || problems == 0 || count <= problems, what, ": asked for ", count,
          " unique problems but the task has only ", problems, " in all splits together");

    // Give up after this many draws in a row that add nothing (a repeat in unique mode, or another
    // split's problem). With P problems even the rarest of the generators' non-uniform draws turns up
    // within 100 * P draws with overwhelming probability.
    const int64_t stall_limit = problems > 0 ? std::max<int64_t>(200'000, capped_mul(100, problems)) : 10'000'000;

    Rng rng = Rng::for_name(seed, concat("tasks.split.", split_name(split)));
    std::vector<TaskExample> examples;
    examples.reserve(static_cast<size_t>(count));
    std::unordered_set<std::string> seen;
    int64_t draws = 0, draws_since_progress = 0;
    while (static_cast<int64_t>(examples.size()) < count) {
        if (draws_since_progress >= stall_limit) {
            fail(what, ": found only ", examples.size(), unique ? " distinct" : "", " problems in split '",
                 split_name(split), "' after ", draws, " draws, but ", count, " were asked for (the task has ",
                 problems > 0 ? std::to_string(problems) : std::string("more than 1e12"),
                 " problems in all; about 80/10/10% of them fall in train/val/test)");
        }
        TaskExample example = task.generate(rng);
        ++draws;
        ++draws_since_progress;
        if (split_of(example.prompt) != split) continue;
        if (unique && !seen.insert(example.prompt).second) continue;
        examples.push_back(std::move(example));
        draws_since_progress = 0;
    }
    return examples;
}

void check_disjoint(const std::vector<TaskExample>& a, const std::vector<TaskExample>& b) {
    std::unordered_map<std::string_view, size_t> first_index;
    for (size_t i = 0; i < a.size(); ++i) first_index.emplace(a[i].prompt, i);
    for (size_t j = 0; j < b.size(); ++j) {
        const auto found = first_index.find(b[j].prompt);
        if (found != first_index.end()) {
            fail("check_disjoint: prompt '", b[j].prompt, "' occurs in both sets (example ", found->second,
                 " of the first, example ", j, " of the second): the splits leak");
        }
    }
}

Conversation to_conversation(const TaskExample& example, const std::string& system_prompt, bool with_answer) {
    Conversation conversation;
    if (!system_prompt.empty()) conversation.messages.push_back({"system", system_prompt});
    conversation.messages.push_back({"user", example.prompt});
    if (with_answer) conversation.messages.push_back({"assistant", example.answer});
    conversation.source = "task prompt '" + example.prompt + "'";
    return conversation;
}

}  // namespace reftrain
