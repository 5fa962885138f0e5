/*
 * ErrorHandling.h - the error and log helpers every stage shares.
 *
 * The book's ErrorHandling(message) prints a message and exits. This one also says WHY the call
 * failed: it asks Windows for the error text (FormatMessage), in English so that logs and test
 * output read the same on every machine, and falls back to the system's own language, then to the
 * bare number.
 *
 *   ErrorHandling("bind()")                 fatal: WSAGetLastError()'s text, exit code 1
 *   ErrorHandlingCode("CreateThread()", e)  fatal: an explicit code (GetLastError(), a GQCS code...)
 *   ReportError("recv()", e)                not fatal: one connection failed; log it and go on
 *   LogLine("Connected client %s", peer)    one log line on stdout, written whole and at once
 *
 * An error line reads:  bind() failed: error 10048 (WSAEADDRINUSE): Only one usage of each socket...
 *
 * Header-only on purpose: a stage still builds with one command naming one .c file.
 */
#ifndef ERROR_HANDLING_H
#define ERROR_HANDLING_H

#include <winsock2.h>
#include <windows.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The codes a socket program meets most, with their names (what to search for) and Windows' own
 * text for them: some systems, Wine among them, have no message text for most Winsock codes. */
typedef struct {
    DWORD code;
    const char *name;
    const char *text;
} ERROR_INFO;

static const ERROR_INFO knownErrors[] = {
    {ERROR_NETNAME_DELETED, "ERROR_NETNAME_DELETED", "The specified network name is no longer available."},
    {ERROR_OPERATION_ABORTED, "ERROR_OPERATION_ABORTED", "The I/O operation has been aborted because of either a thread exit or an application request."},
    {ERROR_CONNECTION_ABORTED, "ERROR_CONNECTION_ABORTED", "The network connection was aborted by the local system."},
    {WSAEINTR, "WSAEINTR", "A blocking operation was interrupted by a call to WSACancelBlockingCall."},
    {WSAEACCES, "WSAEACCES", "An attempt was made to access a socket in a way forbidden by its access permissions."},
    {WSAEFAULT, "WSAEFAULT", "The system detected an invalid pointer address in attempting to use a pointer argument in a call."},
    {WSAEINVAL, "WSAEINVAL", "An invalid argument was supplied."},
    {WSAEMFILE, "WSAEMFILE", "Too many open sockets."},
    {WSAEWOULDBLOCK, "WSAEWOULDBLOCK", "A non-blocking socket operation could not be completed immediately."},
    {WSAENOTSOCK, "WSAENOTSOCK", "An operation was attempted on something that is not a socket."},
    {WSAEADDRINUSE, "WSAEADDRINUSE", "Only one usage of each socket address (protocol/network address/port) is normally permitted."},
    {WSAEADDRNOTAVAIL, "WSAEADDRNOTAVAIL", "The requested address is not valid in its context."},
    {WSAENETDOWN, "WSAENETDOWN", "A socket operation encountered a dead network."},
    {WSAENETUNREACH, "WSAENETUNREACH", "A socket operation was attempted to an unreachable network."},
    {WSAECONNABORTED, "WSAECONNABORTED", "An established connection was aborted by the software in your host machine."},
    {WSAECONNRESET, "WSAECONNRESET", "An existing connection was forcibly closed by the remote host."},
    {WSAENOBUFS, "WSAENOBUFS", "An operation on a socket could not be performed because the system lacked sufficient buffer space or because a queue was full."},
    {WSAENOTCONN, "WSAENOTCONN", "A request to send or receive data was disallowed because the socket is not connected."},
    {WSAESHUTDOWN, "WSAESHUTDOWN", "A request to send or receive data was disallowed because the socket had already been shut down in that direction with a previous shutdown call."},
    {WSAETIMEDOUT, "WSAETIMEDOUT", "A connection attempt failed because the connected party did not properly respond after a period of time."},
    {WSAECONNREFUSED, "WSAECONNREFUSED", "No connection could be made because the target machine actively refused it."},
    {WSAEHOSTUNREACH, "WSAEHOSTUNREACH", "A socket operation was attempted to an unreachable host."},
    {WSANOTINITIALISED, "WSANOTINITIALISED", "Either the application has not called WSAStartup, or WSAStartup failed."},
    {WSAEDISCON, "WSAEDISCON", "The remote party has initiated a graceful shutdown sequence."},
    {WSA_IO_PENDING, "WSA_IO_PENDING", "Overlapped I/O operation is in progress."},
    {WSAHOST_NOT_FOUND, "WSAHOST_NOT_FOUND", "No such host is known."},
};

static inline const ERROR_INFO *FindKnownError(DWORD code)
{
    size_t i;
    for (i = 0; i < sizeof(knownErrors) / sizeof(knownErrors[0]); i++)
        if (knownErrors[i].code == code)
            return &knownErrors[i];
    return NULL;
}

/* Fills text with the system's message for code, without the trailing CR/LF. */
static inline void GetErrorText(DWORD code, char *text, DWORD textSize)
{
    DWORD flags = FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS;
    const ERROR_INFO *known = FindKnownError(code);
    DWORD len = FormatMessageA(flags, NULL, code, MAKELANGID(LANG_ENGLISH, SUBLANG_ENGLISH_US),
                               text, textSize, NULL);
    if (len == 0) /* no English message table installed: take the system's language */
        len = FormatMessageA(flags, NULL, code, 0, text, textSize, NULL);
    if (len == 0) {
        snprintf(text, textSize, "%s", known != NULL ? known->text : "unknown error");
        return;
    }
    while (len > 0 && (text[len - 1] == '\r' || text[len - 1] == '\n' || text[len - 1] == ' '))
        text[--len] = '\0';
}

/* Writes one whole line at once and flushes it: lines from several threads never tear each other,
 * and a pipe (a test, a log collector) sees each line as soon as it is written. (An unbuffered
 * stream is no substitute: MinGW-w64's C99 printf writes it one character at a time.) */
static inline void WriteLine(FILE *stream, const char *line)
{
    fwrite(line, 1, strlen(line), stream);
    fflush(stream);
}

/* One log line on stdout: printf's format and arguments, the newline added here. */
static inline void LogLine(const char *format, ...)
{
    char line[1024];
    va_list args;
    int len;

    va_start(args, format);
    len = vsnprintf(line, sizeof(line) - 1, format, args);
    va_end(args);
    if (len < 0)
        return;
    if (len > (int)sizeof(line) - 2) /* cut to fit: a log line, never a payload */
        len = (int)sizeof(line) - 2;
    line[len] = '\n';
    line[len + 1] = '\0';
    WriteLine(stdout, line);
}

/* A per-connection failure: report it on stderr and return, so the caller closes that connection. */
static inline void ReportError(const char *funcName, DWORD code)
{
    char text[512], line[1024];
    const ERROR_INFO *known = FindKnownError(code);

    GetErrorText(code, text, sizeof(text));
    if (known != NULL)
        snprintf(line, sizeof(line), "%s failed: error %lu (%s): %s\n", funcName,
                 (unsigned long)code, known->name, text);
    else
        snprintf(line, sizeof(line), "%s failed: error %lu: %s\n", funcName, (unsigned long)code, text);
    WriteLine(stderr, line);
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
