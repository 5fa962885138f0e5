"""harness.py - what the tests in run_tests.py are made of (Python 3 standard library only).

  Server          one EchoServ_win.exe: start on a port, collect its log lines, wait for a line,
                  stop it as Ctrl+C would, read its memory use
  run_program     runs a program to its end (a client, a server given bad arguments)
  connect, reset  TCP clients; reset closes with SO_LINGER {on, 0}, which sends an RST
  exchange        sends and receives at the same time on one socket (no deadlock on big data)
  echo_exact      exchange that fails unless exactly the bytes sent came back
  EchoLoad        a thread driving many clients that echo back to back, checking every byte
  Wineserver      the one persistent wineserver the suite may own (Linux only)

Every wait here is bounded; a wait that runs out raises Fail with what was seen so far.
On Linux each .exe runs through `wine`; on Windows it runs directly. A native program (a name
without .exe) runs directly everywhere.
"""
import os
import re
import select
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time

ON_WINDOWS = os.name == "nt"
CHILD_ENV = dict(os.environ, WINEDEBUG="-all")
START_TIMEOUT = 30.0  # a cold Wine start takes 1-6 s; this is the outer bound
STOP_LIMIT = 2.0      # the contract: Ctrl+C stops every stage within 2 s


class Fail(AssertionError):
    """The thing under test broke the contract."""


class Skip(Exception):
    """The test does not apply here; the message says why."""


def command(exe, args):
    """The command line that runs a program: a Windows program (.exe) directly on Windows and
    through wine elsewhere; a native one (no .exe: the Linux appendix, appendix_epoll) directly."""
    native = ON_WINDOWS or not exe.lower().endswith(".exe")
    return ([exe] if native else ["wine", exe]) + [str(a) for a in args]


# Every process the suite starts, so that none outlives it (killed by PID at exit, never by name).
_started = set()
_started_lock = threading.Lock()


def track_process(proc):
    with _started_lock:
        _started.add(proc)


