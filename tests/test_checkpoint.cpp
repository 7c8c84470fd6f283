// tests/test_checkpoint.cpp — train/checkpoint.h: a save/load round trip that is bitwise (weights,
// AdamW moments and step count, RNG states above 2^53, data position, fingerprints, extra) and a
// resumed step identical to an uninterrupted one; then one test per way a checkpoint can be bad
// (truncated, flipped bytes, wrong magic, newer version, missing files, another model or optimizer),
// each asserting the message and that the target model, optimizer and state were left untouched;
// finally the directory rules (no silent overwrite, a stale "<dir>.tmp" is replaced, never loaded).
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/random.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace reftrain {
namespace {

namespace fs = std::filesystem;

ModelConfig tiny_config() {
    ModelConfig c = testing::tiny_model_config();
    c.hidden_size = 8;  // smaller still: checkpoints are written and read many times
    c.intermediate_size = 12;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 4;
    c.initializer_range = 0.02;
    return c;
}

// A model and its optimizer, as the training loop owns them.
struct Trainee {
    std::unique_ptr<Transformer> model;
    std::unique_ptr<AdamW> optimizer;
    Trainee(const ModelConfig& config, uint64_t seed, DType dtype = DType::F32) {
        model = std::make_unique<Transformer>(config, 2, 4, dtype);
        model->init_weights(seed);
        AdamWConfig adam;
        adam.weight_decay = 0.1;
        optimizer = std::make_unique<AdamW>(model->params(), model->grads(), adam);
    }
    // One AdamW step on random gradients, so that both moments are far from zero.
    void step_on_random_grads(uint64_t seed) {
        Rng rng(seed);
        for (const Tensor& g : model->grads().tensors()) {
            for (int64_t i = 0; i < g.numel(); ++i) g.ptr<float>()[i] = static_cast<float>(0.1 * rng.normal());
        }
        optimizer->step(1e-2);
    }
};

std::vector<std::byte> bytes_of(const Arena& a) { return std::vector<std::byte>(a.data(), a.data() + a.nbytes()); }

std::vector<std::byte> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

void write_bytes(const fs::path& path, const std::vector<std::byte>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

TrainState sample_state() {
    TrainState s;
    s.step = 2;
    s.rng_states = {0, 1, (uint64_t{1} << 53) + 1, 0xfedcba9876543211ull, UINT64_MAX};
    s.data = DataPosition{3, 17, 5};
    s.template_fingerprint = "chatml:5b1f";
    s.tokenizer_fingerprint = "byte:256";
    s.extra = {{"loss_scale", 65536.0}, {"clean_steps", 123}, {"note", "x"}, {"nested", {{"a", {1, 2.5, nullptr}}}}};
    return s;
}

void expect_states_equal(const TrainState& got, const TrainState& want) {
    EXPECT_EQ(got.step, want.step);
    EXPECT_EQ(got.rng_states, want.rng_states);
    EXPECT_EQ(got.data, want.data);
    EXPECT_EQ(got.template_fingerprint, want.template_fingerprint);
    EXPECT_EQ(got.tokenizer_fingerprint, want.tokenizer_fingerprint);
    EXPECT_EQ(got.extra, want.extra) << got.extra.dump() << " vs " << want.extra.dump();
}

class CheckpointTest : public ::testing::Test {
protected:
    void SetUp() override {
        root_ = testing::scratch_dir("checkpoint_" + testing::current_test_name());
        trained_ = std::make_unique<Trainee>(tiny_config(), 1);
        trained_->step_on_random_grads(2);
        trained_->step_on_random_grads(3);
        run_config_ = {{"model", "tiny"}, {"schedule", {{"kind", "cosine"}, {"lr", 1e-3}}}};
    }

    std::string path(const std::string& name) const { return (root_ / name).string(); }

    // Saves the trained model under `name` and returns the directory.
    std::string save(const std::string& name, const TrainState& state = sample_state(), bool overwrite = false) {
        save_checkpoint(path(name), *trained_->model, *trained_->optimizer, state, run_config_, "", overwrite);
        return path(name);
    }

    // A copy of a good checkpoint with `damage` applied to it.
    std::string damaged_copy(const std::string& name, const std::function<void(const fs::path&)>& damage) {
        const std::string good = path("good");
        if (!fs::exists(good)) save("good");
        const fs::path copy = root_ / name;
        fs::copy(good, copy, fs::copy_options::recursive);
        damage(copy);
        return copy.string();
    }

    // Loading `dir` into a fresh model/optimizer/state must fail with every phrase in the message,
    // and leave all three exactly as they were.
    void expect_refused(const std::string& dir, const std::vector<std::string>& phrases,
                        Trainee* target = nullptr) {
        Trainee fresh(tiny_config(), 99);
        if (!target) target = &fresh;
        const std::vector<std::byte> params = bytes_of(target->model->params());
        const std::vector<std::byte> moments = bytes_of(target->optimizer->moments());
        const int64_t steps = target->optimizer->step_count();
        TrainState state;
        state.step = 777;
        state.rng_states = {42};
        state.extra = {{"untouched", true}};
        const TrainState state_before = state;
        try {
            load_checkpoint(dir, *target->model, target->optimizer.get(), state);
            ADD_FAILURE() << "load_checkpoint accepted " << dir;
        } catch (const Error& e) {
            const std::string message = e.what();
            for (const std::string& phrase : phrases) {
                EXPECT_NE(message.find(phrase), std::string::npos) << "message lacks \"" << phrase << "\":\n  " << message;
            }
        }
        EXPECT_EQ(bytes_of(target->model->params()), params) << "model changed by a refused load of " << dir;
        EXPECT_EQ(bytes_of(target->optimizer->moments()), moments) << "moments changed by a refused load of " << dir;
        EXPECT_EQ(target->optimizer->step_count(), steps);
        expect_states_equal(state, state_before);
    }

    fs::path root_;
    std::unique_ptr<Trainee> trained_;
    nlohmann::json run_config_;
};

TEST_F(CheckpointTest, RoundTripIsBitwise) {
    const TrainState saved = sample_state();
    const std::string dir = save("ckpt", saved);
    for (const char* file : {"model.safetensors", "config.json", "run.json", "state.bin"}) {
        EXPECT_TRUE(fs::is_regular_file(fs::path(dir) / file)) << file;
    }
    EXPECT_FALSE(fs::exists(fs::path(dir) / "tokenizer.model"));  // none given
    EXPECT_FALSE(fs::exists(dir + ".tmp"));

    Trainee restored(tiny_config(), 99);
    ASSERT_NE(bytes_of(restored.model->params()), bytes_of(trained_->model->params()));  // a real change to check
    TrainState state;
    load_checkpoint(dir, *restored.model, restored.optimizer.get(), state);
    EXPECT_EQ(bytes_of(restored.model->params()), bytes_of(trained_->model->params()));
    EXPECT_EQ(bytes_of(restored.optimizer->moments()), bytes_of(trained_->optimizer->moments()));
    EXPECT_EQ(restored.optimizer->step_count(), 2);
    expect_states_equal(state, saved);
    EXPECT_EQ(state.rng_states[2], 9007199254740993ull);  // 2^53 + 1: not representable as a double

    expect_states_equal(read_checkpoint_state(dir), saved);
    EXPECT_EQ(read_checkpoint_run_config(dir), run_config_);
    EXPECT_EQ(ModelConfig::load((fs::path(dir) / "config.json").string()).to_json(), tiny_config().to_json());

    // The next step from the restored objects is the next step of the uninterrupted run, bit for bit.
    trained_->step_on_random_grads(4);
    restored.step_on_random_grads(4);
    EXPECT_EQ(bytes_of(restored.model->params()), bytes_of(trained_->model->params()));
    EXPECT_EQ(bytes_of(restored.optimizer->moments()), bytes_of(trained_->optimizer->moments()));

    // Without an optimizer (sampling), only the weights and the state are restored.
    Trainee sampler(tiny_config(), 98);
    TrainState sampler_state;
    load_checkpoint(dir, *sampler.model, nullptr, sampler_state);
    EXPECT_EQ(sampler.optimizer->step_count(), 0);
    expect_states_equal(sampler_state, saved);
}

TEST_F(CheckpointTest, CopiesTheTokenizerModel) {
    const std::string tokenizer = path("tok.model");
    write_bytes(tokenizer, {std::byte{1}, std::byte{2}, std::byte{0}, std::byte{255}});
    const std::string dir = path("ckpt");
    save_checkpoint(dir, *trained_->model, *trained_->optimizer, sample_state(), run_config_, tokenizer);
    EXPECT_EQ(read_bytes(fs::path(dir) / "tokenizer.model"), read_bytes(tokenizer));

    // A tokenizer path that does not exist fails the save, naming it, and leaves nothing behind.
    try {
        save_checkpoint(path("ckpt2"), *trained_->model, *trained_->optimizer, sample_state(), run_config_,
                        path("absent.model"));
        ADD_FAILURE() << "saved with a missing tokenizer model";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("absent.model"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(path("ckpt2")));
    EXPECT_FALSE(fs::exists(path("ckpt2.tmp")));  // a failed save cleans up after itself
}

// state.bin layout: 8 magic, 4 version, 8 payload length, then 8 header length, header, moments, 4 CRC.
struct StateLayout {
    size_t size, header_begin, moments_begin;
};
StateLayout layout_of(const fs::path& state_bin) {
    const std::vector<std::byte> bytes = read_bytes(state_bin);
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | std::to_integer<uint64_t>(bytes[20 + i]);
    return {bytes.size(), 28, 28 + static_cast<size_t>(header_length)};
}

TEST_F(CheckpointTest, RefusesTruncatedStateFile) {
    save("good");
    const StateLayout layout = layout_of(root_ / "good" / "state.bin");
    ASSERT_GT(layout.size, layout.moments_begin + 100);  // the moments are really there
    const size_t cuts[] = {0, 5, 10, 19, 24, layout.header_begin + 10, layout.moments_begin - 1,
                           layout.moments_begin + 37, layout.size - 5, layout.size - 1};
    for (size_t cut : cuts) {
        SCOPED_TRACE("state.bin cut to " + std::to_string(cut) + " bytes");
        const std::string dir = damaged_copy("cut" + std::to_string(cut), [&](const fs::path& d) {
            std::vector<std::byte> bytes = read_bytes(d / "state.bin");
            bytes.resize(cut);
            write_bytes(d / "state.bin", bytes);
        });
        expect_refused(dir, {"state.bin", "truncated"});
    }
}

TEST_F(CheckpointTest, RefusesFlippedBytesByChecksum) {
    save("good");
    const StateLayout layout = layout_of(root_ / "good" / "state.bin");
    for (size_t at : {layout.header_begin - 3, layout.header_begin + 5, layout.moments_begin + 11, layout.size - 5}) {
        SCOPED_TRACE("state.bin byte " + std::to_string(at) + " flipped");
        const std::string dir = damaged_copy("flip" + std::to_string(at), [&](const fs::path& d) {
            std::vector<std::byte> bytes = read_bytes(d / "state.bin");
            bytes[at] ^= std::byte{0x10};
            write_bytes(d / "state.bin", bytes);
        });
        expect_refused(dir, {"state.bin", "corrupt", "CRC-32"});
    }
    // The checksum byte itself.
    const std::string dir = damaged_copy("flip_crc", [&](const fs::path& d) {
        std::vector<std::byte> bytes = read_bytes(d / "state.bin");
        bytes.back() ^= std::byte{0x01};
        write_bytes(d / "state.bin", bytes);
    });
    expect_refused(dir, {"state.bin", "corrupt", "CRC-32"});
}

TEST_F(CheckpointTest, RefusesFlippedByteInTheWeights) {
    const std::string dir = damaged_copy("weights", [](const fs::path& d) {
        std::vector<std::byte> bytes = read_bytes(d / "model.safetensors");
        bytes[bytes.size() - 6] ^= std::byte{0x40};  // inside the last tensor: the file still parses
        write_bytes(d / "model.safetensors", bytes);
    });
    expect_refused(dir, {"model.safetensors", "corrupt", "CRC-32"});
    const std::string cut = damaged_copy("weights_cut", [](const fs::path& d) {
        std::vector<std::byte> bytes = read_bytes(d / "model.safetensors");
        bytes.resize(bytes.size() / 2);
        write_bytes(d / "model.safetensors", bytes);
    });
    expect_refused(cut, {"model.safetensors", "truncated"});
}

TEST_F(CheckpointTest, RefusesWrongMagicAndNewerVersion) {
    const std::string magic = damaged_copy("magic", [](const fs::path& d) {
        std::vector<std::byte> bytes = read_bytes(d / "state.bin");
        bytes[3] = std::byte{'X'};
        write_bytes(d / "state.bin", bytes);
    });
    expect_refused(magic, {"state.bin", "bad magic", "RFTSTATE"});

    const std::string newer = damaged_copy("newer", [](const fs::path& d) {
        std::vector<std::byte> bytes = read_bytes(d / "state.bin");
        bytes[8] = static_cast<std::byte>(kCheckpointVersion + 1);
        write_bytes(d / "state.bin", bytes);
    });
    expect_refused(newer, {"state.bin", "version " + std::to_string(kCheckpointVersion + 1), "newer",
                           "reads version " + std::to_string(kCheckpointVersion)});
}

TEST_F(CheckpointTest, RefusesMissingFiles) {
    expect_refused(path("nowhere"), {"nowhere", "missing checkpoint directory"});
    for (const char* file : {"state.bin", "model.safetensors", "config.json"}) {
        SCOPED_TRACE(file);
        const std::string dir = damaged_copy(std::string("without_") + file, [&](const fs::path& d) {
            fs::remove(d / file);
        });
        expect_refused(dir, {file});
    }
    EXPECT_THROW(read_checkpoint_run_config(path("nowhere")), Error);
}

TEST_F(CheckpointTest, RefusesAnotherModelOrOptimizer) {
    save("good");
    // A model of another config: its weights do not fit (refused before anything is loaded).
    ModelConfig wider = tiny_config();
    wider.intermediate_size = 16;
    Trainee other(wider, 5);
    expect_refused(path("good"), {"model.safetensors", "mlp", "shape"}, &other);

    // The right model with an optimizer over another model's parameters: the moment table differs.
    Trainee right(tiny_config(), 6);
    Trainee mismatched(wider, 7);
    right.optimizer = std::move(mismatched.optimizer);  // AdamW over `wider`'s arenas, kept alive below
    expect_refused(path("good"), {"state.bin", "optimizer tensor table", "adam."}, &right);

    // Same shapes, another dtype: F64 moments cannot take the F32 bytes.
    Trainee doubles(tiny_config(), 8, DType::F64);
    expect_refused(path("good"), {"state.bin", "optimizer tensor table", "F32", "F64"}, &doubles);

    // The right shapes but another config value the tensors do not show.
    ModelConfig other_theta = tiny_config();
    other_theta.rope_theta = 500000.0;
    Trainee theta(other_theta, 9);
    expect_refused(path("good"), {"config.json", "rope_theta"}, &theta);
}

TEST_F(CheckpointTest, RefusesExistingDirectoryUnlessOverwrite) {
    TrainState first = sample_state();
    save("ckpt", first);
    TrainState second = sample_state();
    second.step = 3;
    try {
        save("ckpt", second);
        ADD_FAILURE() << "overwrote an existing checkpoint without overwrite";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos) << e.what();
    }
    expect_states_equal(read_checkpoint_state(path("ckpt")), first);

    save("ckpt", second, /*overwrite=*/true);
    expect_states_equal(read_checkpoint_state(path("ckpt")), second);
    EXPECT_FALSE(fs::exists(path("ckpt.old")));
    EXPECT_FALSE(fs::exists(path("ckpt.tmp")));

    // A crash between "rename old away" and "rename new in" leaves only <dir>.old; the refusal says where.
    fs::rename(path("ckpt"), path("ckpt.old"));
    expect_refused(path("ckpt"), {"missing checkpoint directory", "ckpt.old"});

    // overwrite deletes what is there, so it only replaces a checkpoint, never an unrelated folder.
    fs::create_directories(path("photos"));
    write_bytes(root_ / "photos" / "cat.jpg", {std::byte{7}});
    EXPECT_THROW(save("photos", second, true), Error);
    EXPECT_TRUE(fs::exists(root_ / "photos" / "cat.jpg"));
}

TEST_F(CheckpointTest, StaleTmpDirectoryIsReplacedAndNeverLoaded) {
    // What a crash half way through a save leaves behind: "<dir>.tmp" with a partial checkpoint.
    save("good");
    fs::copy(path("good"), path("ckpt.tmp"), fs::copy_options::recursive);
    fs::remove(root_ / "ckpt.tmp" / "state.bin");
    write_bytes(root_ / "ckpt.tmp" / "junk", {std::byte{1}});

    expect_refused(path("ckpt"), {"missing checkpoint directory"});  // the .tmp is not picked up
    expect_refused(path("ckpt.tmp"), {"unfinished"});                 // nor loaded when named
    EXPECT_THROW(read_checkpoint_state(path("ckpt.tmp")), Error);

    TrainState state = sample_state();
    state.step = 11;
    save("ckpt", state);
    EXPECT_FALSE(fs::exists(path("ckpt.tmp")));
    EXPECT_FALSE(fs::exists(root_ / "ckpt" / "junk"));
    Trainee restored(tiny_config(), 99);
    TrainState loaded;
    load_checkpoint(path("ckpt"), *restored.model, restored.optimizer.get(), loaded);
    EXPECT_EQ(loaded.step, 11);
    EXPECT_EQ(bytes_of(restored.model->params()), bytes_of(trained_->model->params()));

    // A complete checkpoint that a crash left just before its final rename is still refused by name.
    fs::copy(path("ckpt"), path("whole.tmp"), fs::copy_options::recursive);
    expect_refused(path("whole.tmp"), {"unfinished"});
}

}  // namespace
}  // namespace reftrain
