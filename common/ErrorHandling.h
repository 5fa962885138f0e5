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
 *   ReportErrorNote("AcceptEx()", e, "...")  the same, with a note after the text
 *   LogLine("Connected client %s", peer)    one log line on stdout, written whole and at once
 *   QuickEditOff()                          at start-up: a mouse selection cannot block our output
 *   EndAtSecondCtrlC()                      in a Ctrl+C handler: the second Ctrl+C ends the process
 *   EndProcessNow()                         end at once, as Windows' Ctrl+C handler (CONTROL_C_EXIT)
 *   LogLineWithin(500, "Stopping")          a log line a Ctrl+C handler may write: never blocks it
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
    {WSATYPE_NOT_FOUND, "WSATYPE_NOT_FOUND", "The specified class was not found."},
};

static inline const ERROR_INFO *FindKnownError(DWORD code)
{
    size_t i;
    for (i = 0; i < sizeof(knownErrors) / sizeof(knownErrors[0]); i++)
        if (knownErrors[i].code == code)
            return &knownErrors[i];
    return NULL;
}

/* The system's message for code in language langId (0: the system's own), in the code page the
 * console shows (GetConsoleOutputCP: the OEM code page, 437 or 949, say; the ANSI one, which
 * FormatMessageA would give, differs outside East Asia, and accents would come out wrong). No
 * console: the ANSI code page. Returns its length in bytes, 0 if there is none or it does not fit. */
static inline int FormatSystemText(DWORD code, DWORD langId, char *text, DWORD textSize)
{
    WCHAR wide[256];
    UINT codePage = GetConsoleOutputCP();
    DWORD len = FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL,
                               code, langId, wide, sizeof(wide) / sizeof(wide[0]), NULL);
    int bytes;

    if (len == 0)
        return 0;
    bytes = WideCharToMultiByte(codePage != 0 ? codePage : CP_ACP, 0, wide, (int)len, text,
                                (int)textSize - 1, NULL, NULL);
    text[bytes] = '\0'; /* 0 bytes (it did not fit): an empty text, and the caller falls back */
    return bytes;
}

