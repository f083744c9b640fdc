// Tests of this file are written by its owner (issue 8).
#include "gtest/gtest.h"
