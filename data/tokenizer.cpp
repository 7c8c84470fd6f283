// data/tokenizer.cpp — the byte tokenizer, the SentencePiece wrapper, and training/caching of our BPE
// models through Debian's libsentencepiece (0.1.97).
//
// Non-obvious points:
//  - Debian ships no sentencepiece_model.pb.h, so the processor cannot tell us which pieces are
//    user-defined. We read the piece types straight from the serialized ModelProto (a few lines of
//    protobuf wire format, see read_piece_types) instead of guessing from the piece text.
//  - Specials of models WE train are control symbols: SentencePiece's encoder never matches them in
//    text, so "<|im_start|>" typed by a user becomes ordinary bytes. A foreign .model may also have
//    user-defined pieces; we count them as specials (has_special/special_id find them) but encode()
//    still calls the SentencePiece encoder unchanged, which DOES match user-defined pieces in text.
//    That is deliberate: encode() must give exactly the ids Python's sentencepiece gives.
//  - SentencePiece decodes control ids to "", so decode() cuts the ids at specials, decodes each run
//    of ordinary ids with SentencePiece and puts the special's piece text in between.
//  - Training options are fixed by what our chat data needs (identity normalisation, no dummy
//    prefix, whitespace kept, byte fallback so no text is ever <unk>); see SentencePieceTrainOptions.
#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <unordered_map>

#include "kernels/error.h"
#include "kernels/random.h"
#include "kernels/safetensors.h"  // write_file_atomically

