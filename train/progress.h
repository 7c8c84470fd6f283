// train/progress.h — the training loop's live progress line on a terminal: one line, redrawn in place,
// that always fits the terminal's width (a line one column too long wraps, and every redraw then leaves
// a stale copy of its tail behind).
#pragma once

#include <cstdint>
#include <string>

namespace reftrain {

struct ProgressState {
    int64_t step = 0, max_steps = 0;
    double loss = 0.0, lr = 0.0, grad_norm = 0.0, tokens_per_second = 0.0, eta_seconds = 0.0;
};

// "[#####.....] step 12/100 loss 2.3456 lr 1.00e-03 gnorm 0.512 12345 tok/s ETA 0m42s", shortened to at
// most `columns` - 1 characters: the bar narrows first (to 10 cells), then lr, gnorm and tok/s go, then the
// bar itself; "step N/M" and the loss stay. The cursor never reaches the last column.
std::string format_progress(const ProgressState& s, int columns);

// "0m42s", "1h05m".
std::string format_duration(double seconds);

// The width of the terminal on `fd` (TIOCGWINSZ), else $COLUMNS, else 80.
int terminal_columns(int fd);

}  // namespace reftrain
