// data/packing.h — rendered conversations -> fixed-length (B, T) training batches.
//
// Each row holds T+1 tokens; inputs are row[0:T], targets are row[1:T+1] where the token is
// supervised, kIgnoreIndex elsewhere (so mask and targets shift together).
//   bos_aligned = true   every row starts at the beginning of a conversation (its BOS); whole
//                        conversations are appended while they fit; the rest is padding (never
//                        supervised). A conversation longer than T+1 is refused at construction
//                        (the dataset builder skips and counts such conversations beforehand).
//   bos_aligned = false  conversations are concatenated into one stream and cut every T tokens
//                        (consecutive rows share one token so no target is lost); a conversation
//                        may span rows.
// Order: each epoch visits every conversation once in a permutation drawn from (seed, epoch).
// DataPosition says where the next batch starts; checkpoints save it and resuming restores it.
#pragma once

#include <cstdint>
#include <vector>

#include "data/chat.h"

namespace reftrain {

struct DataPosition {
    int64_t epoch = 0;    // completed passes over the data
    int64_t cursor = 0;   // index into this epoch's permutation of the next conversation to use
    int64_t offset = 0;   // tokens of that conversation already emitted (stream mode only)
    bool operator==(const DataPosition&) const = default;
};

class Packer {
public:
    // `docs` must outlive the packer and be non-empty (an empty dataset fails with a clear message).
    Packer(const std::vector<RenderedConversation>& docs, int64_t seq_len, bool bos_aligned, uint64_t seed,
           int64_t pad_id);
    // Fills input_ids and targets, each resized to (B * T), row-major.
    void next_batch(int64_t batch_size, std::vector<int64_t>& input_ids, std::vector<int64_t>& targets);
    DataPosition position() const { return position_; }
    void set_position(const DataPosition& position);   // validates it against the data
    int64_t seq_len() const { return T_; }

private:
    const std::vector<RenderedConversation>& docs_;
    int64_t T_;
    bool bos_aligned_;
    uint64_t seed_;
    int64_t pad_id_;
    DataPosition position_;
    std::vector<int64_t> order_;   // permutation for position_.epoch
    void start_epoch(int64_t epoch);
};

}  // namespace reftrain
