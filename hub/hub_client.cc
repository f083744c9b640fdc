#include "hub/hub_client.h"

// Implemented by the owner of this file (issue 8).
