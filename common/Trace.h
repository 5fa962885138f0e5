/*
 * Trace.h - a recorder for the pictures: which thread handled each connection's I/O.
 *
 * Off unless the server is started with `--trace FILE` after its port. Then every Trace() call
 * keeps one record (time, thread, socket, event, bytes), and TraceWrite() writes them all to FILE
 * at the stop. `make -f Makefile.win trace STAGE=NN_name` runs a stage this way and draws
 * build/trace/NN_name.svg from the file (tests/thread_trace.py).
 *
 *   argc = TraceOption(argc, argv);     in ParsePort: takes `--trace FILE` off the arguments
 *   TraceThread("worker");              first in a thread the picture should name (main is named)
 *   Trace(TRACE_RECV, hSock, bytes);    one event, on the thread that handles it
 *   TraceWrite();                       at the stop, once no thread records any more
 *
 * Off, a Trace() call costs one branch on a flag that never changes after start-up. On, a record
 * takes no lock: an interlocked increment hands each call its own slot in an array allocated at
 * start-up, so the recorder never makes one thread wait for another (which would change the
 * picture it draws). Nothing is written to the file before the stop.
 *
 * An accept is recorded as posted just before the AcceptEx call (its completion could otherwise be
 * recorded first); a post that fails at once leaves that mark with no accept after it.
 *
 * The recorder is the one global a parameter could carry and does not: threading it through every
 * function of every stage would change the stages' signatures for a tool that is off by default.
 * Header-only, like ErrorHandling.h; it also builds on Linux, for appendix_epoll (which defines
 * _GNU_SOURCE before its first #include: clock_gettime, syscall and ftruncate need it).
 */
#ifndef TRACE_H
#define TRACE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The events, in the file by name. ACCEPT_POSTED and DISCONNECTED: 06 and 07 only. */
typedef enum {
    TRACE_NONE, /* a slot taken, its record not written yet */
    TRACE_ACCEPTED,
    TRACE_RECV,
    TRACE_SENT,
    TRACE_CLOSED,
    TRACE_ACCEPT_POSTED,
    TRACE_DISCONNECTED
} TRACE_EVENT;

static const char *const traceEventNames[] = {
    "none", "accepted", "recv", "sent", "closed", "accept_posted", "disconnected"
};

/* What each platform gives for the clock, the thread, a slot and the file. */
#ifdef _WIN32
#include <winsock2.h>
#include <windows.h>
#include "ErrorHandling.h"

typedef HANDLE TRACE_FILE;

static inline long long TraceNow(void)
{
    LARGE_INTEGER now;
    QueryPerformanceCounter(&now); /* cannot fail on XP and later (its page) */
    return now.QuadPart;
}

static inline long long TraceTicksPerSecond(void)
{
    LARGE_INTEGER frequency;
    QueryPerformanceFrequency(&frequency);
    return frequency.QuadPart;
}

static inline unsigned long TraceThreadId(void)
{
    return GetCurrentThreadId();
}

static inline long TraceTakeSlot(volatile long *next)
{
    return InterlockedIncrement(next) - 1;
}

static inline void TracePublish(volatile long *event, long value)
{
    InterlockedExchange(event, value); /* a full barrier: the record's fields are written first */
}

static inline long TraceLoadEvent(volatile long *event)
{
    return InterlockedCompareExchange(event, 0, 0); /* a full barrier: then the fields are whole */
}

/* Opened, not emptied: a usage error found after this (a bad port) leaves an old file as it was.
 * TraceWriteFile cuts it to what it writes. */
static inline TRACE_FILE TraceCreateFile(const char *path)
{
    HANDLE hFile = CreateFileA(path, GENERIC_WRITE, 0, NULL, OPEN_ALWAYS,
                               FILE_ATTRIBUTE_NORMAL, NULL);
    if (hFile == INVALID_HANDLE_VALUE)
        ErrorHandlingCode("CreateFile(--trace FILE)", GetLastError());
    return hFile;
}

static inline int TraceWriteFile(TRACE_FILE hFile, const char *text, size_t size)
{
    DWORD written = 0;
    BOOL ok = WriteFile(hFile, text, (DWORD)size, &written, NULL) && written == (DWORD)size;
    SetEndOfFile(hFile); /* cut at what was written: nothing of an older file stays after it */
    return ok;
}