def kill_leftovers():
    """Kills, by PID, every process this suite started that is still running."""
    with _started_lock:
        procs = list(_started)
        _started.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def run_program(exe, args, stdin=b"", timeout=30.0):
    """Runs exe to its end; returns (exit code, stdout, stderr), CRLF turned into LF.
    Fails if it does not end within timeout (it is then killed)."""
    proc = subprocess.Popen(command(exe, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=CHILD_ENV)
    track_process(proc)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # another process holds its output open
            out = err = b""
        raise Fail("%s %s did not end within %.0f s (stdout %r, stderr %r)"
                   % (os.path.basename(exe), " ".join(map(str, args)), timeout,
                      _tail(out), _tail(err)))
    return proc.returncode, out.replace(b"\r\n", b"\n"), err.replace(b"\r\n", b"\n")


def _tail(data, n=300):
    return data[-n:] if len(data) > n else data


class Server:
    """One EchoServ_win.exe. Its stdout and stderr are drained by two threads into one list of
    (stream, line) guarded by a Condition, so that a test can wait for a line without a sleep.

        with Server(exe, ["0"]) as srv:      # starts it, waits for "Listening on port N"
            srv.port                          # N
            mark = srv.mark()
            ...
            srv.wait_for(r"Closed", after=mark, timeout=5)
            result = srv.stop()               # Ctrl+C; result.seconds, result.code
    """

    def __init__(self, exe, args=("0",)):
        self.exe, self.args = exe, [str(a) for a in args]
        self.proc = None
        self.port = None
        self.lines = []  # (stream, text), in arrival order
        self.cond = threading.Condition()
        self.open_streams = 0
        self.readers = []
        self.stopped = None  # StopResult once stopped
        self.interrupt_error = None  # why Ctrl+C could not be sent, if it could not
        self.reading = {"stdout": threading.Event(), "stderr": threading.Event()}
        for gate in self.reading.values():  # cleared: that stream is left unread (pause)
            gate.set()

    # -- starting -----------------------------------------------------------------------------
    def start(self, wait_listening=True):
        flags = subprocess.CREATE_NEW_PROCESS_GROUP if ON_WINDOWS else 0
        self.proc = subprocess.Popen(command(self.exe, self.args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=CHILD_ENV, creationflags=flags)
        track_process(self.proc)
        self.open_streams = 2
        for stream, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            reader = threading.Thread(target=self._drain, args=(stream, pipe), daemon=True)
            reader.start()
            self.readers.append(reader)
        if wait_listening:
            match = self.expect(r"^Listening on port (\d+)$", START_TIMEOUT,
                                "line exactly 'Listening on port N'")
            self.port = int(match.group(1))
            if self.port == 0:
                raise Fail("the server printed port 0, not the port the system picked")
        return self

    def _drain(self, stream, pipe):
        for raw in iter(lambda: self.reading[stream].wait() and pipe.readline(), b""):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self.cond:
                self.lines.append((stream, text))
                self.cond.notify_all()
        pipe.close()
        with self.cond:
            self.open_streams -= 1
            self.cond.notify_all()

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def pause(self, stream="stdout", pipe_size=4096):
        """Stops reading the server's stdout or stderr (after the line being read), its pipe
        shrunk to pipe_size bytes (Linux, F_SETPIPE_SZ; the default 64 KiB takes a thousand log
        lines to fill). Returns a function giving the bytes waiting in the pipe (FIONREAD)."""
        import fcntl
        import termios
        fd = getattr(self.proc, stream).fileno()
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), pipe_size)
        self.reading[stream].clear()

        def waiting():
            buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
            return struct.unpack("i", buf)[0]
        return waiting

    def fill(self, stream, waiting, pipe_size=4096, bound=5.0):
        """Fills the paused pipe of stream from this side (the server's own end, through
        /proc/PID/fd), so that the server's next line there blocks. Returns the bytes waiting."""
        fd = os.open("/proc/%d/fd/%d" % (self.proc.pid, 1 if stream == "stdout" else 2),
                     os.O_WRONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + bound
        try:
            while waiting() < pipe_size and time.monotonic() < deadline:
                # Lines: the reader, inside a readline when paused, takes bytes up to the next
                # newline (and what came with them) before it stops; this tops the pipe up again.
                room = pipe_size - waiting()
                try:
                    os.write(fd, b"#" * (min(room, 512) - 1) + b"\n")
                except BlockingIOError:
                    break
        finally:
            os.close(fd)
        return waiting()

    def resume(self, stream="stdout"):
        self.reading[stream].set()

    # -- log lines ----------------------------------------------------------------------------
    def mark(self):
        """A position in the log: wait_for(..., after=mark) looks only at lines that came later."""
        with self.cond:
            return len(self.lines)

    def wait_for(self, pattern, timeout, after=0, streams=("stdout",)):
        """The first match of pattern (re.search; or a function of the line, returning a true
        value) in a line of streams after position `after`, waiting up to timeout seconds;
        None if none came (or the server ended first)."""
        search = pattern if callable(pattern) else re.compile(pattern).search
        deadline = time.monotonic() + timeout
        index = after
        with self.cond:
            while True:
                while index < len(self.lines):
                    stream, text = self.lines[index]
                    index += 1
                    if stream in streams:
                        match = search(text)
                        if match:
                            return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.open_streams == 0:
                    return None
                self.cond.wait(remaining)

    def expect(self, pattern, timeout, what, after=0, streams=("stdout",)):
        """wait_for, but a missing line is a failure that says what was seen instead."""
        match = self.wait_for(pattern, timeout, after, streams)
        if match is None:
            state = ("it exited with code %s" % self.proc.returncode
                     if self.proc.poll() is not None else "still running")
            raise Fail("no %s within %.0f s (%s); last lines: %s"
                       % (what, timeout, state, self.tail()))
        return match

    def output(self, stream="stdout"):
        with self.cond:
            return [text for s, text in self.lines if s == stream]

    def tail(self, n=6):
        with self.cond:
            return " | ".join("%s: %s" % (s, t) for s, t in self.lines[-n:]) or "(none)"

    # -- state --------------------------------------------------------------------------------
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if not self.alive():
            raise Fail("the server died (exit code %s); last lines: %s"
                       % (self.proc.returncode, self.tail()))

    def rss_kib(self):
        """The server's resident memory in KiB (Linux: /proc/PID/status VmRSS; Windows: the
        working set), or None."""
        if ON_WINDOWS:
            return _windows_working_set_kib(self.proc.pid)
        try:
            with open("/proc/%d/status" % self.proc.pid) as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    # -- stopping -----------------------------------------------------------------------------
    def interrupt(self):
        """What a user's Ctrl+C does: SIGINT under Wine (the wine launcher execs into the Windows
        process, same PID; Wine turns it into CTRL_C_EVENT), CTRL_BREAK_EVENT on Windows."""
        os.kill(self.proc.pid, signal.CTRL_BREAK_EVENT if ON_WINDOWS else signal.SIGINT)

    def stop(self, limit=STOP_LIMIT):
        """Ctrl+C, then waits up to `limit` seconds; kills it by PID if it is still running.
        Returns a StopResult (seconds is None if it had to be killed). Safe to call twice."""
        if self.stopped is not None:
            return self.stopped
        if self.proc is None:
            self.stopped = StopResult(0.0, None, True)
            return self.stopped
        already = self.proc.poll() is not None
        started = time.monotonic()
        seconds = None
        if not already:
            try:
                try:
                    self.interrupt()
                except OSError as err:  # Windows: GenerateConsoleCtrlEvent needs a shared console
                    self.interrupt_error = err
                    raise
                self.proc.wait(limit)
                seconds = time.monotonic() - started
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for reader in self.readers:  # every line it printed is in self.lines once they end
            reader.join(5)
        self.stopped = StopResult(seconds, self.proc.returncode, already)
        return self.stopped


def _windows_working_set_kib(pid):
    try:
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
                (name, ctypes.c_size_t) for name in (
                    "PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                    "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                    "PagefileUsage", "PeakPagefileUsage")]

        kernel32 = ctypes.WinDLL("kernel32")
        kernel32.OpenProcess.restype = wintypes.HANDLE
        handle = kernel32.OpenProcess(0x1000 | 0x0010, False, pid)  # QUERY_LIMITED | VM_READ
        if not handle:
            return None
        try:
            counters = Counters()
            counters.cb = ctypes.sizeof(Counters)
            if not kernel32.K32GetProcessMemoryInfo(wintypes.HANDLE(handle),
                                                    ctypes.byref(counters), counters.cb):
                return None
            return counters.WorkingSetSize // 1024
        finally:
            kernel32.CloseHandle(wintypes.HANDLE(handle))
    except (OSError, AttributeError, ValueError):
        return None


