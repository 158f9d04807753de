// The AVX-512 build's backward: clif_cpu_avx512.cpp compiled a second time, for its other half
// (that file says why).
#define CLIF_AVX512_BWD 1
#include "clif_cpu_avx512.cpp"
