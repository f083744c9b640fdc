# Seed generator for the decoder fuzzers (a normal build target; see make_seeds.cc).
add_executable(fuzz_make_seeds ${CMAKE_CURRENT_LIST_DIR}/make_seeds.cc)
target_link_libraries(fuzz_make_seeds PRIVATE bigsmall_encoder)
target_compile_definitions(fuzz_make_seeds PRIVATE BIGSMALL_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
