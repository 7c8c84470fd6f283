// tests/test_packing.cpp — data/packing.h: batches are checked against a brute-force reconstruction
// of what the packer must have done, in both modes; stream mode loses no target at row boundaries;
// order is deterministic by (seed, epoch); a saved DataPosition resumes bitwise; bad data is refused.
//
// Token ids encode where they come from: id = 1000 * (conversation + 1) + position, so the test can
// decode any input token back to its conversation and position and rebuild the expected rows without
// knowing the packer's permutation. Padding is id 0, which no conversation uses.
#include <algorithm>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "data/packing.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/random.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

using namespace reftrain::testing;

constexpr int64_t kPad = 0;
constexpr int64_t kIgnore = cpu::kIgnoreIndex;

int64_t token_id(int64_t conversation, int64_t position) { return 1000 * (conversation + 1) + position; }
int64_t conversation_of(int64_t id) { return id / 1000 - 1; }
int64_t position_of(int64_t id) { return id % 1000; }

// Conversations shaped like rendered chats: an unsupervised BOS, an unsupervised prompt part, then a
// supervised answer part. With all_supervised every token is a target (the harshest case for stream
// mode, where then even a conversation's first token must not be lost at a row boundary).
std::vector<RenderedConversation> make_conversations(int64_t count, int64_t min_len, int64_t max_len,
                                                     uint64_t seed, bool all_supervised = false) {
    Rng rng(seed);
    std::vector<RenderedConversation> docs(static_cast<size_t>(count));
    for (int64_t c = 0; c < count; ++c) {
        const int64_t length = min_len + static_cast<int64_t>(rng.below(max_len - min_len + 1));
        const int64_t answer_start = 1 + static_cast<int64_t>(rng.below(length));  // may leave no answer
        for (int64_t p = 0; p < length; ++p) {
            docs[c].ids.push_back(token_id(c, p));
            docs[c].supervised.push_back(all_supervised || p >= answer_start ? 1 : 0);
        }
    }
    return docs;
}

struct Batch {
    std::vector<int64_t> inputs, targets;  // (B, T) each
};

std::vector<Batch> take_batches(Packer& packer, int64_t count, int64_t batch_size) {
    std::vector<Batch> batches(static_cast<size_t>(count));
    for (Batch& b : batches) {
        packer.next_batch(batch_size, b.inputs, b.targets);
        EXPECT_EQ(b.inputs.size(), static_cast<size_t>(batch_size * packer.seq_len()));
        EXPECT_EQ(b.targets.size(), b.inputs.size());
    }
    return batches;
}

// All rows of all batches, in order, as (inputs, targets) pairs of length T.
std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> rows_of(const std::vector<Batch>& batches,
                                                                           int64_t T) {
    std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> rows;
    for (const Batch& b : batches) {
        for (size_t start = 0; start < b.inputs.size(); start += static_cast<size_t>(T)) {
            rows.emplace_back(std::vector<int64_t>(b.inputs.begin() + start, b.inputs.begin() + start + T),
                              std::vector<int64_t>(b.targets.begin() + start, b.targets.begin() + start + T));
        }
    }
    return rows;
}

// Every consecutive block of n conversation indices (a complete epoch) is a permutation of 0..n-1.
void expect_epochs_are_permutations(const std::vector<int64_t>& order, int64_t n) {
    for (size_t start = 0; start + n <= order.size(); start += static_cast<size_t>(n)) {
        std::vector<int64_t> epoch(order.begin() + start, order.begin() + start + n);
        std::sort(epoch.begin(), epoch.end());
        std::vector<int64_t> all(static_cast<size_t>(n));
        std::iota(all.begin(), all.end(), int64_t{0});
        EXPECT_EQ(epoch, all) << "epoch starting at conversation #" << start << " is not a permutation";
    }
}

