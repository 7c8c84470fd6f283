// tests/test_safetensors.cpp — kernels/safetensors.h: round trips in every dtype, conversions on
// load and save, header padding, and one test per kind of bad file (written byte by byte here), each
// asserting that the error names the file and says what is wrong.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/safetensors.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = testing::scratch_dir("safetensors_" + testing::current_test_name());
    }

    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    // Writes a safetensors file by hand: u64 length (the header's, unless overridden), header, data.
    std::string write_raw(const std::string& name, const std::string& header, size_t data_bytes,
                          std::optional<uint64_t> length = std::nullopt) const {
        std::string p = path(name);
        std::ofstream out(p, std::ios::binary);
        uint64_t n = length.value_or(header.size());
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
        out << header;
        for (size_t i = 0; i < data_bytes; ++i) out.put(static_cast<char>(i & 0xff));
        return p;
    }

    fs::path dir_;
};

std::string open_error(const std::string& p, std::vector<std::string> phrases) {
    phrases.push_back(p);
    return expect_error([&] { SafetensorsFile::open(p); }, phrases);
}

TEST_F(SafetensorsTest, RoundTripAllDtypesWithMetadata) {
    std::vector<float> f32 = {1.5f, -2.25f, 3.0e-7f, 65504.0f, -0.0f, 1e30f};
    std::vector<double> f64 = {0.1, -1e300, 3.141592653589793, 2.0};
    std::vector<uint16_t> bf16 = {float_to_bf16(1.0f), float_to_bf16(-3.5f), 0x7f80, 0x0001};
    std::vector<uint16_t> f16 = {float_to_f16(0.5f), float_to_f16(-65504.0f), 0x0001};
    std::vector<int32_t> i32 = {0, -1, 2147483647, -2147483647 - 1};
    std::vector<int64_t> i64 = {int64_t{1} << 40, -5, 7};
    std::vector<uint8_t> u8 = {0, 1, 255, 128, 7};
    float scalar = 42.0f;
    std::vector<Tensor> tensors = {
        Tensor(f32.data(), DType::F32, {2, 3}, "layer.weight"),
        Tensor(f64.data(), DType::F64, {4}, "f64"),
        Tensor(bf16.data(), DType::BF16, {2, 2}, "bf16"),
        Tensor(f16.data(), DType::F16, {3, 1}, "f16"),
        Tensor(i32.data(), DType::I32, {2, 2}, "ids"),
        Tensor(i64.data(), DType::I64, {1, 3}, "big"),
        Tensor(u8.data(), DType::U8, {5}, "bytes"),
        Tensor(&scalar, DType::F32, std::vector<int64_t>{}, "scalar"),
        Tensor(nullptr, DType::F32, {0, 4}, "empty"),
    };
    const std::string p = path("all.safetensors");
    save_safetensors(p, tensors, {{"format", "pt"}, {"step", "12"}});
    for (const auto& e : fs::directory_iterator(fs::path(p).parent_path()))
        EXPECT_EQ(e.path().string().find(p + ".tmp"), std::string::npos) << "temp file left behind: " << e.path();

    SafetensorsFile file = SafetensorsFile::open(p);
    EXPECT_EQ(file.path(), p);
    EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}}));
    ASSERT_EQ(file.entries().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = tensors[i];
        const SafetensorsEntry& e = file.entries()[i];  // sorted by offset = the order they were saved
        EXPECT_EQ(e.name, t.name);
        EXPECT_EQ(e.dtype, t.dtype) << t.name;
        EXPECT_EQ(e.shape_str(), t.shape_str()) << t.name;
        EXPECT_EQ(e.end - e.begin, t.nbytes()) << t.name;
        EXPECT_TRUE(file.contains(t.name));
        if (t.nbytes()) { EXPECT_EQ(std::memcmp(file.raw_data(t.name), t.data, t.nbytes()), 0) << t.name; }
        std::vector<std::byte> back(t.nbytes());
        Tensor dst(back.data(), t.dtype, std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim),
                   "dst");
        file.read_into(t.name, dst);
        if (t.nbytes()) { EXPECT_EQ(std::memcmp(back.data(), t.data, t.nbytes()), 0) << t.name; }
    }
    EXPECT_FALSE(file.contains("missing"));

    // The header is padded with spaces so the data starts 8-byte aligned.
    std::ifstream in(p, std::ios::binary);
    unsigned char length_bytes[8];
    in.read(reinterpret_cast<char*>(length_bytes), 8);
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
    EXPECT_EQ(header_length % 8, 0u);
}

