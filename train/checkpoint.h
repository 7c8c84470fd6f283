// train/checkpoint.h — save and resume a training run, bitwise.
//
// A checkpoint is a directory:
//   model.safetensors   the weights under HF names (transformers loads it with config.json)
//   config.json         the HF model config
//   run.json            the resolved run config (what `reftrain train` printed at start)
//   tokenizer.model     a copy of the SentencePiece model (absent for the byte tokenizer)
//   state.bin           everything else needed to continue bitwise, in a binary file:
//                         magic "RFTSTATE", u32 version, u64 payload length, payload, u32 CRC-32
//                         (zlib) of the payload. The payload is a JSON header (step, RNG states,
//                         data position, template and tokenizer fingerprints, the CRC-32 of
//                         model.safetensors, the optimizer tensor table) followed by the raw fp32
//                         AdamW moments.
// Writes are atomic: the directory is written as <dir>.tmp (every file fsynced), then renamed.
// Loading checks magic, version, length, both checksums and every tensor name/shape BEFORE it touches
// the model or optimizer: a corrupt or truncated checkpoint is refused whole, never half-loaded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/packing.h"
#include "model/transformer.h"
#include "train/adamw.h"

namespace reftrain {

struct TrainState {
    int64_t step = 0;                       // optimizer steps done
    std::vector<uint64_t> rng_states;       // every Rng the loop owns, in a fixed order
    DataPosition data;
    std::string template_fingerprint;
    std::string tokenizer_fingerprint;
    nlohmann::json extra = nlohmann::json(nlohmann::json::value_t::object);  // loss scaler etc. later; round-tripped as is
};

inline constexpr uint32_t kCheckpointVersion = 1;

// Writes `dir` atomically (fails if `dir` exists, unless overwrite). tokenizer_model_path may be empty.
void save_checkpoint(const std::string& dir, const Transformer& model, AdamW& optimizer, const TrainState& state,
                     const nlohmann::json& run_config, const std::string& tokenizer_model_path,
                     bool overwrite = false);

// The checkpoints of a run directory: run_dir/checkpoints/step_NNNNNNN (NNNNNNN = state.step), and
// run_dir/checkpoints/latest, one line naming the newest. Saves there (a checkpoint of the same step is
// overwritten), then points latest at it, atomically; returns the checkpoint directory.
std::string save_run_checkpoint(const std::string& run_dir, const Transformer& model, AdamW& optimizer,
                                const TrainState& state, const nlohmann::json& run_config,
                                const std::string& tokenizer_model_path);
// The checkpoint directory `path` names: itself when it holds state.bin, else the one its
// checkpoints/latest names (fails, naming `path`, when there is neither).
std::string resolve_checkpoint_dir(const std::string& path);

// Reads and verifies everything, then fills model parameters, optimizer moments + step count (when
// optimizer is non-null) and state. Throws reftrain::Error naming the file and what is wrong.
void load_checkpoint(const std::string& dir, Transformer& model, AdamW* optimizer, TrainState& state);

// The run config stored in a checkpoint (run.json), for `reftrain sample` and resume.
nlohmann::json read_checkpoint_run_config(const std::string& dir);
// Reads only the state (verified), for sampling's fingerprint check.
TrainState read_checkpoint_state(const std::string& dir);

}  // namespace reftrain