// bos_aligned: decodes each row into the conversations it holds, rebuilds the T+1 row from the data
// and checks inputs and targets exactly. Returns the conversation order the rows imply.
std::vector<int64_t> check_bos_aligned_rows(const std::vector<RenderedConversation>& docs, int64_t T,
                                            const std::vector<Batch>& batches) {
    std::vector<int64_t> order;
    const auto rows = rows_of(batches, T);
    for (size_t r = 0; r < rows.size(); ++r) {
        const auto& [inputs, targets] = rows[r];
        std::vector<int64_t> row(static_cast<size_t>(T + 1), kPad);
        std::vector<uint8_t> supervised(static_cast<size_t>(T + 1), 0);
        EXPECT_NE(inputs[0], kPad) << "row " << r << " is all padding";
        int64_t t = 0;
        while (t < T && inputs[t] != kPad) {
            const int64_t c = conversation_of(inputs[t]);
            EXPECT_EQ(position_of(inputs[t]), 0) << "row " << r << " position " << t
                                                 << " does not start a conversation (one was split)";
            const auto length = static_cast<int64_t>(docs[c].ids.size());
            EXPECT_LE(t + length, T + 1) << "row " << r << ": conversation " << c << " does not fit whole";
            if (t + length > T + 1) return order;
            std::copy(docs[c].ids.begin(), docs[c].ids.end(), row.begin() + t);
            std::copy(docs[c].supervised.begin(), docs[c].supervised.end(), supervised.begin() + t);
            order.push_back(c);
            t += length;
        }
        // Greedy: the conversation that opens the next row would not have fitted in this one.
        if (r + 1 < rows.size()) {
            const int64_t next = conversation_of(rows[r + 1].first[0]);
            EXPECT_GT(t + static_cast<int64_t>(docs[next].ids.size()), T + 1) << "row " << r << " left room";
        }
        for (int64_t i = 0; i < T; ++i) {
            EXPECT_EQ(inputs[i], row[i]) << "row " << r << " position " << i;
            EXPECT_EQ(targets[i], supervised[i + 1] ? row[i + 1] : kIgnore) << "row " << r << " position " << i;
            if (row[i + 1] == kPad) {
                EXPECT_EQ(targets[i], kIgnore) << "padding supervised at row " << r;
            }
        }
    }
    return order;
}

// Stream mode: the rows' inputs laid end to end are the stream (row r holds stream[r*T : r*T + T]);
// it must decode into whole conversations one after another. The expected target of the stream's
// last position needs the token after it, so the last row serves only as lookahead and is not checked.
std::vector<int64_t> check_stream_rows(const std::vector<RenderedConversation>& docs, int64_t T,
                                       const std::vector<Batch>& batches) {
    const auto rows = rows_of(batches, T);
    std::vector<int64_t> stream;
    for (const auto& row : rows) stream.insert(stream.end(), row.first.begin(), row.first.end());

    std::vector<int64_t> order, expected_ids;
    std::vector<uint8_t> expected_supervised;
    for (size_t s = 0; s < stream.size();) {
        const int64_t c = conversation_of(stream[s]);
        EXPECT_EQ(position_of(stream[s]), 0) << "stream token " << s << " does not start a conversation";
        if (position_of(stream[s]) != 0) return order;
        order.push_back(c);
        expected_ids.insert(expected_ids.end(), docs[c].ids.begin(), docs[c].ids.end());
        expected_supervised.insert(expected_supervised.end(), docs[c].supervised.begin(), docs[c].supervised.end());
        for (size_t p = 0; p < docs[c].ids.size() && s < stream.size(); ++p, ++s) {
            EXPECT_EQ(stream[s], docs[c].ids[p]) << "stream token " << s;
        }
    }
    for (size_t r = 0; r + 1 < rows.size(); ++r) {
        const auto& targets = rows[r].second;
        for (int64_t t = 0; t < T; ++t) {
            const size_t next = r * T + t + 1;
            EXPECT_EQ(targets[t], expected_supervised[next] ? expected_ids[next] : kIgnore)
                << "row " << r << " position " << t;
        }
    }
    return order;
}

// Small cases worked out by hand. With a single conversation every epoch is that conversation, so
// the rows are fixed by the rules alone.
RenderedConversation conversation(std::vector<int64_t> ids, std::vector<uint8_t> supervised) {
    return RenderedConversation{std::move(ids), std::move(supervised)};
}

