# daemon_bench (a harness, not a test). Included from bench/CMakeLists.txt
# when the service is built: include(${CMAKE_CURRENT_SOURCE_DIR}/daemon_bench.cmake)
if(BIGSMALL_BUILD_SERVICE)
  find_package(CLI11 CONFIG REQUIRED)
  find_package(gRPC CONFIG REQUIRED)
  find_package(Protobuf REQUIRED)
  add_executable(daemon_bench ${CMAKE_CURRENT_LIST_DIR}/daemon_bench.cc)
  target_link_libraries(daemon_bench PRIVATE bigsmall_client bigsmall_encoder CLI11::CLI11
    absl::str_format)
  target_compile_definitions(daemon_bench PRIVATE
    BIGSMALLD_PATH="$<TARGET_FILE:bigsmalld>"
    BIGSMALL_CLI_PATH="$<TARGET_FILE:bigsmall>")
  add_dependencies(daemon_bench bigsmalld bigsmall)
endif()

# gpu_e2e_bench: page cache -> GPU memory through bigsmalld vs the best
# uncompressed pinned-copy baseline (a harness; scripts/gpu_check.sh runs it).
if(BIGSMALL_BUILD_SERVICE)
  add_executable(gpu_e2e_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_e2e_bench.cc)
  target_link_libraries(gpu_e2e_bench PRIVATE bigsmall_client bigsmall_kernels CLI11::CLI11
    absl::str_format)
  target_compile_definitions(gpu_e2e_bench PRIVATE BIGSMALLD_PATH="$<TARGET_FILE:bigsmalld>")
  add_dependencies(gpu_e2e_bench bigsmalld)
endif()
