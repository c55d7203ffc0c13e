# ctest tsan_gomp_coverage (the -DVDFAST_SANITIZE=thread build): every GOMP_* function a test
# executable calls must be defined by tests/cpp/tsan_gomp.cpp, else TSan would not see the
# synchronisation behind it (false reports) -- or, worse, a new construct would go unmodelled.
# Calls that hand out loop iterations or pick the `single` thread order nothing and need no wrapper.
# Usage: cmake -DNM=nm "-DEXECUTABLES=a|b|c" -P check_gomp_coverage.cmake
string(REPLACE "|" ";" EXECUTABLES "${EXECUTABLES}")
set(missing "")
foreach(exe IN LISTS EXECUTABLES)
  execute_process(COMMAND "${NM}" -u "${exe}" OUTPUT_VARIABLE out RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} -u ${exe} failed")
  endif()
  # lines "U GOMP_parallel@GOMP_4.0" (the part after @ is a symbol version, not a function)
  string(REGEX MATCHALL "U GOMP_[A-Za-z0-9_]+" syms "${out}")
  foreach(s IN LISTS syms)
    string(SUBSTRING "${s}" 2 -1 s)
    if(NOT s MATCHES "^GOMP_(loop_[a-z_]*(start|next)|single_start)$")
      list(APPEND missing "${s} (${exe})")
    endif()
  endforeach()
endforeach()
if(missing)
  list(JOIN missing "\n  " text)
  message(FATAL_ERROR "GOMP_* functions called but not annotated by tests/cpp/tsan_gomp.cpp:\n  ${text}")
endif()
list(LENGTH EXECUTABLES n)
message(STATUS "tsan_gomp_coverage: every GOMP_* call in ${n} executables is annotated")