TEST(PackingTest, HandWorkedRows) {
    std::vector<int64_t> inputs, targets;
    const int64_t X = kIgnore;
    {   // bos_aligned, 4 + 4 tokens fit in T+1 = 9, a third copy does not: one pad.
        const std::vector<RenderedConversation> docs = {conversation({10, 11, 12, 13}, {0, 0, 1, 1})};
        Packer packer(docs, 8, true, 1, kPad);
        packer.next_batch(1, inputs, targets);
        EXPECT_EQ(inputs, (std::vector<int64_t>{10, 11, 12, 13, 10, 11, 12, 13}));
        EXPECT_EQ(targets, (std::vector<int64_t>{X, 12, 13, X, X, 12, 13, X}));
        EXPECT_EQ(packer.position(), (DataPosition{2, 0, 0}));
    }
    {   // bos_aligned, 5 + 5 = 10 > T+1 = 9: one conversation and four pads per row.
        const std::vector<RenderedConversation> docs = {conversation({20, 21, 22, 23, 24}, {0, 0, 0, 1, 1})};
        Packer packer(docs, 8, true, 1, kPad);
        packer.next_batch(2, inputs, targets);
        EXPECT_EQ(inputs, (std::vector<int64_t>{20, 21, 22, 23, 24, 0, 0, 0, 20, 21, 22, 23, 24, 0, 0, 0}));
        EXPECT_EQ(targets, (std::vector<int64_t>{X, X, 23, 24, X, X, X, X, X, X, 23, 24, X, X, X, X}));
    }
    {   // bos_aligned, 3 + 3 = T+1 = 6 exactly: the second copy's last token is only a target.
        const std::vector<RenderedConversation> docs = {conversation({30, 31, 32}, {0, 1, 1})};
        Packer packer(docs, 5, true, 1, kPad);
        packer.next_batch(1, inputs, targets);
        EXPECT_EQ(inputs, (std::vector<int64_t>{30, 31, 32, 30, 31}));
        EXPECT_EQ(targets, (std::vector<int64_t>{31, 32, X, 31, 32}));
    }
    {   // bos_aligned, one-token conversations fill every slot, the hidden row[T] too: 4 per row.
        const std::vector<RenderedConversation> docs = {conversation({50}, {0})};
        Packer packer(docs, 3, true, 1, kPad);
        packer.next_batch(1, inputs, targets);
        EXPECT_EQ(inputs, (std::vector<int64_t>{50, 50, 50}));
        EXPECT_EQ(targets, (std::vector<int64_t>{X, X, X}));
        EXPECT_EQ(packer.position(), (DataPosition{4, 0, 0}));
    }
    {   // stream, T = 4 over the endless stream 40 41 42 40 41 42 ...: rows share one token.
        const std::vector<RenderedConversation> docs = {conversation({40, 41, 42}, {0, 1, 1})};
        Packer packer(docs, 4, false, 1, kPad);
        packer.next_batch(1, inputs, targets);
        EXPECT_EQ(inputs, (std::vector<int64_t>{40, 41, 42, 40}));
        EXPECT_EQ(targets, (std::vector<int64_t>{41, 42, X, 41}));
        EXPECT_EQ(packer.position(), (DataPosition{1, 0, 1}));  // stream token 4 = epoch 1's token 1
        packer.next_batch(1, inputs, targets);
        EXPECT_EQ(inputs, (std::vector<int64_t>{41, 42, 40, 41}));
        EXPECT_EQ(targets, (std::vector<int64_t>{42, X, 41, 42}));
    }
}

TEST(PackingTest, BosAlignedRowsHoldWholeConversationsAndExactTargets) {
    const int64_t T = 24;
    // Lengths 2..T+1, some filling a row exactly. (A one-token conversation can land on the hidden
    // row[T], where neither inputs nor targets show it: the decoder could not see it, so none here;
    // HandWorkedRows covers that length.)
    auto docs = make_conversations(37, 2, T + 1, 1);
    docs[5].ids.resize(T + 1);  // make sure a conversation of exactly T+1 tokens is present
    docs[5].supervised.assign(T + 1, 1);
    for (int64_t p = 0; p < T + 1; ++p) docs[5].ids[p] = token_id(5, p);
    docs[5].supervised[0] = 0;
    Packer packer(docs, T, /*bos_aligned=*/true, /*seed=*/9, kPad);
    const auto batches = take_batches(packer, 30, 3);
    const auto order = check_bos_aligned_rows(docs, T, batches);
    ASSERT_GE(order.size(), 2 * docs.size()) << "the test should cover more than one epoch";
    expect_epochs_are_permutations(order, static_cast<int64_t>(docs.size()));
}

TEST(PackingTest, StreamRowsShareOneTokenAndTargetsMatchTheStream) {
    const int64_t T = 16;
    const auto docs = make_conversations(23, 1, 40, 2);  // some longer than a row: they span rows
    Packer packer(docs, T, /*bos_aligned=*/false, /*seed=*/4, kPad);
    const auto batches = take_batches(packer, 20, 4);
    const auto rows = rows_of(batches, T);
    for (size_t r = 0; r + 1 < rows.size(); ++r) {
        // The last target of a row (when supervised) is the next row's first input.
        const int64_t last_target = rows[r].second[T - 1];
        if (last_target != kIgnore) {
            EXPECT_EQ(last_target, rows[r + 1].first[0]) << "row " << r;
        }
    }
    const auto order = check_stream_rows(docs, T, batches);
    ASSERT_GE(order.size(), 2 * docs.size());
    expect_epochs_are_permutations(order, static_cast<int64_t>(docs.size()));
}

