// tests/test_tokenizer.cpp — data/tokenizer.h: the byte tokenizer round-trips any bytes, specials can
// never be produced from text (byte and SentencePiece), our SentencePiece training works (byte
// fallback, split digits, control symbols), the cache trains once, and load errors name the file.
// Interop with Python's sentencepiece is tested by tests/python/test_sentencepiece_interop.py.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include "data/tokenizer.h"
#include "kernels/error.h"
#include "kernels/safetensors.h"  // write_file_atomically
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;

namespace fs = std::filesystem;

const std::vector<std::string> kSpecials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

// A small corpus in the style of our tasks: arithmetic, short English, some punctuation and newlines.
std::vector<std::string> small_corpus() {
    std::vector<std::string> corpus;
    for (int a = 0; a < 40; ++a) {
        for (int b = 0; b < 40; b += 3) {
            const int x = a * 7, y = b * 13;
            corpus.push_back(std::to_string(x) + "+" + std::to_string(y) + "=" + std::to_string(x + y));
        }
    }
    const char* const sentences[] = {
        "the quick brown fox jumps over the lazy dog",
        "reverse abcde\nedcba",
        "sort 5 2 9 1 gives 1 2 5 9",
        "What is the capital of France? Paris.",
        "You are a helpful assistant.",
        "copy the string exactly, please",
    };
    for (int repeat = 0; repeat < 20; ++repeat) {
        for (const char* s : sentences) corpus.push_back(s);
    }
    return corpus;
}

TEST(TokenizerByteTest, RoundTripsUtf8AndEveryByte) {
    auto tokenizer = make_byte_tokenizer(kSpecials);
    const std::string text = "h\xc3\xa9llo w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82\n\t  end";
    std::vector<int64_t> ids = tokenizer->encode(text);
    ASSERT_EQ(ids.size(), text.size());  // one id per byte
    for (size_t i = 0; i < text.size(); ++i) EXPECT_EQ(ids[i], static_cast<unsigned char>(text[i]));
    EXPECT_EQ(tokenizer->decode(ids), text);

    std::string all_bytes;
    for (int b = 0; b < 256; ++b) all_bytes += static_cast<char>(b);
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(all_bytes)), all_bytes);
    EXPECT_EQ(tokenizer->kind(), "byte");
}

TEST(TokenizerByteTest, SpecialsFollowTheBytesAndNeverComeFromText) {
    auto tokenizer = make_byte_tokenizer(kSpecials);
    EXPECT_EQ(tokenizer->vocab_size(), 259);
    EXPECT_EQ(tokenizer->special_id("<|endoftext|>"), 256);
    EXPECT_EQ(tokenizer->special_id("<|im_start|>"), 257);
    EXPECT_EQ(tokenizer->special_id("<|im_end|>"), 258);
    EXPECT_EQ(tokenizer->specials(), kSpecials);
    EXPECT_TRUE(tokenizer->has_special("<|im_end|>"));
    EXPECT_FALSE(tokenizer->has_special("<|bos|>"));

    const std::vector<int64_t> ids = tokenizer->encode("user says <|im_start|>system\n<|im_end|><|endoftext|>");
    for (int64_t id : ids) EXPECT_LT(id, 256) << "plain text produced a special id";
    EXPECT_EQ(tokenizer->decode({257, 'h', 'i', 258}), "<|im_start|>hi<|im_end|>");
    EXPECT_EQ(tokenizer->piece(258), "<|im_end|>");
    EXPECT_EQ(tokenizer->piece('a'), "a");
    EXPECT_EQ(tokenizer->piece(0xc3), "<0xC3>");  // half a UTF-8 character is not text
}

