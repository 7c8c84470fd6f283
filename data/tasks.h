// data/tasks.h — seeded toy tasks with verifiers, shared by SFT, eval and RL.
//
// A task draws a random problem (prompt text) and knows its answer; verify() recomputes the answer
// from the prompt alone, so it also scores model samples. Splits are disjoint by construction: a
// problem's split is a function of the hash of its prompt (80% train, 10% val, 10% test), and the
// generator for a split rejects problems hashing elsewhere. check_disjoint() verifies it by hash.
//
// Tasks (options in parentheses, with defaults):
//   addition   "37+48" -> "85"                     (min_digits 1, max_digits 2)  operands have
//                                                   between min and max digits
//   reversal   "reverse abcde" -> "edcba"           (min_len 3, max_len 8)
//   copy       "copy abcde" -> "abcde"              (min_len 3, max_len 8)
//   sorting    "sort 5 2 9 1" -> "1 2 5 9"          (min_len 3, max_len 6, max_value 9)
//   modular    "17*5 mod 23" -> "16"                (modulus 23)  (a op b) mod p, op in + - *
//   kv_recall  "a=3 b=7 c=1 ? b" -> "7"             (pairs 4)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat.h"
#include "kernels/random.h"

namespace reftrain {

struct TaskExample {
    std::string prompt;  // the user message
    std::string answer;  // the assistant message
};

class Task {
public:
    virtual ~Task() = default;
    virtual std::string name() const = 0;
    virtual TaskExample generate(Rng& rng) const = 0;
    // True when `response` (the model's assistant text, surrounding whitespace ignored) is the
    // right answer to `prompt`. A prompt this task cannot have produced is an error.
    virtual bool verify(const std::string& prompt, const std::string& response) const = 0;
    // Number of distinct problems, or 0 when too large to matter (used to refuse impossible requests).
    virtual int64_t problem_count() const = 0;
};

// name: one of task_names(); options: the task's own keys (an unknown key fails naming it).
std::unique_ptr<Task> make_task(const std::string& name, const nlohmann::json& options = nlohmann::json::object());
std::vector<std::string> task_names();

enum class Split { train, val, test };
const char* split_name(Split split);
Split split_of(const std::string& prompt);   // from a 64-bit hash of the prompt: 80/10/10

// `count` examples of `split`, drawn from Rng(seed) mixed with the split. unique=true never repeats a
// prompt (fails when the split has fewer than `count` problems).
std::vector<TaskExample> generate_split(const Task& task, Split split, int64_t count, uint64_t seed,
                                        bool unique = false);
// Fails naming the first prompt that occurs in two splits.
void check_disjoint(const std::vector<TaskExample>& a, const std::vector<TaskExample>& b);

// A one-exchange conversation: [system?] user=prompt, assistant=answer (assistant omitted when
// with_answer=false, for prompting).
Conversation to_conversation(const TaskExample& example, const std::string& system_prompt = "",
                             bool with_answer = true);

}  // namespace reftrain