// Conversations whose lengths add up to 1 + k*T: k stream rows then hold stream tokens 0 .. k*T,
// i.e. exactly one epoch, and predict stream tokens 1 .. k*T. The only token never predicted is the
// stream's very first one, so the supervised targets in those k rows must number exactly the
// supervised tokens of the epoch minus that first token's flag (0 for a BOS, 1 if all are supervised).
void check_stream_epoch_loses_no_target(bool all_supervised) {
    const int64_t T = 16;
    auto docs = make_conversations(11, 2, 30, 3, all_supervised);
    int64_t total = 0;
    for (const auto& d : docs) total += static_cast<int64_t>(d.ids.size());
    const int64_t extra = ((1 - total) % T + T) % T;  // grow the last conversation to reach 1 (mod T)
    for (int64_t i = 0; i < extra; ++i) {
        docs.back().ids.push_back(token_id(10, static_cast<int64_t>(docs.back().ids.size())));
        docs.back().supervised.push_back(1);
    }
    total += extra;
    ASSERT_EQ(total % T, 1);
    const int64_t rows = (total - 1) / T;
    int64_t supervised_tokens = 0;
    for (const auto& d : docs) supervised_tokens += d.num_supervised();

    Packer packer(docs, T, /*bos_aligned=*/false, /*seed=*/8, kPad);
    std::vector<int64_t> inputs, targets;
    packer.next_batch(rows, inputs, targets);
    const int64_t first_flag = docs[conversation_of(inputs[0])].supervised[0];
    const int64_t counted = std::count_if(targets.begin(), targets.end(), [](int64_t t) { return t != kIgnore; });
    EXPECT_EQ(counted, supervised_tokens - first_flag);
    if (all_supervised) {
        EXPECT_EQ(counted, total - 1);
    }
    // The position now stands on the epoch's last token: it opens the next row, whose targets are
    // already the next epoch's.
    EXPECT_EQ(packer.position().epoch, 0);
    EXPECT_EQ(packer.position().cursor, static_cast<int64_t>(docs.size()) - 1);
    packer.next_batch(1, inputs, targets);
    EXPECT_EQ(packer.position().epoch, 1);
}

TEST(PackingTest, StreamEpochLosesNoSupervisedTarget) { check_stream_epoch_loses_no_target(false); }
TEST(PackingTest, StreamEpochLosesNoTargetEvenWhenEveryTokenIsSupervised) {
    check_stream_epoch_loses_no_target(true);
}

TEST(PackingTest, SameSeedSameBatchesOtherSeedOtherOrder) {
    const auto docs = make_conversations(30, 1, 20, 5);
    for (bool bos_aligned : {true, false}) {
        SCOPED_TRACE(bos_aligned ? "bos_aligned" : "stream");
        Packer a(docs, 20, bos_aligned, 1, kPad), same(docs, 20, bos_aligned, 1, kPad);
        Packer other(docs, 20, bos_aligned, 2, kPad);
        const auto batches_a = take_batches(a, 6, 2), batches_same = take_batches(same, 6, 2);
        const auto batches_other = take_batches(other, 6, 2);
        bool all_equal_same = true, all_equal_other = true;
        for (size_t i = 0; i < batches_a.size(); ++i) {
            all_equal_same &= batches_a[i].inputs == batches_same[i].inputs;
            all_equal_same &= batches_a[i].targets == batches_same[i].targets;
            all_equal_other &= batches_a[i].inputs == batches_other[i].inputs;
        }
        EXPECT_TRUE(all_equal_same);
        EXPECT_FALSE(all_equal_other);
    }
}

TEST(PackingTest, EachEpochUsesItsOwnOrder) {
    const int64_t n = 20;
    const auto docs = make_conversations(n, 2, 10, 6);
    Packer packer(docs, 10, /*bos_aligned=*/true, /*seed=*/3, kPad);
    const auto order = check_bos_aligned_rows(docs, 10, take_batches(packer, 40, 4));
    ASSERT_GE(order.size(), static_cast<size_t>(3 * n));
    expect_epochs_are_permutations(order, n);
    const std::vector<int64_t> epoch0(order.begin(), order.begin() + n);
    const std::vector<int64_t> epoch1(order.begin() + n, order.begin() + 2 * n);
    const std::vector<int64_t> epoch2(order.begin() + 2 * n, order.begin() + 3 * n);
    EXPECT_NE(epoch0, epoch1);
    EXPECT_NE(epoch1, epoch2);
    EXPECT_NE(epoch0, epoch2);
}

