# Included right after mlx-c's project() call (CMAKE_PROJECT_INCLUDE), so that CMake's own
# compiler checks run without it: force-include mlxc_compat.h into every C++ source of mlx-c.
add_compile_options("SHELL:-include ${CMAKE_CURRENT_LIST_DIR}/mlxc_compat.h")
