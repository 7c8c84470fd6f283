// data/tokenizer.h — text <-> token ids: SentencePiece for real runs, a byte-level one for tests.
//
// Special tokens (the chat templates' <|im_start|>, <|bos|>, ...) never come out of encode() for the
// tokenizers reftrain makes: plain text that happens to contain "<|im_start|>" is encoded as ordinary
// characters, so a user message cannot forge a turn boundary. Only the templates insert special ids.
// In SentencePiece terms our specials are *control symbols*, which the encoder never matches in text.
// A foreign .model may define *user-defined* symbols, which SentencePiece does match in text; we
// encode exactly as Python's sentencepiece does, so for such a model they can appear (docs/data.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace reftrain {

class Tokenizer {
public:
    virtual ~Tokenizer() = default;
    virtual std::string kind() const = 0;                     // "byte" or "sentencepiece"
    virtual int64_t vocab_size() const = 0;
    // Plain text -> ids, deterministic. Never yields a control symbol (see above).
    virtual std::vector<int64_t> encode(std::string_view text) const = 0;
    // ids -> text; special ids decode to their piece text ("<|im_end|>"). An id outside
    // [0, vocab_size) is an error naming the id.
    virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
    // The piece of one id as a reader should see it (for the visualiser).
    virtual std::string piece(int64_t id) const = 0;
    virtual bool has_special(std::string_view token) const = 0;
    // Id of a special token; fails naming the token and listing the specials this tokenizer has.
    virtual int64_t special_id(std::string_view token) const = 0;
    virtual std::vector<std::string> specials() const = 0;
    // A hex digest of everything that decides the id <-> text mapping (kind, pieces, specials, ids).
    // Checkpoints store it so that sampling refuses a different tokenizer.
    virtual std::string fingerprint() const = 0;
};

// Bytes 0..255 are ids 0..255; `specials` follow from id 256 in the given order.
std::unique_ptr<Tokenizer> make_byte_tokenizer(const std::vector<std::string>& specials);

// Loads any SentencePiece .model (Python's sentencepiece reads and writes the same format and
// encodes identically). Its control and user-defined symbols are the specials. Fails naming the file.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);

struct SentencePieceTrainOptions {
    int64_t vocab_size = 512;
    std::string model_type = "bpe";
    bool split_digits = true;               // one digit per token: arithmetic tasks need it
    std::vector<std::string> specials;      // registered as control symbols, ids 1.. after <unk>=0
};
// Trains on `corpus` (one sentence per entry) and writes `model_path` (the .model file) atomically.
void train_sentencepiece(const std::vector<std::string>& corpus, const SentencePieceTrainOptions& options,
                         const std::string& model_path);
// Trains once per (corpus, options): the model is cached as `cache_dir`/sp-<digest>.model and
// reused by later runs. Returns the path of the .model file.
std::string cached_sentencepiece(const std::vector<std::string>& corpus, const SentencePieceTrainOptions& options,
                                 const std::string& cache_dir);

}  // namespace reftrain
