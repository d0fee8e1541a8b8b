#include <gtest/gtest.h>

#include "vitq/util/allocator.h"

int main(int argc, char** argv) {
  vitq::keep_freed_memory();  // as the CLI does: without it page faults dominate the whole-model tests
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
