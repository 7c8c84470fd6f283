// tools/cmd_report.cpp — `reftrain report RUN_DIR [--out FILE]`: one self-contained HTML page that shows a
// run (debug/report.h, docs/report.md). The page goes to RUN_DIR/report.html unless --out says otherwise.
#include <cstdio>
#include <memory>
#include <string>

#include "debug/report.h"
#include "tools/commands.h"

namespace reftrain {

void register_report_command(CLI::App& app) {
    struct Args {
        std::string run_dir, out;
    };
    auto args = std::make_shared<Args>();
    CLI::App* cmd = app.add_subcommand("report", "Write RUN_DIR/report.html: the run's curves, tracer heat maps, "
                                                 "samples and config on one page (no network, no script)");
    cmd->add_option("run_dir", args->run_dir, "a run directory (holding metrics.jsonl)")->required();
    cmd->add_option("--out", args->out, "where to write the page (default RUN_DIR/report.html)");
    cmd->callback([args] {
        const std::string path = write_run_report(args->run_dir, args->out);
        std::printf("report: %s\n", path.c_str());
    });
}

}  // namespace reftrain
