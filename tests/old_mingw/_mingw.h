/* tests/old_mingw/_mingw.h - the suite's old_mingw_default test puts this folder first on the
 * include path: an older MinGW-w64 (before 8.0; TDM-GCC and Dev-C++ ship one) defaults
 * _WIN32_WINNT to 0x0502, Windows Server 2003, and so declares nothing Vista added. This makes
 * today's MinGW-w64 do the same, then includes the real _mingw.h. */
#ifndef _WIN32_WINNT
#define _WIN32_WINNT 0x0502
#endif
#include_next <_mingw.h>
