file(REMOVE_RECURSE
  "librbdgw.a"
)