/* Fills text with the system's message for code, without the trailing CR/LF. */
static inline void GetErrorText(DWORD code, char *text, DWORD textSize)
{
    const ERROR_INFO *known = FindKnownError(code);
    int len = FormatSystemText(code, MAKELANGID(LANG_ENGLISH, SUBLANG_ENGLISH_US), text, textSize);

    if (len == 0) /* no English message table installed: take the system's language */
        len = FormatSystemText(code, 0, text, textSize);
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

/* One log line on stdout: printf's format and arguments, the newline added here. With gcc the
 * attribute makes -Wformat check every call's arguments against its format, as for printf. (MinGW's
 * __MINGW_PRINTF_FORMAT names the printf it uses: with -std=c11 its own, which knows %lld and %zu.) */
#if defined(__MINGW_PRINTF_FORMAT)
__attribute__((format(__MINGW_PRINTF_FORMAT, 1, 2)))
#elif defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
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

/* ReportError with a note after the text, in brackets (what happens next, how many): NULL for none. */
static inline void ReportErrorNote(const char *funcName, DWORD code, const char *note)
{
    char text[512], name[64] = "", line[1024];
    const ERROR_INFO *known = FindKnownError(code);

    GetErrorText(code, text, sizeof(text));
    if (known != NULL)
        snprintf(name, sizeof(name), " (%s)", known->name);
    snprintf(line, sizeof(line), "%s failed: error %lu%s: %s%s%s%s\n", funcName, (unsigned long)code,
             name, text, note != NULL ? " (" : "", note != NULL ? note : "", note != NULL ? ")" : "");
    WriteLine(stderr, line);
}

/* A per-connection failure: report it on stderr and return, so the caller closes that connection. */
static inline void ReportError(const char *funcName, DWORD code)
{
    ReportErrorNote(funcName, code, NULL);
}

/* NO_RETURN marks a function that never returns (it exits, or loops for ever), so that the
 * compiler knows no code after its call runs, and none is written there: MSVC would flag such code
 * as unreachable (C4702), and without the mark it warns that a path returns no value (C4715). */
#if defined(_MSC_VER)
#define NO_RETURN __declspec(noreturn)
#else
#define NO_RETURN __attribute__((noreturn))
#endif

/* A failure the program cannot go on after (start-up): report it and exit with code 1. */
NO_RETURN static inline void ErrorHandlingCode(const char *funcName, DWORD code)
{
    ReportError(funcName, code);
    exit(1);
}

/* The book's ErrorHandling, for a Winsock call that just failed. */
NO_RETURN static inline void ErrorHandling(const char *funcName)
{
    ErrorHandlingCode(funcName, (DWORD)WSAGetLastError());
}

/* ---- The console ---------------------------------------------------------------------------
 * QuickEdit, the console's default since Windows 10, lets the mouse select text; while a selection
 * is shown, the console holds every write to it, so a server thread that logs stops right there
 * (and with it every thread waiting for a lock that thread holds). A server wants no such pause:
 * QuickEditOff turns it off for the console the process runs in, if it has one. The mode belongs
 * to the console, not to us, so we put the user's setting back when the process ends through
 * exit(), a return from main or our own Ctrl+C path. Not otherwise: a process ended from outside
 * (Task Manager, TerminateProcess) leaves QuickEdit off in that console, and of two servers in one
 * console, the second finds it off already and the first turns it back on when it ends.
 * It is no guarantee: Mark mode (Edit > Mark), Pause and Ctrl+S still hold every write, and so
 * does a full stdout pipe. The real protection is in the stages: no log line under a lock. */
static HANDLE volatile quickEditConsole = INVALID_HANDLE_VALUE;
static DWORD quickEditSavedMode;

static inline void QuickEditRestore(void)
{
    /* Two threads may get here at once (atexit on the main thread, EndProcessNow on a Ctrl+C
       thread): the exchange hands the handle to one of them only, never closed twice. */
    HANDLE hConsole = InterlockedExchangePointer((PVOID volatile *)&quickEditConsole,
                                                 INVALID_HANDLE_VALUE);
    if (hConsole == INVALID_HANDLE_VALUE)
        return;
    /* ENABLE_EXTENDED_FLAGS: without it SetConsoleMode leaves QuickEdit as it is. */
    SetConsoleMode(hConsole, quickEditSavedMode | ENABLE_EXTENDED_FLAGS);
    CloseHandle(hConsole);
}

static inline void QuickEditOff(void)
{
    DWORD mode;
    /* CONIN$ is the console's input, even when stdin is redirected; no console: it fails. */
    HANDLE hConsole = CreateFileW(L"CONIN$", GENERIC_READ | GENERIC_WRITE,
                                  FILE_SHARE_READ | FILE_SHARE_WRITE, NULL, OPEN_EXISTING, 0, NULL);

    if (hConsole == INVALID_HANDLE_VALUE)
        return;
    if (!GetConsoleMode(hConsole, &mode) || !(mode & ENABLE_QUICK_EDIT_MODE) ||
        !SetConsoleMode(hConsole, (mode & ~(DWORD)ENABLE_QUICK_EDIT_MODE) | ENABLE_EXTENDED_FLAGS)) {
        CloseHandle(hConsole); /* nothing to turn off, or it cannot be: the server runs anyway */
        return;
    }
    quickEditSavedMode = mode; /* before the handle is published: a Ctrl+C may restore at once */
    InterlockedExchangePointer((PVOID volatile *)&quickEditConsole, hConsole);
    atexit(QuickEditRestore); /* return from main, exit(); EndProcessNow restores it itself */
}

/* A Ctrl+C handler runs on a thread the system creates for each Ctrl+C, and must not block:
 * Wine calls the handlers under a lock, so while one is blocked (writing to a pipe nobody reads,
 * say) no later Ctrl+C reaches any handler (measured). */

/* Ends the process now, with the exit code of Windows' own Ctrl+C handler (CONTROL_C_EXIT).
 * TerminateProcess, not ExitProcess (which that handler calls): ExitProcess takes the C
 * library's locks on its way out, and never returns while another thread is blocked writing to
 * stdout (measured under Wine). Every line was flushed when it was written. */
static inline void EndProcessNow(void)
{
    QuickEditRestore();
    TerminateProcess(GetCurrentProcess(), CONTROL_C_EXIT);
}

/* In a Ctrl+C handler, first: the first Ctrl+C returns (and starts the stop), the second ends the
 * process at once, however the stop is going. */
static volatile LONG ctrlCCount = 0;

static inline void EndAtSecondCtrlC(void)
{
    if (InterlockedIncrement(&ctrlCCount) > 1)
        EndProcessNow();
}

/* One log line from a thread of its own, waited for at most timeoutMs: for a Ctrl+C handler,
 * which may not block in a write (see above). A line that cannot be written in time is lost. */
static inline DWORD WINAPI LogLineThread(LPVOID line)
{
    LogLine("%s", (const char *)line);
    return 0;
}

static inline void LogLineWithin(DWORD timeoutMs, const char *line)
{
    HANDLE hThread = CreateThread(NULL, 0, LogLineThread, (LPVOID)line, 0, NULL);

    if (hThread == NULL)
        return;
    WaitForSingleObject(hThread, timeoutMs);
    CloseHandle(hThread);
}

#endif /* ERROR_HANDLING_H */
