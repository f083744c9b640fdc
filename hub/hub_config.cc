#include "hub/hub_config.h"

// Implemented by the owner of this file (issue 8).
