// data/packing.cpp — rendered conversations -> fixed-length (B, T) batches (see data/packing.h).
//
// What is not obvious:
// - A row is T+1 tokens so that inputs (row[0:T]) and targets (row[1:T+1]) come from one slice; the
//   supervision flag of the PREDICTED token (row[t+1]) decides whether targets[t] counts: the rule of
//   shift_targets() (data/chat.h), shared with a single conversation and GRPO's batches.
// - Stream mode: row r covers stream tokens [r*T, r*T + T], so consecutive rows share one token. Every
//   stream token but the very first is then predicted exactly once; cutting T+1 fresh tokens per row
//   would silently drop one target per row.
// - The position is kept normalised: cursor < N always, and in stream mode offset < the length of the
//   conversation under the cursor. That is why an empty conversation is refused: it has no token to
//   stand on. The epoch's permutation is a function of (seed, epoch) alone, so DataPosition is enough
//   to resume bitwise.
#include "data/packing.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "kernels/bugs.h"
#include "kernels/cpu/ops.h"
#include "kernels/error.h"
#include "kernels/random.h"

namespace reftrain {
namespace {

// Fisher-Yates over 0..n-1 with a stream of its own per epoch, so resuming at epoch e needs no replay.
std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t epoch, int64_t n) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
    Rng rng = Rng::for_name(seed, "packing.epoch." + std::to_string(epoch));
    for (int64_t i = n - 1; i > 0; --i) {
        std::swap(order[i], order[static_cast<size_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
    }
    return order;
}

}  // namespace

Packer::Packer(const std::vector<RenderedConversation>& docs, int64_t seq_len, bool bos_aligned, uint64_t seed,
               int64_t pad_id)
    : docs_(docs), T_(seq_len), bos_aligned_(bos_aligned), seed_(seed), pad_id_(pad_id) {
    check(!docs_.empty(), "Packer: the dataset is empty (0 conversations); nothing to train on");
    check(T_ >= 1, "Packer: seq_len must be >= 1, got ", T_);
    check(pad_id_ >= 0, "Packer: pad_id must be a token id >= 0, got ", pad_id_);
    for (size_t i = 0; i < docs_.size(); ++i) {
        const RenderedConversation& doc = docs_[i];
        check(doc.ids.size() == doc.supervised.size(), "Packer: conversation ", i, " has ", doc.ids.size(),
              " ids but ", doc.supervised.size(), " supervision flags");
        check(!doc.ids.empty(), "Packer: conversation ", i, " has no tokens");
        if (bos_aligned_) {
            check(static_cast<int64_t>(doc.ids.size()) <= T_ + 1, "Packer: conversation ", i, " has ",
                  doc.ids.size(), " tokens, longer than a bos_aligned row of seq_len + 1 = ", T_ + 1,
                  " (skip or truncate it when building the dataset, or use stream packing)");
        }
    }
    start_epoch(0);
}

void Packer::start_epoch(int64_t epoch) {
    order_ = epoch_permutation(seed_, epoch, static_cast<int64_t>(docs_.size()));
    position_ = DataPosition{epoch, 0, 0};
}

void Packer::set_position(const DataPosition& position) {
    const auto n = static_cast<int64_t>(docs_.size());
    check(position.epoch >= 0, "Packer::set_position: epoch must be >= 0, got ", position.epoch);
    check(position.cursor >= 0 && position.cursor < n, "Packer::set_position: cursor ", position.cursor,
          " is out of range [0, ", n, ") for a dataset of ", n, " conversations (was it saved with other data?)");
    std::vector<int64_t> order = epoch_permutation(seed_, position.epoch, n);
    const auto length = static_cast<int64_t>(docs_[order[position.cursor]].ids.size());
    if (bos_aligned_) {
        check(position.offset == 0, "Packer::set_position: offset must be 0 in bos_aligned mode (rows start at "
              "conversation boundaries), got ", position.offset);
    } else {
        check(position.offset >= 0 && position.offset < length, "Packer::set_position: offset ", position.offset,
              " is out of range [0, ", length, ") for the conversation at cursor ", position.cursor,
              " of epoch ", position.epoch, " (was it saved with other data or another seed?)");
    }
    order_ = std::move(order);
    position_ = position;
}

void Packer::next_batch(int64_t batch_size, std::vector<int64_t>& input_ids, std::vector<int64_t>& targets) {
    check(batch_size >= 1, "Packer::next_batch: batch_size must be >= 1, got ", batch_size);
    const auto n = static_cast<int64_t>(docs_.size());
    input_ids.resize(static_cast<size_t>(batch_size * T_));
    targets.resize(static_cast<size_t>(batch_size * T_));
    std::vector<int64_t> row(static_cast<size_t>(T_ + 1));       // (T+1) token ids
    std::vector<uint8_t> supervised(static_cast<size_t>(T_ + 1));  // (T+1) flags of those tokens

    // Moves the cursor past the current conversation, into the next epoch after the last one.
    auto advance_conversation = [&]() {
        position_.offset = 0;
        if (++position_.cursor == n) start_epoch(position_.epoch + 1);
    };

    for (int64_t b = 0; b < batch_size; ++b) {
        int64_t filled = 0;
        if (bos_aligned_) {
            // Whole conversations while they fit (the first always does: none is longer than T+1).
            while (true) {
                const RenderedConversation& doc = docs_[order_[position_.cursor]];
                const auto length = static_cast<int64_t>(doc.ids.size());
                if (filled + length > T_ + 1) break;
                std::copy(doc.ids.begin(), doc.ids.end(), row.begin() + filled);
                std::copy(doc.supervised.begin(), doc.supervised.end(), supervised.begin() + filled);
                filled += length;
                advance_conversation();
                if (filled == T_ + 1) break;
            }
            std::fill(row.begin() + filled, row.end(), pad_id_);
            std::fill(supervised.begin() + filled, supervised.end(), uint8_t{0});
        } else {
            // T tokens that advance the stream, then the next one only peeked at: it is this row's
            // last target and the next row's first input.
            while (filled < T_) {
                const RenderedConversation& doc = docs_[order_[position_.cursor]];
                const int64_t take =
                    std::min(T_ - filled, static_cast<int64_t>(doc.ids.size()) - position_.offset);
                std::copy_n(doc.ids.begin() + position_.offset, take, row.begin() + filled);
                std::copy_n(doc.supervised.begin() + position_.offset, take, supervised.begin() + filled);
                filled += take;
                position_.offset += take;
                if (position_.offset == static_cast<int64_t>(doc.ids.size())) advance_conversation();
            }
            const RenderedConversation& next = docs_[order_[position_.cursor]];
            row[T_] = next.ids[position_.offset];
            supervised[T_] = next.supervised[position_.offset];
        }
        std::copy_n(row.begin(), T_, input_ids.begin() + b * T_);
        const std::span<int64_t> targets_out(targets.data() + b * T_, static_cast<size_t>(T_));
        shift_targets(row, supervised, targets_out);
        // BUG labels-all-masked: the collator masks every label (e.g. its response template never
        // matched the tokenized text), so nothing is supervised.
        if (bugs().labels_all_masked) std::fill(targets_out.begin(), targets_out.end(), cpu::kIgnoreIndex);
        // BUG pad-is-eos-masked: the padding is masked by its id (labels[labels == pad_id] = -100), and the
        // pad id is the end-of-turn id (pad_token = eos_token), so every real end-of-turn target goes too.
        if (bugs().pad_is_eos_masked) std::replace(targets_out.begin(), targets_out.end(), pad_id_, cpu::kIgnoreIndex);
    }
}

}  // namespace reftrain