TEST_F(SafetensorsTest, SaveConvertsFloatTensorsToStoreDtypeAndKeepsIntegers) {
    std::vector<float> w = {1.0f, 1.00390625f, -3.14159f, 70000.0f};
    std::vector<int64_t> ids = {3, 1, 4};
    const std::string p = path("bf16.safetensors");
    save_safetensors(p, {Tensor(w.data(), DType::F32, {4}, "w"), Tensor(ids.data(), DType::I64, {3}, "ids")},
                     {}, DType::BF16);
    SafetensorsFile file = SafetensorsFile::open(p);
    EXPECT_EQ(file.entry("w").dtype, DType::BF16);
    EXPECT_EQ(file.entry("ids").dtype, DType::I64);
    std::vector<uint16_t> stored(4);
    std::memcpy(stored.data(), file.raw_data("w"), 8);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(stored[i], float_to_bf16(w[i])) << i;
    std::vector<int64_t> ids_back(3);
    file.read_into("ids", Tensor(ids_back.data(), DType::I64, {3}, "ids"));
    EXPECT_EQ(ids_back, ids);
}

TEST_F(SafetensorsTest, LoadConvertsFloatDtypes) {
    // Values chosen to hit bf16 ties, fp16 overflow and subnormals, and digits fp16 cannot hold.
    std::vector<float> values = {1.0f,      1.00390625f, 1.01171875f, -3.14159265f,
                                 65519.99f, 70000.0f,    1e-7f,       -2.5e-8f};
    const int64_t n = static_cast<int64_t>(values.size());
    std::vector<uint16_t> as_bf16(n), as_f16(n);
    for (int64_t i = 0; i < n; ++i) {
        as_bf16[i] = float_to_bf16(values[i]);
        as_f16[i] = float_to_f16(values[i]);
    }
    std::vector<double> as_f64 = {0.1, -1e-300, 1e300, 3.0};
    const std::string p = path("floats.safetensors");
    save_safetensors(p, {Tensor(values.data(), DType::F32, {2, n / 2}, "f32"),
                         Tensor(as_bf16.data(), DType::BF16, {2, n / 2}, "bf16"),
                         Tensor(as_f16.data(), DType::F16, {2, n / 2}, "f16"),
                         Tensor(as_f64.data(), DType::F64, {4}, "f64")});
    SafetensorsFile file = SafetensorsFile::open(p);

    std::vector<uint16_t> half(n);
    file.read_into("f32", Tensor(half.data(), DType::BF16, {2, n / 2}, "dst"));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(half[i], float_to_bf16(values[i])) << "F32->BF16 " << values[i];
    file.read_into("f32", Tensor(half.data(), DType::F16, {2, n / 2}, "dst"));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(half[i], float_to_f16(values[i])) << "F32->F16 " << values[i];
    std::vector<double> wide(n);
    file.read_into("f32", Tensor(wide.data(), DType::F64, {2, n / 2}, "dst"));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(wide[i], static_cast<double>(values[i])) << "F32->F64";

    std::vector<float> single(n);
    file.read_into("bf16", Tensor(single.data(), DType::F32, {2, n / 2}, "dst"));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(single[i], bf16_to_float(as_bf16[i])) << "BF16->F32";
    file.read_into("f16", Tensor(single.data(), DType::F32, {2, n / 2}, "dst"));
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(single[i], f16_to_float(as_f16[i])) << "F16->F32";
    file.read_into("bf16", Tensor(half.data(), DType::F16, {2, n / 2}, "dst"));
    for (int64_t i = 0; i < n; ++i)
        EXPECT_EQ(half[i], float_to_f16(bf16_to_float(as_bf16[i]))) << "BF16->F16";

    std::vector<float> narrowed(4);
    file.read_into("f64", Tensor(narrowed.data(), DType::F32, {4}, "dst"));
    for (int i = 0; i < 4; ++i) EXPECT_EQ(narrowed[i], static_cast<float>(as_f64[i])) << "F64->F32";
    EXPECT_EQ(narrowed[1], 0.0f);  // underflows to negative zero
    EXPECT_TRUE(std::signbit(narrowed[1]));
    EXPECT_TRUE(std::isinf(narrowed[2]));
}

TEST_F(SafetensorsTest, LoadConvertsIntegersWithRangeCheck) {
    std::vector<int64_t> small = {-2147483647 - 1, 0, 2147483647};
    std::vector<int64_t> large = {1, int64_t{1} << 31};
    std::vector<int32_t> i32 = {-7, 9};
    const std::string p = path("ints.safetensors");
    save_safetensors(
        p, {Tensor(small.data(), DType::I64, {3}, "small"), Tensor(large.data(), DType::I64, {2}, "large"),
            Tensor(i32.data(), DType::I32, {2}, "i32")});
    SafetensorsFile file = SafetensorsFile::open(p);
    std::vector<int32_t> narrow(3);
    file.read_into("small", Tensor(narrow.data(), DType::I32, {3}, "dst"));
    EXPECT_EQ(narrow, (std::vector<int32_t>{-2147483647 - 1, 0, 2147483647}));
    std::vector<int64_t> widened(2);
    file.read_into("i32", Tensor(widened.data(), DType::I64, {2}, "dst"));
    EXPECT_EQ(widened, (std::vector<int64_t>{-7, 9}));
    expect_error([&] { file.read_into("large", Tensor(narrow.data(), DType::I32, {2}, "dst")); },
                 {p, "'large'", "element 1 = 2147483648 does not fit in I32"});
    std::vector<float> floats(2);
    expect_error([&] { file.read_into("i32", Tensor(floats.data(), DType::F32, {2}, "dst")); },
                 {p, "'i32'", "cannot convert I32 to F32"});
}