class StopResult:
    def __init__(self, seconds, code, had_exited):
        self.seconds, self.code, self.had_exited = seconds, code, had_exited


# -- sockets ----------------------------------------------------------------------------------
def connect(port, timeout=10.0):
    """A TCP client of 127.0.0.1:port, in blocking mode with a timeout, Nagle off."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reset(sock):
    """Closes sock with an RST instead of a FIN: SO_LINGER on with a 0 timeout, then close."""
    linger = struct.pack("HH" if ON_WINDOWS else "ii", 1, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    except OSError:
        pass
    sock.close()


def wait_io(sock, read, write, timeout):
    """(readable, writable) for one socket within timeout. poll where there is one: select()
    cannot take descriptors above 1023, and the suite holds more than 1,000 sockets."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, (select.POLLIN if read else 0) | (select.POLLOUT if write else 0))
        events = 0
        for _, ev in poller.poll(max(0, int(timeout * 1000))):
            events |= ev
        bad = select.POLLERR | select.POLLHUP
        return bool(events & (select.POLLIN | bad)), bool(events & (select.POLLOUT | bad))
    readable, writable, _ = select.select([sock] if read else [], [sock] if write else [], [],
                                          max(0.0, timeout))
    return bool(readable), bool(writable)


class Exchange:
    """What exchange() saw: the bytes received, whether EOF or a reset ended it, seconds."""

    def __init__(self):
        self.sent = 0
        self.received = bytearray()
        self.eof = False
        self.error = None  # an OSError such as ConnectionResetError
        self.timed_out = False
        self.seconds = 0.0


