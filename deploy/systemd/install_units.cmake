# Install step (install(SCRIPT)): the systemd units with their paths
# rewritten to the install prefix given at install time (cmake --install
# --prefix P): ExecStart's binary under P/bin, the config and
# EnvironmentFile under P/etc (/etc when P is /usr), the docs under
# P/share/doc/bigsmall. Needs BIGSMALL_SOURCE_DIR and BIGSMALL_BINARY_DIR.
set(prefix "${CMAKE_INSTALL_PREFIX}")
if(prefix STREQUAL "/usr")
  set(etc "/etc")
else()
  set(etc "${prefix}/etc")
endif()
foreach(unit bigsmalld.service bigsmalld.socket)
  file(READ "${BIGSMALL_SOURCE_DIR}/deploy/systemd/${unit}" text)
  string(REPLACE "/usr/local/bin/" "${prefix}/bin/" text "${text}")
  string(REPLACE "/usr/local/share/doc/bigsmall/" "${prefix}/share/doc/bigsmall/" text "${text}")
  string(REPLACE "/etc/default/bigsmalld" "${etc}/default/bigsmalld" text "${text}")
  string(REPLACE "/etc/bigsmall/" "${etc}/bigsmall/" text "${text}")
  file(WRITE "${BIGSMALL_BINARY_DIR}/deploy/systemd/${unit}" "${text}")
  file(INSTALL "${BIGSMALL_BINARY_DIR}/deploy/systemd/${unit}"
       DESTINATION "${prefix}/lib/systemd/system" FILE_PERMISSIONS OWNER_READ OWNER_WRITE
       GROUP_READ WORLD_READ)
endforeach()
# Config files: etc/bigsmall/bigsmalld.json and etc/default/bigsmalld. An
# existing one (an upgrade) is kept; the new default goes next to it as
# .dist.
foreach(pair "bigsmall/bigsmalld.json=deploy/bigsmalld.example.json"
             "default/bigsmalld=deploy/systemd/bigsmalld.default")
  string(REPLACE "=" ";" pair "${pair}")
  list(GET pair 0 dest)
  list(GET pair 1 src)
  set(target "$ENV{DESTDIR}${etc}/${dest}")
  get_filename_component(dir "${etc}/${dest}" DIRECTORY)
  get_filename_component(name "${dest}" NAME)
  if(EXISTS "${target}")
    file(INSTALL "${BIGSMALL_SOURCE_DIR}/${src}" DESTINATION "${dir}"
         RENAME "${name}.dist" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  else()
    file(INSTALL "${BIGSMALL_SOURCE_DIR}/${src}" DESTINATION "${dir}"
         RENAME "${name}" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
  endif()
endforeach()