TEST_F(SafetensorsTest, HeaderPaddedWithSpacesIsAccepted) {
    std::string header =
        R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    header += std::string(13, ' ');
    const std::string p = path("padded.safetensors");
    {
        std::ofstream out(p, std::ios::binary);
        uint64_t n = header.size();
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
        out << header;
        float values[2] = {0.5f, -4.0f};
        out.write(reinterpret_cast<const char*>(values), sizeof values);
    }
    SafetensorsFile file = SafetensorsFile::open(p);
    EXPECT_EQ(file.metadata().at("format"), "pt");
    float back[2] = {0, 0};
    file.read_into("w", Tensor(back, DType::F32, {2}, "w"));
    EXPECT_EQ(back[0], 0.5f);
    EXPECT_EQ(back[1], -4.0f);
}

TEST_F(SafetensorsTest, ReadIntoWrongShapeNamesBothShapes) {
    std::vector<float> w(6, 1.0f);
    const std::string p = path("shape.safetensors");
    save_safetensors(p, {Tensor(w.data(), DType::F32, {2, 3}, "proj.weight")});
    SafetensorsFile file = SafetensorsFile::open(p);
    std::vector<float> dst(6);
    expect_error(
        [&] {
            file.read_into("proj.weight", Tensor(dst.data(), DType::F32, {3, 2}, "model.proj"));
        },
        {p, "'proj.weight'", "(2, 3)", "(3, 2)", "model.proj"});
    expect_error([&] { file.read_into("proj.weight", Tensor(dst.data(), DType::F32, {6}, "flat")); },
                 {p, "(2, 3)", "(6)"});
}

TEST_F(SafetensorsTest, MissingTensorNamed) {
    std::vector<float> w(2, 1.0f);
    const std::string p = path("one.safetensors");
    save_safetensors(p, {Tensor(w.data(), DType::F32, {2}, "w")});
    SafetensorsFile file = SafetensorsFile::open(p);
    expect_error([&] { file.entry("lm_head.weight"); }, {p, "no tensor named 'lm_head.weight'"});
}

TEST_F(SafetensorsTest, SaveRefusesDuplicateNames) {
    std::vector<float> w(2, 1.0f);
    const std::string p = path("dup.safetensors");
    expect_error(
        [&] {
            save_safetensors(
                p, {Tensor(w.data(), DType::F32, {2}, "w"), Tensor(w.data(), DType::F32, {2}, "w")});
        },
        {p, "tensor name 'w' appears twice"});
    EXPECT_FALSE(fs::exists(p));
    expect_error([&] { save_safetensors(p, {Tensor(w.data(), DType::F32, {2}, "w")}, {}, DType::I32); },
                 {p, "store dtype I32 is not a float dtype"});
}

// --- Bad files, one kind each. ---

TEST_F(SafetensorsTest, BadFileMissing) {
    open_error(path("no_such.safetensors"), {"cannot open safetensors file"});
    open_error(dir_.string(), {"is a directory"});
}

TEST_F(SafetensorsTest, BadFileShorterThanLengthPrefix) {
    const std::string p = path("short.safetensors");
    std::ofstream(p, std::ios::binary) << "abcde";
    open_error(p, {"file is truncated: 5 bytes", "8-byte header length"});
}

TEST_F(SafetensorsTest, BadHeaderLengthPastEndOfFile) {
    const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    const std::string p = write_raw("long.safetensors", header, 4, 1000);
    open_error(p, {"header length 1000 runs past the end of the file"});
}

TEST_F(SafetensorsTest, BadHeaderInvalidJson) {
    const std::string p = write_raw("json.safetensors", R"({"w":{"dtype":"F32",,}})", 0);
    open_error(p, {"header is not valid JSON", "parse error at line 1, column"});
}

TEST_F(SafetensorsTest, BadHeaderNotAnObject) {
    const std::string p = write_raw("array.safetensors", "[1, 2, 3]", 0);
    open_error(p, {"header must be a JSON object", "got array"});
}

