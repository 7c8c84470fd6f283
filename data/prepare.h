// data/prepare.h — what the data section of a run config builds: the tokenizer, the chat template,
// the task (or the user's JSONL), and the rendered conversations of every split.
//
// The rule that decides what a run learns from: a conversation that cannot be learned from (longer
// than seq_len + 1 when packed BOS-aligned, or with no assistant token) is skipped and COUNTED, never
// cut: truncating it would silently drop its supervised tail. The train/val/test splits of a task are
// disjoint by construction and checked anyway (data.split_disjoint).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/chat.h"
#include "data/tasks.h"
#include "data/tokenizer.h"
#include "debug/invariants.h"

namespace reftrain {

// The "data" section of a run config (train/run_config.h reads it; defaults here).
struct DataConfig {
    std::string task = "addition";            // a toy task (data/tasks.h), or "" when jsonl is set
    nlohmann::json task_options = nlohmann::json(nlohmann::json::value_t::object);
    std::string jsonl;                        // the user's own conversations (train split)
    std::string val_jsonl;                    // optional held-out conversations for val loss
    std::string template_name = "chatml";     // "chatml" | "nanochat"
    std::string tokenizer = "sentencepiece";  // "sentencepiece" (BPE trained on the task, cached),
                                              // "byte", or the path of a .model file
    int64_t tokenizer_vocab_size = 512;
    std::string tokenizer_cache = "runs/tokenizers";
    std::string system_prompt;
    int64_t train_examples = 20000;           // generated training conversations (may repeat)
    int64_t val_examples = 200;               // distinct held-out problems for val loss + exact match
    int64_t test_examples = 500;              // distinct test problems scored once at the end
    bool bos_aligned = true;                  // see data/packing.h
};

// What the data section builds.
struct RunData {
    std::unique_ptr<Tokenizer> tokenizer;
    std::string tokenizer_model_path;           // the .model file ("" for the byte tokenizer)
    std::unique_ptr<ChatTemplate> chat;
    std::unique_ptr<Task> task;                 // null for JSONL data
    std::vector<RenderedConversation> train_docs, val_docs;
    std::vector<TaskExample> val_examples, test_examples;  // distinct held-out problems (task data)
    int64_t skipped_too_long = 0;               // conversations longer than seq_len + 1 (bos_aligned)
    int64_t skipped_unsupervised = 0;           // conversations without an assistant token to learn
};

// Builds the tokenizer data.tokenizer names (training and caching a SentencePiece model on the task's
// training prompts, drawn with `seed`, when it is "sentencepiece"). model_path receives the .model file.
std::unique_ptr<Tokenizer> make_run_tokenizer(const DataConfig& data, uint64_t seed, std::string* model_path);
// Everything for a run of rows of seq_len tokens; the summary goes to `log`. With `invariants`, every
// rendered training conversation is checked (template.bos_exactly_once, mask.aligned_with_targets) and
// the splits are checked disjoint (data.split_disjoint).
RunData prepare_run_data(const DataConfig& data, int64_t seq_len, uint64_t seed, std::ostream& log,
                         Invariants* invariants = nullptr);

}  // namespace reftrain