def exchange(sock, data, timeout, expect=None, shutdown_after_send=False, until_eof=False,
             chunk=65536):
    """Sends data while receiving whatever comes back, so that a big payload cannot deadlock
    against a server that echoes as it reads. Stops once `expect` bytes (default len(data)) are
    back (or, with until_eof, at EOF), at EOF or a reset, or after timeout seconds.
    shutdown_after_send: half-close (SHUT_WR) once the last byte is out."""
    result = Exchange()
    expect = len(data) if expect is None else expect
    view = memoryview(data)
    previous = sock.gettimeout()
    sock.setblocking(False)
    started = time.monotonic()
    deadline = started + timeout
    shut = False
    try:
        if shutdown_after_send and not data:
            sock.shutdown(socket.SHUT_WR)
            shut = True
        while until_eof or len(result.received) < expect:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.timed_out = True
                break
            sending = result.sent < len(data)
            readable, writable = wait_io(sock, True, sending, min(remaining, 1.0))
            if writable and sending:
                try:
                    result.sent += sock.send(view[result.sent:result.sent + chunk])
                except (BlockingIOError, InterruptedError):
                    pass
                if result.sent == len(data) and shutdown_after_send and not shut:
                    sock.shutdown(socket.SHUT_WR)
                    shut = True
            if readable:
                try:
                    got = sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                if not got:
                    result.eof = True
                    break
                result.received += got
    except OSError as err:  # ECONNRESET, EPIPE...
        result.error = err
    finally:
        result.seconds = time.monotonic() - started
        try:
            sock.settimeout(previous)
        except OSError:
            pass
    return result


def describe_mismatch(sent, received):
    """Where received first differs from sent, in words."""
    for index, (a, b) in enumerate(zip(sent, received)):
        if a != b:
            return "byte %d differs: sent 0x%02x, got 0x%02x" % (index, a, b)
    if len(received) > len(sent):
        return "%d bytes more than were sent came back" % (len(received) - len(sent))
    return "only %d of %d bytes came back" % (len(received), len(sent))


def echo_exact(sock, data, timeout=10.0, what="echo"):
    """Sends data and fails unless exactly data comes back within timeout. Returns seconds."""
    result = exchange(sock, data, timeout)
    received = bytes(result.received)
    if received == data:
        return result.seconds
    if result.error is not None:
        why = "the connection failed (%s)" % result.error
    elif result.eof:
        why = "the server closed the connection"
    elif result.timed_out:
        why = "timed out after %.1f s" % timeout
    else:
        why = "wrong data"
    raise Fail("%s of %d bytes: %s; %s" % (what, len(data), why, describe_mismatch(data, received)))


def expect_eof(sock, timeout=10.0, what="the server"):
    """Fails unless the next thing on sock is the server's close (EOF or reset), no data."""
    result = exchange(sock, b"", timeout, expect=1, until_eof=True)
    if result.received:
        raise Fail("%s sent %d unexpected bytes (%r...) instead of closing"
                   % (what, len(result.received), bytes(result.received[:40])))
    if result.timed_out:
        raise Fail("%s did not close the connection within %.0f s" % (what, timeout))
    return result


def pattern_bytes(size, seed):
    """size bytes that start with NUL, CR, LF, 0xFF, then all 256 values, then pseudo-random
    bytes from a fixed seed: every byte value a careless server could mangle."""
    head = b"\x00\r\n\xff" + bytes(range(256))
    return (head + random_bytes(size, seed))[:size]


def random_bytes(size, seed):
    """size pseudo-random bytes, the same for the same seed."""
    import random
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little") if size else b""


def push_without_reading(sock, block, seconds, limit, stop_when_blocked=None, progress=None):
    """Sends the endless stream block, block, block... on sock and never reads, for up to
    `seconds` or until `limit` bytes are out. With stop_when_blocked=s it also stops once the
    socket has not taken a byte for s seconds (every buffer on the way is full).
    progress, a list, gets (seconds since the start, bytes so far) after every send.
    Returns the number of bytes the socket took."""
    doubled = memoryview(block + block)  # any slice of up to len(block) bytes, wrap included
    pushed = 0
    previous = sock.gettimeout()
    sock.setblocking(False)
    started = time.monotonic()
    last_progress = started
    try:
        while pushed < limit:
            now = time.monotonic()
            if now - started >= seconds:
                break
            if stop_when_blocked is not None and now - last_progress >= stop_when_blocked:
                break
            _, writable = wait_io(sock, False, True, min(0.1, seconds - (now - started)))
            if not writable:
                continue
            offset = pushed % len(block)
            try:
                pushed += sock.send(doubled[offset:offset + min(len(block), 65536, limit - pushed)])
                last_progress = time.monotonic()
                if progress is not None:
                    progress.append((last_progress - started, pushed))
            except (BlockingIOError, InterruptedError):
                pass
    finally:
        sock.settimeout(previous)
    return pushed


