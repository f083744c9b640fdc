#include "hub/repo_ref.h"

// Implemented by the owner of this file (issue 8).
