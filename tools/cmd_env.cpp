// tools/cmd_env.cpp — placeholder until the RL work fills it in.
#include "tools/commands.h"

namespace reftrain {

void register_env_commands(CLI::App& app) {}

}  // namespace reftrain
