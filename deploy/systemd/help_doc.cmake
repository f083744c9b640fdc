# Build step: writes `EXE --help` into OUT (the man-style docs installed
# under share/doc/bigsmall). cmake -DEXE=... -DOUT=... -P help_doc.cmake
execute_process(COMMAND "${EXE}" --help OUTPUT_VARIABLE text ERROR_VARIABLE err
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} --help failed (${rc}): ${err}")
endif()
get_filename_component(name "${EXE}" NAME)
# CLI11 prints argv[0] (the build tree's path): the installed name instead.
string(REPLACE "${EXE}" "${name}" text "${text}")
file(WRITE "${OUT}" "${name} --help\n\n${text}")
