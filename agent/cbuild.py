"""cffi out-of-line build of kvmplat.agent._kvmc (placeholder)."""
from cffi import FFI
ffibuilder = FFI()
ffibuilder.cdef("int kp_answer(void);")
ffibuilder.set_source("kvmplat.agent._kvmc", "int kp_answer(void) { return 42; }")