def stream_slice(block, offset, size):
    """Bytes offset..offset+size of the endless stream block, block, block..."""
    out = bytearray()
    while len(out) < size:
        start = (offset + len(out)) % len(block)
        out += block[start:start + size - len(out)]
    return bytes(out)


class EchoLoad(threading.Thread):
    """n clients, each echoing `size`-byte messages back to back until stop() (or max_seconds),
    checking every reply byte for byte. Counts round trips per client; errors[] lists failures."""

    def __init__(self, port, n, size=256, max_seconds=60.0):
        super().__init__(daemon=True)
        self.size, self.max_seconds = size, max_seconds
        self._body = bytes(range(256)) * (size // 256 + 2)
        self.errors = []
        self.counts = [0] * n
        self.worst = 0.0
        self.all_served = threading.Event()  # set once every client has had one echo back
        self._served = 0
        self._halt = threading.Event()
        self.socks = []
        for _ in range(n):
            sock = connect(port)
            sock.setblocking(False)
            self.socks.append(sock)

    def message(self, client, count):
        head = ("client %d message %d:" % (client, count)).encode()
        start = (client + count) % 256
        return (head + self._body[start:start + self.size])[:self.size]

    def snapshot(self):
        return list(self.counts)

    def stop(self):
        self._halt.set()
        self.join(15)
        for sock in self.socks:
            sock.close()

    def run(self):
        sel = selectors.DefaultSelector()
        state = []
        now = time.monotonic()
        for i, sock in enumerate(self.socks):
            state.append({"msg": self.message(i, 0), "sent": 0, "got": bytearray(), "t0": now})
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
        deadline = now + self.max_seconds
        try:
            while not self._halt.is_set() and time.monotonic() < deadline and not self.errors:
                for key, events in sel.select(0.1):
                    i, sock, st = key.data, key.fileobj, state[key.data]
                    if events & selectors.EVENT_WRITE and st["sent"] < len(st["msg"]):
                        try:
                            st["sent"] += sock.send(st["msg"][st["sent"]:])
                        except BlockingIOError:
                            pass
                        if st["sent"] == len(st["msg"]):
                            sel.modify(sock, selectors.EVENT_READ, i)
                    if events & selectors.EVENT_READ:
                        try:
                            got = sock.recv(65536)
                        except BlockingIOError:
                            continue
                        if not got:
                            raise Fail("load client %d: the server closed the connection" % i)
                        st["got"] += got
                        if st["got"] != st["msg"][:len(st["got"])]:
                            raise Fail("load client %d: %s" % (i, describe_mismatch(
                                st["msg"], bytes(st["got"]))))
                        if len(st["got"]) == len(st["msg"]):
                            t = time.monotonic()
                            self.worst = max(self.worst, t - st["t0"])
                            self.counts[i] += 1
                            if self.counts[i] == 1:
                                self._served += 1
                                if self._served == len(self.socks):
                                    self.all_served.set()
                            st.update(msg=self.message(i, self.counts[i]), sent=0,
                                      got=bytearray(), t0=t)
                            sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
        except (Fail, OSError) as err:
            self.errors.append(str(err))
        finally:
            sel.close()


# -- waiting for a server to be idle ----------------------------------------------------------
REFUSAL_LINE = re.compile(r"^Too many clients \(\d+\): closed \S+"
                          r"(?: and (\d+) more since the last line \((\d+) in all\))?$")


def refused_in_line(text):
    """How many clients over the limit a stdout line counts: 0 (another line); 1 for
    `Too many clients (<limit>): closed <ip:port>` (every stage); 1 + N for 06's and 07's line
    after a flood, written at most once a second, `Too many clients (<limit>): closed <ip:port>
    and N more since the last line (<T> in all)`. Each refused client is in exactly one line."""
    match = REFUSAL_LINE.match(text)
    if match is None:
        return 0
    return 1 + int(match.group(1) or 0)


class ClientCount:
    """Follows a Server's `Connected client` and `Closed client` lines as they come.
    wait_until_settled() returns once every client logged as connected has been logged as closed,
    so that a benchmark run never pays for (or meets) the previous run's connections.
    A balance alone can be momentary: between two churn cycles, or while the server has not yet
    accepted the rest of a run's connections, as many are logged closed as connected. So the
    caller says how many connections it made (made(n) after each run, from the client's own
    count), and the balance counts only once at least that many have been logged. A client over
    the limit is opened and closed at once, counted from its `Too many clients` line (06 and 07
    count a flood of them in one line a second: refused_in_line)."""

    def __init__(self, server):
        self.server, self.seen, self.opened, self.closed = server, 0, 0, 0
        self.expected = 0  # connections the caller has made, in all

    def made(self, connections):
        """The caller's last run made `connections` connections."""
        self.expected += connections

    def wait_until_settled(self, timeout):
        """True once opened == closed and at least `made` connections have been logged; False
        if that did not happen within timeout seconds (or the server ended first). A condition
        on the log, not a sleep."""
        server = self.server
        deadline = time.monotonic() + timeout
        with server.cond:
            while True:
                for stream, text in server.lines[self.seen:]:
                    if stream == "stdout" and text.startswith("Connected client"):
                        self.opened += 1
                    elif stream == "stdout" and text.startswith("Closed client"):
                        self.closed += 1
                    elif stream == "stdout" and text.startswith("Too many clients"):
                        refused = refused_in_line(text)
                        self.opened += refused
                        self.closed += refused
                self.seen = len(server.lines)
                settled = self.opened == self.closed and self.opened >= self.expected
                remaining = deadline - time.monotonic()
                if settled or remaining <= 0 or server.open_streams == 0:
                    return settled
                server.cond.wait(remaining)


# -- the wineserver -------------------------------------------------------------------------
class Wineserver:
    """Keeps one wineserver alive for the suite's Wine processes, so that each does not pay a cold
    start. It is started with a linger time (-p5), not forever: once the last Wine program has
    ended it shuts down the prefix's system processes (services.exe, winedevice.exe...) and exits
    by itself, so stopping it is waiting for it. If one already runs for the prefix, ours exits at
    once and we own none.
    While the suite runs, one idle Wine program (`cmd`, reading a pipe we hold) keeps whichever
    serves the prefix busy, and the system processes are started before any test's program:
    measured 2026-11-28, a wineserver whose only programs are short-lived ones (a client with bad
    arguments) exited as soon as such a program ended, before its linger time, so every later
    program paid a cold start of 3-4 s. Closing the pipe at the stop ends `cmd` by itself."""

    LINGER_SECONDS = 5

    def __init__(self):
        self.proc = None
        self.keeper = None

    def start(self):
        if ON_WINDOWS:
            return
        quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env=CHILD_ENV)
        try:
            proc = subprocess.Popen(["wineserver", "-f", "-p%d" % self.LINGER_SECONDS], **quiet)
        except OSError:
            return  # no wineserver on PATH: wine will start its own
        try:
            proc.wait(1.0)  # exits at once when another one serves the prefix already
        except subprocess.TimeoutExpired:
            self.proc = proc  # still running: it is ours
        # The keeper, even when the wineserver is not ours: one lingering after an earlier run
        # would otherwise exit in the middle of this one.
        self.keeper = subprocess.Popen(["wine", "cmd"], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env=CHILD_ENV)
        # Then wait until the prefix's system processes (services.exe, winedevice.exe...) run.
        # The first Wine program a wineserver serves starts them, and they inherit its stdout and
        # stderr: started by a test's program, they held its pipes open after it had ended, and
        # reading its output to the end waited until the suite's end (seen 2026-12-07: client_errors
        # abandoned after 300 s, 2 runs in 8; `experiments.py 07_socket_pool key_demo`, whose
        # first Wine program is key_demo, hung 12 minutes). Started here, they hold nothing of ours.
        try:
            subprocess.run(["wine", "cmd", "/c", "exit"], timeout=60, **quiet)
        except (OSError, subprocess.TimeoutExpired):
            pass  # a test that needs Wine will say what is wrong

    def stop(self):
        """Ends the keeper, then waits for our wineserver to exit on its own; only if it does
        not, ends it by PID."""
        if self.keeper is not None:
            self.keeper.stdin.close()  # end of input: cmd exits
            try:
                self.keeper.wait(20)
            except subprocess.TimeoutExpired:
                self.keeper.kill()
                self.keeper.wait(10)
            self.keeper = None
        if self.proc is None:
            return
        try:
            self.proc.wait(self.LINGER_SECONDS + 20)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
