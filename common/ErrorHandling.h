/*
 * ErrorHandling.h - the error helpers every stage shares.
 *
 * The book's ErrorHandling(message) prints a message and exits. This one also says WHY the call
 * failed: it asks Windows for the error text (FormatMessage), in English so that logs and test
 * output read the same on every machine, and falls back to the system's own language, then to the
 * bare number.
 *
 *   ErrorHandling("bind()")                 fatal: WSAGetLastError()'s text, exit code 1
 *   ErrorHandlingCode("CreateThread()", e)  fatal: an explicit code (GetLastError(), a GQCS code...)
 *   ReportError("recv()", e)                not fatal: one connection failed; log it and go on
 *
 * Header-only on purpose: a stage still builds with one command naming one .c file.
 */
#ifndef ERROR_HANDLING_H
#define ERROR_HANDLING_H

#include <winsock2.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

/* Fills text with the system's message for code, without the trailing CR/LF. */
static inline void GetErrorText(DWORD code, char *text, DWORD textSize)
{
    DWORD flags = FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS;
    DWORD len = FormatMessageA(flags, NULL, code, MAKELANGID(LANG_ENGLISH, SUBLANG_ENGLISH_US),
                               text, textSize, NULL);
    if (len == 0) /* no English message table installed: take the system's language */
        len = FormatMessageA(flags, NULL, code, 0, text, textSize, NULL);
    if (len == 0) {
        snprintf(text, textSize, "unknown error");
        return;
    }
    while (len > 0 && (text[len - 1] == '\r' || text[len - 1] == '\n' || text[len - 1] == ' '))
        text[--len] = '\0';
}

/* A per-connection failure: report it on stderr and return, so the caller closes that connection. */
static inline void ReportError(const char *funcName, DWORD code)
{
    char text[512];
    GetErrorText(code, text, sizeof(text));
    fprintf(stderr, "%s failed: error %lu: %s\n", funcName, (unsigned long)code, text);
    fflush(stderr);
}

/* A failure the program cannot go on after (start-up): report it and exit with code 1. */
static inline void ErrorHandlingCode(const char *funcName, DWORD code)
{
    ReportError(funcName, code);
    exit(1);
}

/* The book's ErrorHandling, for a Winsock call that just failed. */
static inline void ErrorHandling(const char *funcName)
{
    ErrorHandlingCode(funcName, (DWORD)WSAGetLastError());
}

#endif /* ERROR_HANDLING_H */