namespace reftrain {

namespace {

std::string hex64(uint64_t value) {
    char buffer[17];
    std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(value));
    return buffer;
}

// Appends `field` to a digest input with its length first, so that ("ab","c") and ("a","bc") differ.
void append_field(std::string& digest_input, std::string_view field) {
    digest_input += std::to_string(field.size());
    digest_input += ':';
    digest_input += field;
}

// How a reader should see one byte: printable ASCII and whitespace as itself (the visualiser escapes
// "\n"), anything else as <0xNN> because a lone byte of a UTF-8 sequence is not text.
std::string byte_piece(unsigned char byte) {
    if ((byte >= 0x20 && byte < 0x7f) || byte == '\n' || byte == '\t' || byte == '\r') {
        return std::string(1, static_cast<char>(byte));
    }
    char buffer[8];
    std::snprintf(buffer, sizeof(buffer), "<0x%02X>", byte);
    return buffer;
}

std::string join_specials(const std::vector<std::string>& specials) {
    if (specials.empty()) return "(none)";
    std::string out;
    for (const auto& s : specials) out += (out.empty() ? "" : ", ") + s;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Byte tokenizer: ids 0..255 are the bytes, specials follow. Used by tests and tiny experiments.

class ByteTokenizer final : public Tokenizer {
public:
    explicit ByteTokenizer(const std::vector<std::string>& specials) : specials_(specials) {
        for (size_t i = 0; i < specials_.size(); ++i) {
            check(!specials_[i].empty(), "byte tokenizer: special token ", i, " is empty");
            check(ids_.emplace(specials_[i], 256 + static_cast<int64_t>(i)).second, "byte tokenizer: special token '",
                  specials_[i], "' is listed twice");
        }
    }
    std::string kind() const override { return "byte"; }
    int64_t vocab_size() const override { return 256 + static_cast<int64_t>(specials_.size()); }
    std::vector<int64_t> encode(std::string_view text) const override {
        std::vector<int64_t> ids(text.size());
        for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
        return ids;
    }
    std::string decode(const std::vector<int64_t>& ids) const override {
        std::string text;
        for (int64_t id : ids) {
            check_id(id);
            if (id < 256) text += static_cast<char>(id);
            else text += specials_[id - 256];
        }
        return text;
    }
    std::string piece(int64_t id) const override {
        check_id(id);
        return id < 256 ? byte_piece(static_cast<unsigned char>(id)) : specials_[id - 256];
    }
    bool has_special(std::string_view token) const override { return ids_.count(std::string(token)) > 0; }
    int64_t special_id(std::string_view token) const override {
        auto it = ids_.find(std::string(token));
        if (it == ids_.end()) {
            fail("byte tokenizer: no special token '", token, "' (its specials: ", join_specials(specials_), ")");
        }
        return it->second;
    }
    std::vector<std::string> specials() const override { return specials_; }
    std::string fingerprint() const override {
        std::string input = "byte";
        for (const auto& s : specials_) append_field(input, s);
        return hex64(Rng::hash_name(input));
    }

private:
    void check_id(int64_t id) const {
        check(id >= 0 && id < vocab_size(), "byte tokenizer: id ", id, " is outside the vocabulary [0, ",
              vocab_size(), ")");
    }
    std::vector<std::string> specials_;
    std::map<std::string, int64_t> ids_;
};

// ---------------------------------------------------------------------------------------------
// SentencePiece.

// SentencePiece::Type in sentencepiece_model.proto.
enum PieceType : uint64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Reads the `type` of every piece from a serialized ModelProto: field 1 of ModelProto is the repeated
// SentencePiece message, field 3 of that is its type (NORMAL when absent). Everything else is skipped.
std::vector<uint64_t> read_piece_types(const std::string& proto, const std::string& path) {
    auto bad = [&](const char* what) { fail(path, ": not a SentencePiece model (", what, " in its protobuf)"); };
    auto read_varint = [&](size_t& pos, size_t end) {
        uint64_t value = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos >= end) bad("truncated varint");
            const auto byte = static_cast<unsigned char>(proto[pos++]);
            value |= static_cast<uint64_t>(byte & 0x7f) << shift;
            if (!(byte & 0x80)) return value;
        }
        bad("overlong varint");
        return value;
    };
    // Walks the fields in [pos, end); calls on_field(number, wire_type, value_or_length, start).
    auto walk = [&](size_t pos, size_t end, auto&& on_field) {
        while (pos < end) {
            const uint64_t key = read_varint(pos, end);
            const uint64_t number = key >> 3, wire = key & 7;
            uint64_t value = 0;
            const size_t start = pos;
            if (wire == 0) value = read_varint(pos, end);
            else if (wire == 1) pos += 8;
            else if (wire == 5) pos += 4;
            else if (wire == 2) {
                value = read_varint(pos, end);
                if (value > end - pos) bad("truncated field");
                on_field(number, wire, value, pos);
                pos += value;
                continue;
            } else bad("unsupported wire type");
            if (pos > end) bad("truncated field");
            on_field(number, wire, value, start);
        }
    };
    std::vector<uint64_t> types;
    walk(0, proto.size(), [&](uint64_t number, uint64_t wire, uint64_t length, size_t start) {
        if (number != 1 || wire != 2) return;
        uint64_t type = kNormal;
        walk(start, start + length, [&](uint64_t n, uint64_t w, uint64_t value, size_t) {
            if (n == 3 && w == 0) type = value;
        });
        types.push_back(type);
    });
    return types;
}