TEST(TokenizerByteTest, ErrorsNameTheIdAndTheToken) {
    auto tokenizer = make_byte_tokenizer(kSpecials);
    expect_contains(error_of([&] { tokenizer->decode({104, 259}); }), {"259", "[0, 259)"});
    expect_contains(error_of([&] { tokenizer->decode({-1}); }), {"-1"});
    expect_contains(error_of([&] { tokenizer->piece(1000); }), {"1000"});
    expect_contains(error_of([&] { tokenizer->special_id("<|bos|>"); }), {"<|bos|>", "<|im_start|>"});
    expect_contains(error_of([&] { make_byte_tokenizer({"<|a|>", "<|a|>"}); }), {"<|a|>", "twice"});
}

TEST(TokenizerByteTest, FingerprintDependsOnTheSpecialsAndTheirOrder) {
    EXPECT_EQ(make_byte_tokenizer(kSpecials)->fingerprint(), make_byte_tokenizer(kSpecials)->fingerprint());
    EXPECT_NE(make_byte_tokenizer(kSpecials)->fingerprint(),
              make_byte_tokenizer({"<|im_start|>", "<|endoftext|>", "<|im_end|>"})->fingerprint());
    EXPECT_NE(make_byte_tokenizer(kSpecials)->fingerprint(), make_byte_tokenizer({})->fingerprint());
}

// One SentencePiece model per suite: training takes a fraction of a second, but once is enough.
class TokenizerSentencePieceTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = scratch_dir("tokenizer");
        SentencePieceTrainOptions options;
        options.vocab_size = 400;
        options.specials = kSpecials;
        model_path_ = (dir_ / "bpe.model").string();
        train_sentencepiece(small_corpus(), options, model_path_);
    }

    static fs::path dir_;
    static std::string model_path_;
};
fs::path TokenizerSentencePieceTest::dir_;
std::string TokenizerSentencePieceTest::model_path_;

TEST_F(TokenizerSentencePieceTest, TrainedModelRoundTripsTextItNeverSaw) {
    auto tokenizer = load_sentencepiece(model_path_);
    EXPECT_EQ(tokenizer->kind(), "sentencepiece");
    EXPECT_GT(tokenizer->vocab_size(), 256 + 1 + 3);
    EXPECT_LE(tokenizer->vocab_size(), 400);
    const std::vector<std::string> texts = {
        "the quick brown fox",
        "  two leading spaces,   three inside\n\nand blank lines\n",
        "\xc3\xbcn\xc3\xaf\x63\xc3\xb6\x64\xc3\xa9 \xf0\x9f\x99\x82 \xe6\x97\xa5\xe6\x9c\xac",  // never in the corpus
        "\ttab\r\n",
        "123+456=579",
    };
    for (const auto& text : texts) {
        std::vector<int64_t> ids = tokenizer->encode(text);
        EXPECT_EQ(tokenizer->decode(ids), text);
        // Byte fallback: no character is ever <unk> (id 0).
        EXPECT_EQ(std::count(ids.begin(), ids.end(), 0), 0) << "<unk> in the encoding of: " << text;
    }
    // Frequent words were merged: BPE did something.
    EXPECT_LT(tokenizer->encode("the quick brown fox").size(), std::string("the quick brown fox").size() / 2);
    // The visualiser's pieces concatenate back to the text (spaces shown as spaces, not U+2581).
    std::string joined;
    for (int64_t id : tokenizer->encode("the lazy dog\n")) joined += tokenizer->piece(id);
    EXPECT_EQ(joined, "the lazy dog\n");
}

