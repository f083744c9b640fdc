#include "hub/http.h"

// Implemented by the owner of this file (issue 8).
