#include "hub/hub_upload.h"

// Implemented by the owner of this file (issue 8).