TEST_F(SafetensorsTest, BadEntryNotAnObject) {
    const std::string p = write_raw("entry.safetensors", R"({"w":[0,4]})", 4);
    open_error(p, {"tensor 'w'", "entry must be a JSON object", "got array"});
}

TEST_F(SafetensorsTest, BadEntryMissingField) {
    const std::string headers[] = {R"({"w":{"shape":[1],"data_offsets":[0,4]}})",
                                   R"({"w":{"dtype":"F32","data_offsets":[0,4]}})",
                                   R"({"w":{"dtype":"F32","shape":[1]}})"};
    const char* fields[] = {"dtype", "shape", "data_offsets"};
    for (int i = 0; i < 3; ++i) {
        const std::string p = write_raw(std::string("missing_") + fields[i] + ".safetensors", headers[i], 4);
        open_error(p, {"tensor 'w'", std::string("missing field '") + fields[i] + "'"});
    }
}

TEST_F(SafetensorsTest, BadEntryWrongJsonTypes) {
    struct Case {
        const char* header;
        const char* phrase;
    };
    const Case cases[] = {
        {R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", "field 'dtype' must be a string"},
        {R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})",
         "field 'shape' must be an array of integers"},
        {R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
         "field 'shape' must be an array of integers"},
        {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})",
         "field 'data_offsets' must be [begin, end]"},
        {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})",
         "field 'data_offsets' must be [begin, end]"},
        {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,4]}})",
         "field 'data_offsets' must be [begin, end]"},
        {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"offset":0}})", "unknown field 'offset'"},
    };
    int i = 0;
    for (const Case& c : cases) {
        const std::string p = write_raw("types_" + std::to_string(i++) + ".safetensors", c.header, 4);
        open_error(p, {"tensor 'w'", c.phrase});
    }
}

TEST_F(SafetensorsTest, BadEntryUnknownDtype) {
    const std::string p =
        write_raw("dtype.safetensors", R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4);
    open_error(p, {"tensor 'w'", "unknown dtype 'F8_E4M3'", "known: F32, F64, BF16, F16, I32, I64, U8"});
}

TEST_F(SafetensorsTest, BadEntryNegativeDimension) {
    const std::string p =
        write_raw("neg.safetensors", R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}})", 16);
    open_error(p, {"tensor 'w'", "negative dimension -2"});
}

TEST_F(SafetensorsTest, BadEntryBeginAfterEnd) {
    const std::string p =
        write_raw("order.safetensors", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8);
    open_error(p, {"tensor 'w'", "data_offsets begin 8 > end 4"});
}

TEST_F(SafetensorsTest, BadEntryOffsetsPastEndOfData) {
    // Two tensors declared, but the file stops 8 bytes into the second: a truncated download.
    const std::string header =
        R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
        R"("b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})";
    const std::string p = write_raw("truncated.safetensors", header, 24);
    open_error(p, {"tensor 'b'", "data_offsets [16, 32] run past the end of the data buffer (24 bytes"});
}

TEST_F(SafetensorsTest, BadLayoutOverlappingTensors) {
    const std::string header =
        R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
    const std::string p = write_raw("overlap.safetensors", header, 16);
    open_error(p, {"tensors 'a'", "'b'", "overlap in the data buffer"});
}

TEST_F(SafetensorsTest, BadLayoutHole) {
    const std::string middle =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})";
    open_error(write_raw("hole.safetensors", middle, 20),
               {"hole in the data buffer: bytes [8, 12) before tensor 'b' are not covered by any tensor"});
    const std::string trailing = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    open_error(write_raw("trailing.safetensors", trailing, 12),
               {"hole in the data buffer: bytes [8, 12) at its end are not covered by any tensor"});
}

TEST_F(SafetensorsTest, BadEntryByteSizeDoesNotMatchShape) {
    const std::string p =
        write_raw("size.safetensors", R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12);
    open_error(
        p, {"tensor 'w'", "byte size does not match shape", "span 12 bytes", "(2, 2) of F32 needs 16 bytes"});
}

TEST_F(SafetensorsTest, BadHeaderDuplicateTensorName) {
    const std::string header =
        R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
        R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
    const std::string p = write_raw("dupname.safetensors", header, 8);
    open_error(p, {"duplicate tensor name 'w'"});
}

TEST_F(SafetensorsTest, BadMetadataNotStringToString) {
    const std::string tensor = R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
    open_error(write_raw("meta_value.safetensors", R"({"__metadata__":{"step":12},)" + tensor + "}", 4),
               {"__metadata__ must be an object of string to string", "key 'step' has a number value 12"});
    open_error(write_raw("meta_array.safetensors", R"({"__metadata__":["pt"],)" + tensor + "}", 4),
               {"__metadata__ must be an object of string to string, got array"});
}

}  // namespace
}  // namespace reftrain