class SentencePieceTokenizer final : public Tokenizer {
public:
    explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
        check(std::filesystem::is_regular_file(path), path, ": SentencePiece model file not found");
        const auto status = processor_.Load(path);
        if (!status.ok()) fail(path, ": cannot load SentencePiece model: ", status.ToString());
        const std::vector<uint64_t> types = read_piece_types(processor_.serialized_model_proto(), path);
        check(static_cast<int64_t>(types.size()) == processor_.GetPieceSize(), path, ": the model lists ",
              types.size(), " pieces but SentencePiece loaded ", processor_.GetPieceSize());
        for (int id = 0; id < processor_.GetPieceSize(); ++id) {
            if (types[id] == kControl || types[id] == kUserDefined) {
                specials_.push_back(processor_.IdToPiece(id));
                special_ids_.emplace(processor_.IdToPiece(id), id);
            }
        }
    }
    std::string kind() const override { return "sentencepiece"; }
    int64_t vocab_size() const override { return processor_.GetPieceSize(); }
    std::vector<int64_t> encode(std::string_view text) const override {
        std::vector<int> ids;
        const auto status = processor_.Encode(text, &ids);
        if (!status.ok()) fail(path_, ": SentencePiece encode failed: ", status.ToString());
        return std::vector<int64_t>(ids.begin(), ids.end());
    }
    std::string decode(const std::vector<int64_t>& ids) const override {
        std::string text;
        std::vector<int> run;
        auto flush = [&] {
            if (run.empty()) return;
            std::string part;
            const auto status = processor_.Decode(run, &part);
            if (!status.ok()) fail(path_, ": SentencePiece decode failed: ", status.ToString());
            text += part;
            run.clear();
        };
        for (int64_t id : ids) {
            check_id(id);
            if (is_special(id)) {
                flush();
                text += processor_.IdToPiece(static_cast<int>(id));
            } else {
                run.push_back(static_cast<int>(id));
            }
        }
        flush();
        return text;
    }
    std::string piece(int64_t id) const override {
        check_id(id);
        const int i = static_cast<int>(id);
        const std::string& raw = processor_.IdToPiece(i);
        if (processor_.IsByte(i)) {  // "<0x41>" -> the byte, shown like the byte tokenizer shows it
            return byte_piece(static_cast<unsigned char>(std::stoi(raw.substr(3, 2), nullptr, 16)));
        }
        if (is_special(id) || processor_.IsUnknown(i)) return raw;
        // SentencePiece writes a space as U+2581 "▁" inside pieces.
        std::string shown;
        for (size_t k = 0; k < raw.size(); ++k) {
            if (raw.compare(k, 3, "\xe2\x96\x81") == 0) {
                shown += ' ';
                k += 2;
            } else {
                shown += raw[k];
            }
        }
        return shown;
    }
    bool has_special(std::string_view token) const override { return special_ids_.count(std::string(token)) > 0; }
    int64_t special_id(std::string_view token) const override {
        auto it = special_ids_.find(std::string(token));
        if (it == special_ids_.end()) {
            fail(path_, ": SentencePiece model has no special token '", token, "' (its specials: ",
                 join_specials(specials_), ")");
        }
        return it->second;
    }
    std::vector<std::string> specials() const override { return specials_; }
    std::string fingerprint() const override {
        std::string input = "sentencepiece";
        for (int id = 0; id < processor_.GetPieceSize(); ++id) append_field(input, processor_.IdToPiece(id));
        input += "|specials";
        for (const auto& s : specials_) append_field(input, s);
        return hex64(Rng::hash_name(input));
    }

private:
    void check_id(int64_t id) const {
        check(id >= 0 && id < vocab_size(), path_, ": id ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
    }
    bool is_special(int64_t id) const {
        auto it = special_ids_.find(processor_.IdToPiece(static_cast<int>(id)));
        return it != special_ids_.end() && it->second == id;
    }
    std::string path_;
    sentencepiece::SentencePieceProcessor processor_;
    std::vector<std::string> specials_;                 // in id order
    std::unordered_map<std::string, int64_t> special_ids_;
};

// Feeds the in-memory corpus to the trainer, so no temporary corpus file is needed.
class CorpusIterator final : public sentencepiece::SentenceIterator {
public:
    explicit CorpusIterator(const std::vector<std::string>& corpus) : corpus_(corpus) {}
    bool done() const override { return index_ >= corpus_.size(); }
    void Next() override { ++index_; }
    const std::string& value() const override { return corpus_[index_]; }
    sentencepiece::util::Status status() const override { return {}; }

private:
    const std::vector<std::string>& corpus_;
    size_t index_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer(const std::vector<std::string>& specials) {
    return std::make_unique<ByteTokenizer>(specials);
}

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
    return std::make_unique<SentencePieceTokenizer>(model_path);
}

