file(REMOVE_RECURSE
  "CMakeFiles/rbdgw.dir/common/error.cpp.o"
  "CMakeFiles/rbdgw.dir/common/error.cpp.o.d"
  "CMakeFiles/rbdgw.dir/common/log.cpp.o"
  "CMakeFiles/rbdgw.dir/common/log.cpp.o.d"
  "CMakeFiles/rbdgw.dir/crypto/secret.cpp.o"
  "CMakeFiles/rbdgw.dir/crypto/secret.cpp.o.d"
  "CMakeFiles/rbdgw.dir/rbd/cluster.cpp.o"
  "CMakeFiles/rbdgw.dir/rbd/cluster.cpp.o.d"
  "CMakeFiles/rbdgw.dir/rbd/image.cpp.o"
  "CMakeFiles/rbdgw.dir/rbd/image.cpp.o.d"
  "CMakeFiles/rbdgw.dir/rbd/spec.cpp.o"
  "CMakeFiles/rbdgw.dir/rbd/spec.cpp.o.d"
  "librbdgw.a"
  "librbdgw.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang CXX)
  include(CMakeFiles/rbdgw.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
