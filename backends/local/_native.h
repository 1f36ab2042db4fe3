/* Compiler portability shared by the native kernels (_fmkernel.c, _mcmc.c: one library). */
#ifndef RECSYS_NATIVE_H
#define RECSYS_NATIVE_H

#if defined(_MSC_VER) && !defined(__clang__)
#define RESTRICT __restrict
#define INLINE static __forceinline
#else
#define RESTRICT __restrict__
#define INLINE static inline __attribute__((always_inline))
#endif

/* What ctypes calls: a Windows DLL exports only what is marked (MSVC), elsewhere all is seen. */
#ifdef _WIN32
#define API __declspec(dllexport)
#else
#define API
#endif

#endif
