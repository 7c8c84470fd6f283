// probes/envs.cpp — placeholder until the environments land.
#include "probes/envs.h"
