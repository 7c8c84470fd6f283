// data/chat.cpp — chat templates, loss masks, the visualiser and the JSONL conversation loader.
#include "data/chat.h"

#include "kernels/cpu/ops.h"
#include "kernels/error.h"

namespace reftrain {

std::vector<int64_t> shifted_targets(const RenderedConversation& rendered) {
    check(rendered.ids.size() == rendered.supervised.size(), "shifted_targets: ", rendered.ids.size(),
          " ids but ", rendered.supervised.size(), " supervision flags");
    const size_t n = rendered.ids.size();
    std::vector<int64_t> targets(n, cpu::kIgnoreIndex);
    // The flag of the token being PREDICTED decides: position t predicts token t + 1.
    for (size_t t = 0; t + 1 < n; ++t) {
        if (rendered.supervised[t + 1]) targets[t] = rendered.ids[t + 1];
    }
    return targets;
}

}  // namespace reftrain
