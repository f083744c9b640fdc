#include "hub/secret.h"

// Implemented by the owner of this file (issue 8).
