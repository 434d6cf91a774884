// Kernel launches and dynamic shared memory, spelled so that the same source also compiles as C++ for the host
// emulator (kernels/emu/cuemu.h, PTOOL_CUDA_EMULATED=1), where <<<...>>> does not exist:
//   PTOOL_LAUNCH(kernel, grid, block, smem, stream)(args...)   is   kernel<<<grid, block, smem, stream>>>(args...)
//   PTOOL_DYNAMIC_SMEM(T, name);                               is   extern __shared__ T name[];
#pragma once
#if PTOOL_CUDA_EMULATED
#include "kernels/emu/cuemu.h"
#else
#define PTOOL_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define PTOOL_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif
