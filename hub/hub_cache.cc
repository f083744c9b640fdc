#include "hub/hub_cache.h"

// Implemented by the owner of this file (issue 8).
