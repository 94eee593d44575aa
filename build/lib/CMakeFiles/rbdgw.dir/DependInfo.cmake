
# Consider dependencies only in project.
set(CMAKE_DEPENDS_IN_PROJECT_ONLY OFF)

# The set of languages for which implicit dependencies are needed:
set(CMAKE_DEPENDS_LANGUAGES
  )

# The set of dependency files which are needed:
set(CMAKE_DEPENDS_DEPENDENCY_FILES
  "/work/main/lib/common/error.cpp" "lib/CMakeFiles/rbdgw.dir/common/error.cpp.o" "gcc" "lib/CMakeFiles/rbdgw.dir/common/error.cpp.o.d"
  "/work/main/lib/common/log.cpp" "lib/CMakeFiles/rbdgw.dir/common/log.cpp.o" "gcc" "lib/CMakeFiles/rbdgw.dir/common/log.cpp.o.d"
  "/work/main/lib/crypto/secret.cpp" "lib/CMakeFiles/rbdgw.dir/crypto/secret.cpp.o" "gcc" "lib/CMakeFiles/rbdgw.dir/crypto/secret.cpp.o.d"
  "/work/main/lib/rbd/cluster.cpp" "lib/CMakeFiles/rbdgw.dir/rbd/cluster.cpp.o" "gcc" "lib/CMakeFiles/rbdgw.dir/rbd/cluster.cpp.o.d"
  "/work/main/lib/rbd/image.cpp" "lib/CMakeFiles/rbdgw.dir/rbd/image.cpp.o" "gcc" "lib/CMakeFiles/rbdgw.dir/rbd/image.cpp.o.d"
  "/work/main/lib/rbd/spec.cpp" "lib/CMakeFiles/rbdgw.dir/rbd/spec.cpp.o" "gcc" "lib/CMakeFiles/rbdgw.dir/rbd/spec.cpp.o.d"
  )

# Targets to which this target links.
set(CMAKE_TARGET_LINKED_INFO_FILES
  )

# Fortran module output directory.
set(CMAKE_Fortran_TARGET_MODULE_DIR "")
