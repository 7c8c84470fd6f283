// tools/cmd_rl.cpp — placeholder until the RL work fills it in.
#include "tools/commands.h"

namespace reftrain {

void register_rl_commands(CLI::App& app) {}

}  // namespace reftrain