static inline void TraceCloseFile(TRACE_FILE hFile)
{
    CloseHandle(hFile);
}
#else
#include <errno.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int TRACE_FILE;

static inline long long TraceNow(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static inline long long TraceTicksPerSecond(void)
{
    return 1000000000LL;
}

static inline unsigned long TraceThreadId(void)
{
    return (unsigned long)syscall(SYS_gettid);
}

static inline long TraceTakeSlot(volatile long *next)
{
    return __atomic_fetch_add(next, 1, __ATOMIC_SEQ_CST);
}

static inline void TracePublish(volatile long *event, long value)
{
    __atomic_store_n(event, value, __ATOMIC_RELEASE);
}

static inline long TraceLoadEvent(volatile long *event)
{
    return __atomic_load_n(event, __ATOMIC_ACQUIRE);
}

static inline TRACE_FILE TraceCreateFile(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "open(--trace %s) failed: %s\n", path, strerror(errno));
        exit(1);
    }
    return fd;
}

static inline int TraceWriteFile(TRACE_FILE fd, const char *text, size_t size)
{
    /* EINVAL: a pipe or a terminal, which has nothing to cut */
    return (ftruncate(fd, 0) == 0 || errno == EINVAL) && write(fd, text, size) == (ssize_t)size;
}

static inline void TraceCloseFile(TRACE_FILE fd)
{
    close(fd);
}
#endif

typedef struct {
    long long ticks;
    unsigned long long sock;
    unsigned long threadId;
    unsigned long bytes;
    volatile long event; /* written last: TRACE_NONE until the record is whole */
} TRACE_RECORD;

typedef struct {
    unsigned long threadId;
    const char *role;
} TRACE_THREAD;

/* 256 Ki records (8 MiB on Windows, 10 on Linux), allocated only when asked for: `make trace`'s workload needs a few
 * thousand. A record that finds the array full is counted (up to TRACE_MAX_DROPPED: a counter
 * must not wrap on a long run), and the file says how many were lost. */
#define TRACE_CAPACITY (256 * 1024)
#define TRACE_MAX_THREADS 64
#define TRACE_MAX_DROPPED 1000000000L

static struct {
    int on; /* set once, before any other thread starts: the one branch when off */
    TRACE_FILE file;
    long long startTicks;
    TRACE_RECORD *records;
    TRACE_THREAD threads[TRACE_MAX_THREADS];
    volatile long nextThread;
    char apart[64]; /* nextRecord, written by every record, on a cache line of its own */
    volatile long nextRecord;
    volatile long dropped;
} g_trace;

/* Names the calling thread in the picture ("main" is named by TraceOption). */
static inline void TraceThread(const char *role)
{
    long slot;

    if (!g_trace.on)
        return;
    slot = TraceTakeSlot(&g_trace.nextThread);
    if (slot >= TRACE_MAX_THREADS)
        return; /* a lane without a name: the picture calls it by its id */
    g_trace.threads[slot].threadId = TraceThreadId();
    g_trace.threads[slot].role = role;
}

/* One event on the calling thread. sock names the connection (a reused socket names the next
 * one too: the picture starts a new connection at each accept). */
static inline void Trace(TRACE_EVENT event, unsigned long long sock, unsigned long bytes)
{
    long slot;
    TRACE_RECORD *record;

    if (!g_trace.on)
        return;
    if (g_trace.nextRecord >= TRACE_CAPACITY) { /* full: no slot taken, so no index can wrap */
        if (g_trace.dropped < TRACE_MAX_DROPPED)
            TraceTakeSlot(&g_trace.dropped);
        return;
    }
    slot = TraceTakeSlot(&g_trace.nextRecord);
    if (slot >= TRACE_CAPACITY) { /* filled by another thread meanwhile */
        TraceTakeSlot(&g_trace.dropped);
        return;
    }
    record = &g_trace.records[slot];
    record->ticks = TraceNow();
    record->threadId = TraceThreadId();
    record->sock = sock;
    record->bytes = bytes;
    TracePublish(&record->event, (long)event);
}

/* Writes one byte of every page now, so that no record takes a page fault (a wait too). Through
 * a volatile pointer: gcc and clang turn malloc + memset(0) into a calloc, which touches nothing. */