void train_sentencepiece(const std::vector<std::string>& corpus, const SentencePieceTrainOptions& options,
                         const std::string& model_path) {
    check(!corpus.empty(), model_path, ": cannot train a SentencePiece model on an empty corpus");
    check(options.model_type == "bpe" || options.model_type == "unigram", model_path, ": model_type '",
          options.model_type, "' is not supported (expected bpe or unigram)");
    // Byte fallback needs all 256 byte pieces, plus <unk> and the specials, before any merge.
    const int64_t minimum = 256 + 1 + static_cast<int64_t>(options.specials.size());
    check(options.vocab_size > minimum, model_path, ": vocab_size ", options.vocab_size,
          " is too small: byte fallback needs 256 byte pieces + <unk> + ", options.specials.size(),
          " specials = ", minimum, " ids before any character or merge of the corpus");
    std::string control_symbols;
    for (const auto& s : options.specials) {
        check(!s.empty() && s.find(',') == std::string::npos, model_path, ": special token '", s,
              "' must be non-empty and contain no comma (SentencePiece's list separator)");
        control_symbols += (control_symbols.empty() ? "" : ",") + s;
    }
    const std::unordered_map<std::string, std::string> args = {
        {"model_type", options.model_type},
        {"vocab_size", std::to_string(options.vocab_size)},
        {"split_digits", options.split_digits ? "true" : "false"},
        {"character_coverage", "1.0"},          // every character of the corpus gets a piece
        {"byte_fallback", "true"},              // unseen characters become bytes, never <unk>
        {"normalization_rule_name", "identity"},  // no NFKC: decode(encode(x)) == x
        {"add_dummy_prefix", "false"},          // no invented leading space before every segment
        {"remove_extra_whitespaces", "false"},  // indentation and "\n\n" matter in chat text
        {"unk_id", "0"},
        {"bos_id", "-1"},  // our templates insert their own specials, by id
        {"eos_id", "-1"},
        {"pad_id", "-1"},
        {"control_symbols", control_symbols},
        {"hard_vocab_limit", "false"},  // a tiny corpus may not have enough merges to fill vocab_size
        {"max_sentence_length", "65536"},  // bytes; longer sentences would be dropped silently
        {"num_threads", "1"},              // same corpus, same model, byte for byte
        {"minloglevel", "1"},              // keep the trainer's INFO logging off our stdout/stderr
    };
    CorpusIterator sentences(corpus);
    std::string serialized;
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &sentences, &serialized);
    if (!status.ok()) fail(model_path, ": SentencePiece training failed: ", status.ToString());
    write_file_atomically(model_path, serialized.data(), serialized.size());
}

std::string cached_sentencepiece(const std::vector<std::string>& corpus, const SentencePieceTrainOptions& options,
                                 const std::string& cache_dir) {
    // The digest covers everything that decides the model; bump the version when the fixed training
    // arguments in train_sentencepiece change, so stale cached models are not reused.
    std::string input = "reftrain-sp-v1";
    append_field(input, options.model_type);
    append_field(input, std::to_string(options.vocab_size));
    append_field(input, options.split_digits ? "split_digits" : "joined_digits");
    append_field(input, std::to_string(options.specials.size()));
    for (const auto& s : options.specials) append_field(input, s);
    append_field(input, std::to_string(corpus.size()));
    for (const auto& sentence : corpus) append_field(input, sentence);
    const std::string file_name = "sp-" + hex64(Rng::hash_name(input)) + ".model";
    const std::string path = (std::filesystem::path(cache_dir) / file_name).string();
    if (std::filesystem::exists(path)) return path;
    std::error_code error;
    std::filesystem::create_directories(cache_dir, error);
    check(!error, cache_dir, ": cannot create the tokenizer cache directory: ", error.message());
    train_sentencepiece(corpus, options, path);
    return path;
}

}  // namespace reftrain