TEST(PackingTest, SavedPositionResumesBitwise) {
    const auto docs = make_conversations(17, 1, 30, 7);
    for (bool bos_aligned : {true, false}) {
        SCOPED_TRACE(bos_aligned ? "bos_aligned" : "stream");
        for (int skip : {0, 1, 5, 9}) {  // 9 batches of 3 rows cross an epoch boundary in both modes
            Packer run(docs, 30, bos_aligned, 11, kPad);
            take_batches(run, skip, 3);
            const DataPosition saved = run.position();
            const auto expected = take_batches(run, 4, 3);

            Packer resumed(docs, 30, bos_aligned, 11, kPad);
            resumed.set_position(saved);
            EXPECT_EQ(resumed.position(), saved);
            const auto got = take_batches(resumed, 4, 3);
            for (size_t i = 0; i < expected.size(); ++i) {
                EXPECT_EQ(got[i].inputs, expected[i].inputs) << "after " << skip << " batches, batch " << i;
                EXPECT_EQ(got[i].targets, expected[i].targets) << "after " << skip << " batches, batch " << i;
            }
            EXPECT_EQ(resumed.position(), run.position());
            if (skip == 9) {
                EXPECT_GE(saved.epoch, 1);
            }
        }
    }
}

TEST(PackingTest, SetPositionRefusesPositionsOutsideTheData) {
    const auto docs = make_conversations(5, 3, 6, 8);
    Packer bos(docs, 8, true, 1, kPad), stream(docs, 8, false, 1, kPad);
    expect_error([&] { bos.set_position({-1, 0, 0}); }, {"epoch", "-1"});
    expect_error([&] { bos.set_position({0, 5, 0}); }, {"cursor 5", "[0, 5)"});
    expect_error([&] { stream.set_position({0, -1, 0}); }, {"cursor -1"});
    expect_error([&] { bos.set_position({0, 1, 2}); }, {"offset", "bos_aligned"});
    expect_error([&] { stream.set_position({0, 1, 6}); }, {"offset 6", "out of range"});
    expect_error([&] { stream.set_position({0, 1, -1}); }, {"offset -1"});
    // A refused position leaves the packer where it was.
    std::vector<int64_t> inputs_a, targets_a, inputs_b, targets_b;
    stream.next_batch(2, inputs_a, targets_a);
    Packer fresh(docs, 8, false, 1, kPad);
    fresh.next_batch(2, inputs_b, targets_b);
    EXPECT_EQ(inputs_a, inputs_b);
    EXPECT_NO_THROW(stream.set_position({3, 4, 2}));
}

TEST(PackingTest, RefusesConversationsLongerThanARowInBosAlignedMode) {
    auto docs = make_conversations(4, 2, 5, 9);
    docs[2] = make_conversations(1, 10, 10, 9)[0];
    expect_error([&] { Packer(docs, 8, true, 1, kPad); }, {"conversation 2", "10 tokens", "seq_len + 1 = 9"});
    EXPECT_NO_THROW(Packer(docs, 9, true, 1, kPad));   // exactly T+1 fits
    EXPECT_NO_THROW(Packer(docs, 8, false, 1, kPad));  // stream mode splits it across rows
}

TEST(PackingTest, RefusesEmptyDataAndMalformedConversations) {
    const std::vector<RenderedConversation> none;
    expect_error([&] { Packer(none, 8, true, 1, kPad); }, {"empty", "0 conversations"});
    expect_error([&] { Packer(none, 8, false, 1, kPad); }, {"empty"});
    auto docs = make_conversations(3, 2, 5, 10);
    docs[1].ids.clear();
    docs[1].supervised.clear();
    expect_error([&] { Packer(docs, 8, false, 1, kPad); }, {"conversation 1", "no tokens"});
    docs = make_conversations(3, 2, 5, 10);
    docs[2].supervised.pop_back();
    expect_error([&] { Packer(docs, 8, true, 1, kPad); }, {"conversation 2", "supervision flags"});
    docs = make_conversations(3, 2, 5, 10);
    expect_error([&] { Packer(docs, 0, true, 1, kPad); }, {"seq_len", "0"});
    Packer packer(docs, 8, true, 1, kPad);
    std::vector<int64_t> inputs, targets;
    expect_error([&] { packer.next_batch(0, inputs, targets); }, {"batch_size", "0"});
}

}  // namespace
}  // namespace reftrain