static inline void TraceTouchPages(volatile char *bytes, size_t size)
{
    size_t at;
    for (at = 0; at < size; at += 4096)
        bytes[at] = 0;
}

/* In ParsePort, first: `<port> --trace FILE` turns the recorder on and leaves `<port>`, so the
 * stage's own check of its arguments is unchanged. `--trace` without a FILE is a usage error. */
static inline int TraceOption(int argc, char *argv[])
{
    if (argc < 3 || strcmp(argv[2], "--trace") != 0)
        return argc;
    if (argc != 4) {
        fprintf(stderr, "Usage: %s <port> [--trace FILE]   (0 to 65535; 0 picks a free port)\n",
                argv[0]);
        exit(1);
    }
    g_trace.records = (TRACE_RECORD *)calloc(TRACE_CAPACITY, sizeof(TRACE_RECORD));
    if (g_trace.records == NULL) {
        fprintf(stderr, "--trace: out of memory\n");
        exit(1);
    }
    TraceTouchPages((volatile char *)g_trace.records, TRACE_CAPACITY * sizeof(TRACE_RECORD));
    g_trace.file = TraceCreateFile(argv[3]); /* now, so that a bad path fails at start-up */
    g_trace.startTicks = TraceNow();
    g_trace.on = 1;
    TraceThread("main");
    return 2;
}

/* After snprintf into buffer + *used: counts what it wrote, unless the buffer was too small. */
static inline void TraceAdvance(size_t *used, size_t size, int written)
{
    if (written > 0 && (size_t)written < size - *used)
        *used += (size_t)written;
}

/* At the stop, from one thread, once the others record no more: writes every record, in the
 * order the slots were taken (for one thread, that is time order), then closes the file. A
 * record not whole yet (only if a thread still runs: 01-04 write from their Ctrl+C handler) is
 * left out, and counted as lost. Silent: in a Ctrl+C handler nothing may block on stderr, and a
 * file cut short has no last line, which tests/thread_trace.py reports. */
static inline void TraceWrite(void)
{
    long taken, count, i, unfinished = 0;
    size_t size, used = 0;
    char *buffer;
    long long perSecond = TraceTicksPerSecond();

    if (!g_trace.on)
        return;
    g_trace.on = 0;
    taken = g_trace.nextRecord;
    count = taken < TRACE_CAPACITY ? taken : TRACE_CAPACITY;
    size = 128 + (size_t)TRACE_MAX_THREADS * 64 + (size_t)count * 80;
    buffer = (char *)malloc(size);
    if (buffer == NULL) {
        TraceWriteFile(g_trace.file, "", 0); /* empty: no older trace passes for this one */
        TraceCloseFile(g_trace.file);
        return;
    }
    TraceAdvance(&used, size, snprintf(buffer + used, size - used,
                                       "# time_us thread event socket bytes\n"));
    for (i = 0; i < g_trace.nextThread && i < TRACE_MAX_THREADS; i++)
        TraceAdvance(&used, size, snprintf(buffer + used, size - used, "thread %lu %s\n",
                                           g_trace.threads[i].threadId, g_trace.threads[i].role));
    for (i = 0; i < count; i++) {
        TRACE_RECORD *r = &g_trace.records[i];
        long event = TraceLoadEvent(&r->event); /* first: then the fields are the record's */
        long long ticks, us;
        if (event <= TRACE_NONE || event > TRACE_DISCONNECTED) {
            unfinished++;
            continue;
        }
        ticks = r->ticks - g_trace.startTicks;
        /* in two parts, so that no product overflows on a long run */
        us = ticks / perSecond * 1000000 + ticks % perSecond * 1000000 / perSecond;
        TraceAdvance(&used, size, snprintf(buffer + used, size - used, "%lld %lu %s %llu %lu\n",
                                           us, r->threadId, traceEventNames[event], r->sock,
                                           r->bytes));
    }
    TraceAdvance(&used, size, snprintf(buffer + used, size - used, "records %ld lost %ld\n",
                                       count - unfinished, unfinished + g_trace.dropped));
    TraceWriteFile(g_trace.file, buffer, used); /* a failure shows as a file cut short */
    TraceCloseFile(g_trace.file);
    free(buffer);
}

#endif