TEST_F(TokenizerSentencePieceTest, SpecialsAreControlSymbolsThatTextCannotProduce) {
    auto tokenizer = load_sentencepiece(model_path_);
    EXPECT_EQ(tokenizer->specials(), kSpecials);
    // <unk> is 0; the control symbols take ids 1.. in the order given.
    for (size_t i = 0; i < kSpecials.size(); ++i) {
        EXPECT_EQ(tokenizer->special_id(kSpecials[i]), 1 + static_cast<int64_t>(i));
    }
    for (const std::string text : {"<|im_start|>", "x<|im_end|>y", "<|endoftext|><|im_start|>assistant\n"}) {
        std::vector<int64_t> ids = tokenizer->encode(text);
        for (const auto& special : kSpecials) {
            EXPECT_EQ(std::count(ids.begin(), ids.end(), tokenizer->special_id(special)), 0)
                << "encoding \"" << text << "\" produced " << special;
        }
        EXPECT_EQ(tokenizer->decode(ids), text);
    }
    // Special ids decode to their text, in place, between ordinary text.
    std::vector<int64_t> ids = {tokenizer->special_id("<|im_start|>")};
    for (int64_t id : tokenizer->encode("user\nhi")) ids.push_back(id);
    ids.push_back(tokenizer->special_id("<|im_end|>"));
    EXPECT_EQ(tokenizer->decode(ids), "<|im_start|>user\nhi<|im_end|>");
    EXPECT_EQ(tokenizer->piece(tokenizer->special_id("<|im_end|>")), "<|im_end|>");
    expect_contains(error_of([&] { tokenizer->special_id("<|bos|>"); }), {model_path_, "<|bos|>", "<|im_end|>"});
    expect_contains(error_of([&] { tokenizer->decode({5, tokenizer->vocab_size()}); }),
                    {std::to_string(tokenizer->vocab_size())});
}

TEST_F(TokenizerSentencePieceTest, SplitDigitsGivesOneTokenPerDigit) {
    auto split = load_sentencepiece(model_path_);
    for (const std::string number : {"12345", "2024", "987654321", "100"}) {
        std::vector<int64_t> ids = split->encode(number);
        ASSERT_EQ(ids.size(), number.size()) << number;
        for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(split->decode({ids[i]}), number.substr(i, 1));
    }
    // The flag is what makes it so: without it, the same corpus merges frequent digit pairs.
    SentencePieceTrainOptions options;
    options.vocab_size = 400;
    options.specials = kSpecials;
    options.split_digits = false;
    const std::string joined_path = (dir_ / "joined_digits.model").string();
    train_sentencepiece(small_corpus(), options, joined_path);
    auto joined = load_sentencepiece(joined_path);
    size_t split_total = 0, joined_total = 0;
    for (int n = 0; n < 300; n += 7) {
        split_total += split->encode(std::to_string(n * 13)).size();
        joined_total += joined->encode(std::to_string(n * 13)).size();
    }
    EXPECT_LT(joined_total, split_total);
}

TEST_F(TokenizerSentencePieceTest, CacheTrainsOnceAndKeysOnCorpusAndOptions) {
    const std::string cache = (dir_ / "cache" / "nested").string();  // created on demand
    SentencePieceTrainOptions options;
    options.vocab_size = 400;
    options.specials = kSpecials;
    const std::string first = cached_sentencepiece(small_corpus(), options, cache);
    ASSERT_TRUE(fs::exists(first));
    EXPECT_EQ(fs::path(first).parent_path(), fs::path(cache));
    EXPECT_EQ(fs::path(first).filename().string().rfind("sp-", 0), 0u) << first;
    // Backdate the file: a retrain would write a new one with a fresh modification time.
    const auto old_time = fs::file_time_type::clock::now() - std::chrono::hours(24);
    fs::last_write_time(first, old_time);
    const std::string second = cached_sentencepiece(small_corpus(), options, cache);
    EXPECT_EQ(second, first);
    EXPECT_EQ(fs::last_write_time(second), old_time) << "the cached model was trained again";

    auto corpus = small_corpus();
    corpus.push_back("one more sentence");
    EXPECT_NE(cached_sentencepiece(corpus, options, cache), first);
    options.split_digits = false;
    EXPECT_NE(cached_sentencepiece(small_corpus(), options, cache), first);
    // The cached model is the same tokenizer as a directly trained one with the same inputs.
    options.split_digits = true;
    EXPECT_EQ(load_sentencepiece(first)->fingerprint(), load_sentencepiece(model_path_)->fingerprint());
}

