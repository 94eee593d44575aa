# Empty dependencies file for rbdgw.
# This may be replaced when dependencies are built.