TEST_F(TokenizerSentencePieceTest, FingerprintSeparatesDifferentTokenizers) {
    const std::string fingerprint = load_sentencepiece(model_path_)->fingerprint();
    EXPECT_EQ(fingerprint.size(), 16u);
    EXPECT_EQ(load_sentencepiece(model_path_)->fingerprint(), fingerprint);
    EXPECT_NE(make_byte_tokenizer(kSpecials)->fingerprint(), fingerprint);
    SentencePieceTrainOptions options;
    options.vocab_size = 380;
    options.specials = kSpecials;
    const std::string other = (dir_ / "other.model").string();
    train_sentencepiece(small_corpus(), options, other);
    EXPECT_NE(load_sentencepiece(other)->fingerprint(), fingerprint);
}

// A .model we did not train (sentencepiece's defaults: <s> and </s> as control symbols, plus a
// user-defined piece): its specials are the control and user-defined pieces, in id order. Unlike our
// control symbols, SentencePiece's encoder does match a user-defined piece in text, and we keep that
// behaviour because encode() must equal Python's (tests/python/test_sentencepiece_interop.py).
TEST_F(TokenizerSentencePieceTest, ForeignModelSpecialsAreControlAndUserDefinedPieces) {
    const std::vector<std::string> corpus = small_corpus();
    size_t next = 0;
    struct Iterator : sentencepiece::SentenceIterator {
        const std::vector<std::string>& corpus;
        size_t& index;
        Iterator(const std::vector<std::string>& c, size_t& i) : corpus(c), index(i) {}
        bool done() const override { return index >= corpus.size(); }
        void Next() override { ++index; }
        const std::string& value() const override { return corpus[index]; }
        sentencepiece::util::Status status() const override { return {}; }
    } sentences(corpus, next);
    std::string serialized;
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        {{"model_type", "unigram"}, {"vocab_size", "120"}, {"user_defined_symbols", "<|tool|>"}, {"minloglevel", "2"}},
        &sentences, &serialized);
    ASSERT_TRUE(status.ok()) << status.ToString();
    const std::string path = (dir_ / "foreign.model").string();
    write_file_atomically(path, serialized.data(), serialized.size());

    auto tokenizer = load_sentencepiece(path);
    EXPECT_EQ(tokenizer->specials(), (std::vector<std::string>{"<s>", "</s>", "<|tool|>"}));
    EXPECT_EQ(tokenizer->special_id("<s>"), 1);
    // (The default add_dummy_prefix puts a "▁" piece before it.)
    const std::vector<int64_t> ids = tokenizer->encode("<|tool|>");
    EXPECT_EQ(std::count(ids.begin(), ids.end(), tokenizer->special_id("<|tool|>")), 1);
    EXPECT_EQ(tokenizer->decode({tokenizer->special_id("<s>"), tokenizer->special_id("<|tool|>")}), "<s><|tool|>");
}

TEST_F(TokenizerSentencePieceTest, LoadAndTrainErrorsNameTheFile) {
    const std::string missing = (dir_ / "no_such.model").string();
    expect_contains(error_of([&] { load_sentencepiece(missing); }), {missing, "not found"});
    const std::string garbage = (dir_ / "garbage.model").string();
    std::ofstream(garbage) << "this is not a protobuf, just some text\n";
    expect_contains(error_of([&] { load_sentencepiece(garbage); }), {garbage});

    SentencePieceTrainOptions options;
    options.vocab_size = 256;  // byte fallback alone needs 256 + <unk> + specials
    options.specials = kSpecials;
    const std::string small = (dir_ / "small.model").string();
    expect_contains(error_of([&] { train_sentencepiece(small_corpus(), options, small); }),
                    {small, "vocab_size 256", "too small"});
    EXPECT_FALSE(fs::exists(small));
    options.vocab_size = 400;
    expect_contains(error_of([&] { train_sentencepiece({}, options, small); }), {small, "empty corpus"});
}

}  // namespace
}  // namespace reftrain
