#!/usr/bin/env python3
"""experiments.py - run one lesson's broken variant beside the stage that fixes it (Python 3
standard library only; built on harness.py).

    python3 tests/experiments.py STAGE NAME          measure the variant, then the stage; a table
    python3 tests/experiments.py                     list every experiment (exit 1)
    make -f Makefile.win experiment STAGE=04_completion_routine NAME=book_sleepex_loop

Each experiment is one entry of EXPERIMENTS below: the stage, the variant's name, its one-line
purpose, its line budget (how many lines its NN_name/experiments/NAME.diff may change: the lesson's
lines plus its header comment), a measurement, and the threshold its README states
(`broken(figures)`: the variant must be past it, the stage must not). The test suite
(run_tests.py) runs every measurement in its short form and checks both sides, and the budgets.
The variant is built from its diff (tests/variants.py, `make -f Makefile.win experiments`) as
build/experiments/NN_name/NAME/EchoServ_win.exe; a CMake build puts it under <build dir>/experiments/.

A server variant keeps the server contract (arguments, `Listening on port N`, log lines), so the
same measurement runs on the variant and on the stage, one after the other. Every wait is bounded.
"""
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ON_WINDOWS, Fail, Server, Skip, Wineserver, connect,  # noqa: E402
                     echo_exact, exchange, kill_leftovers, push_without_reading, random_bytes,
                     reset, run_program, wait_io)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024


# ============================================================================ measurements
def cpu_seconds(pid):
    """utime + stime of a process in seconds (Linux /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def wineserver_pid():
    """The PID of the wineserver serving this WINEPREFIX (Linux), or None. Its working
    directory is named after the prefix's device and inode: server-<dev>-<inode>."""
    if ON_WINDOWS:
        return None
    try:
        prefix = os.stat(os.environ.get("WINEPREFIX") or os.path.expanduser("~/.wine"))
    except OSError:
        return None
    wanted = "server-%x-%x" % (prefix.st_dev, prefix.st_ino)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % entry) as comm:
                if not comm.read().startswith("wineserver"):
                    continue
            if os.path.basename(os.readlink("/proc/%s/cwd" % entry)) == wanted:
                return int(entry)
        except OSError:
            continue
    return None


def pending_connects(port, count, wait):
    """Starts count non-blocking connects at once; returns how many completed within `wait`
    seconds (the rest are still waiting for the server's backlog, or were refused)."""
    import selectors
    sel = selectors.DefaultSelector()
    socks, done, refused = [], 0, 0
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            socks.append(sock)
            err = sock.connect_ex(("127.0.0.1", port))
            if err == 0:
                done += 1
            else:
                sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + wait
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                sel.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
                else:
                    refused += 1
    finally:
        sel.close()
        for sock in socks:
            reset(sock)
    return done, refused


def measure_listen5(exe, short):
    """One client holds the (one-at-a-time) server; a burst of connects: how many complete."""
    count, wait = (200, 0.5) if short else (300, 0.5)
    with Server(exe) as srv:
        with connect(srv.port) as holder:
            echo_exact(holder, b"hold the server\n", 10, "the client the server is busy with")
            done, refused = pending_connects(srv.port, count, wait)
    return {"burst": count, "completed": done, "refused": refused, "waiting": count - done - refused}


def measure_busy_poll(exe, short):
    """CPU seconds per second of wall time with a few idle clients: the server's own, and the
    server's plus the wineserver's (under Wine every socket call the spinning loop makes is a
    request to the wineserver, which does half of the work; on a busy machine the split varies).
    The threshold reads the server's own time only: the wineserver serves every Wine process of
    the prefix, and once, on a clean run, it was busy for another one (1.00 CPU s per s during the
    stage's window, right after the variant's), which no change to the stage could explain."""
    if ON_WINDOWS:
        raise Skip("the CPU time is read from Linux's /proc (on Windows: Task Manager)")
    window = 1.5 if short else 3.0
    with Server(exe) as srv:
        clients = [connect(srv.port) for _ in range(5)]
        try:
            for i, sock in enumerate(clients):
                echo_exact(sock, b"idle client %d\n" % i, 10, "idle client %d: echo" % i)
            pids = [srv.proc.pid, wineserver_pid()]
            before, t0 = [cpu_seconds(pid) if pid else 0.0 for pid in pids], time.monotonic()
            time.sleep(window)  # a measuring window, not a synchronisation
            after, t1 = [cpu_seconds(pid) if pid else 0.0 for pid in pids], time.monotonic()
            echo_exact(clients[0], b"still echoing\n", 10, "after the window: echo")
        finally:
            for sock in clients:
                sock.close()
    if None in before + after:
        raise Skip("no /proc/PID/stat for the server")
    used = [(b - a) / (t1 - t0) for a, b in zip(before, after)]
    return {"clients": 5, "window": t1 - t0, "cpu": used[0], "total": used[0] + used[1],
            "wineserver": pids[1] is not None}


def measure_no_backpressure(exe, short):
    """A client pushes without reading: how much it pushed, how much the server grew."""
    seconds, limit = (3.0, 48 * MiB) if short else (5.0, 96 * MiB)
    block = random_bytes(MiB + 13, 21)
    with Server(exe) as srv:
        with connect(srv.port) as sock:
            echo_exact(sock, b"warm up\n", 10, "echo")
            before = srv.rss_kib()
            pushed = push_without_reading(sock, block, seconds, limit, stop_when_blocked=1.0)
            after = srv.rss_kib()
            srv.check_alive()
    if before is None or after is None:
        raise Skip("the server's memory cannot be read here")
    return {"pushed": pushed / MiB, "growth": (after - before) / 1024.0}


class StreamLoad(threading.Thread):
    """n clients that send without pause and read their echo back as it comes, until stop():
    each always has data on its way, so the server always has I/O of theirs to complete. Counts
    the bytes echoed; any error ends it (errors[])."""

    def __init__(self, port, n, max_seconds=60.0):
        super().__init__(daemon=True)
        self.socks = [connect(port) for _ in range(n)]
        self.received = [0] * n
        self.errors = []
        self.max_seconds = max_seconds
        self._halt = threading.Event()

    def snapshot(self):
        return list(self.received)

    def stop(self):
        self._halt.set()
        self.join(15)
        for sock in self.socks:
            sock.close()

    def run(self):
        block = memoryview(random_bytes(16384, 3))
        for sock in self.socks:
            sock.setblocking(False)
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._halt.is_set() and time.monotonic() < deadline:
                busy = False
                for i, sock in enumerate(self.socks):
                    readable, writable = wait_io(sock, True, True, 0.0)
                    if writable:
                        try:
                            sock.send(block)
                            busy = True
                        except (BlockingIOError, InterruptedError):
                            pass
                    if readable:
                        try:
                            got = sock.recv(262144)
                        except (BlockingIOError, InterruptedError):
                            continue
                        if not got:
                            raise Fail("stream client %d: the server closed" % i)
                        self.received[i] += len(got)
                        busy = True
                if not busy:
                    wait_io(self.socks[0], True, True, 0.01)
        except (Fail, OSError) as err:
            self.errors.append(str(err))


def first_echo(port, i, limit):
    """A new client: seconds from connect() to its first 5-byte echo, or None past limit."""
    t0 = time.monotonic()
    message = b"new%02d" % (i % 100)
    with connect(port, limit) as sock:
        got = exchange(sock, message, limit)
    return time.monotonic() - t0 if bytes(got.received) == message else None


def newcomers_under_load(exe, busy, newcomers, limit, idle_newcomers=0):
    """busy clients stream (StreamLoad: send without pause, read the echo as it comes); after 1 s,
    newcomers arrive one at a time, at random gaps of 0.2-0.5 s (random, so they do not fall into
    step with a 100 ms sleep): is each one's first echo back within `limit`? And how many busy
    clients got no echo meanwhile? With idle_newcomers, that many new clients are timed first, on
    the idle server. (Clients that echo round trip by round trip leave the server idle moments,
    whenever the load client is slower than the server, and hide both bugs on a busy machine.)"""
    rng = random.Random(7)
    with Server(exe) as srv:
        idle = []
        for i in range(idle_newcomers):
            idle.append(first_echo(srv.port, i, limit))
            time.sleep(rng.uniform(0.2, 0.5))  # an arrival gap, not a synchronisation
        load = StreamLoad(srv.port, busy, max_seconds=60)
        load.start()
        try:
            time.sleep(1.0)  # the newcomers arrive under load, not before it
            before = load.snapshot()
            started = time.monotonic()
            times = []
            for i in range(newcomers):
                times.append(first_echo(srv.port, i, limit))
                if i + 1 < newcomers:
                    time.sleep(rng.uniform(0.2, 0.5))
            after = load.snapshot()
            seconds = time.monotonic() - started
        finally:
            load.stop()
        srv.check_alive()
    if load.errors:
        raise Fail("load: " + load.errors[0])
    progress = [b - a for a, b in zip(before, after)]
    echoed = sorted(x for x in times if x is not None)
    idle_echoed = sorted(x for x in idle if x is not None)
    return {"busy": busy, "starved": sum(1 for p in progress if p == 0),
            "rate": sum(progress) / seconds / MiB, "newcomers": newcomers, "limit": limit,
            "echoed": len(echoed), "worst": echoed[-1] if echoed else None,
            "within_1s": sum(1 for x in echoed if x <= 1.0),
            "idle": idle_newcomers, "idle_echoed": len(idle_echoed),
            "idle_median": idle_echoed[len(idle_echoed) // 2] if idle_echoed else None,
            "idle_worst": idle_echoed[-1] if idle_echoed else None}


def measure_lowest_index(exe, short):
    return newcomers_under_load(exe, 4, 2 if short else 4, 2.0 if short else 5.0)


def measure_sleepex_loop(exe, short):
    return newcomers_under_load(exe, 4, 2 if short else 4,
                                2.0 if short else 5.0, idle_newcomers=3 if short else 10)


def measure_worker_exits(exe, short):
    """Clients that push without reading until the server's WSASend to them is stuck, then
    reset: that send fails (error 64). After each, is a new client still echoed within 2 s?
    Stops at the first reset after which it is not. (Under Wine a reset that meets only a pending
    WSARecv sometimes completes as a clean close, a send never does: measured.)"""
    resets = 6 if short else 12
    block = random_bytes(65536 + 7, 5)
    survived, stopped_after = 0, None
    with Server(exe) as srv:
        for i in range(resets):
            with connect(srv.port) as sock:
                push_without_reading(sock, block, 5.0, 64 * MiB, stop_when_blocked=0.3)
                reset(sock)  # the server's WSASend to it is pending: it completes with an error
            with connect(srv.port) as probe:
                message = b"probe after reset %d\n" % (i + 1)
                got = exchange(probe, message, 2.0)
            if bytes(got.received) != message:
                stopped_after = i + 1
                break
            survived += 1
        srv.check_alive()
    return {"resets": resets, "stopped_after": stopped_after, "survived": survived}


def count_lines(srv, pattern, after, expected, timeout):
    """How many log lines (stdout or stderr) after `after` match pattern, waiting up to timeout
    seconds for `expected` of them (a condition on the log, not a sleep)."""
    deadline, found, index = time.monotonic() + timeout, 0, after
    while found < expected:
        match = srv.wait_for(pattern, max(0.0, deadline - time.monotonic()), after=index,
                             streams=("stdout", "stderr"))
        if match is None:
            break
        found += 1
        index = _line_after(srv, match, index)
    return found


def _line_after(srv, match, start):
    """The log position just after the line that match was found in (at or after start)."""
    with srv.cond:
        for i in range(start, len(srv.lines)):
            if match.string == srv.lines[i][1]:
                return i + 1
    return len(srv.lines)


def measure_acceptex_with_data(exe, short):
    """Clients that connect and wait: are they accepted (a Connected line) within 2 s? Then each
    sends a line: accepted and echoed?"""
    count = 10 if short else 20
    with Server(exe) as srv:
        mark = srv.mark()
        clients = [connect(srv.port) for _ in range(count)]
        try:
            silent = count_lines(srv, r"^Connected client", mark, count, 2.0)
            for i, sock in enumerate(clients):
                echo_exact(sock, b"client %d speaks first\n" % i, 10, "client %d: echo" % i)
            speaking = count_lines(srv, r"^Connected client", mark, count, 5.0)
        finally:
            for sock in clients:
                sock.close()
    return {"clients": count, "silent": silent, "speaking": speaking}


def measure_no_repost(exe, short):
    """Clients that connect and reset at once, before they are accepted (their AcceptEx fails);
    then a new client: is it echoed within the limit (the server first works through the resets
    in its backlog: 0.5-3.3 s for the stage here)?"""
    count, limit = (1200, 5.0) if short else (3000, 10.0)
    with Server(exe) as srv:
        for _ in range(count):
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect(("127.0.0.1", srv.port))
            reset(sock)
        with connect(srv.port) as probe:
            got = exchange(probe, b"anybody there?\n", limit)
        srv.check_alive()
    return {"resets": count, "limit": limit, "seconds": got.seconds,
            "echoed": bytes(got.received) == b"anybody there?\n"}


def measure_transmitfile(exe, short):
    """Connect, echo, close, one client after another (every cycle echoed exactly): how much the
    server's resident memory grows per cycle once warm, i.e. after every session of the pool
    (1,016) has served once. Wine's leaked 64 KiB buffers are mostly never touched: about 4 KiB
    of each shows in VmRSS (the rest is address space its heap had reserved already)."""
    if ON_WINDOWS:
        raise Skip("the lesson is Wine 8's TransmitFile leak; Windows's limit of two TransmitFile "
                   "calls at once on client editions is not measured here")
    warm_up, cycles = 1100, (400 if short else 2000)
    with Server(exe) as srv:
        before = None
        for i in range(warm_up + cycles):
            if i == warm_up:
                before = srv.rss_kib()
            with connect(srv.port) as sock:
                echo_exact(sock, b"cycle %d\n" % i, 10, "cycle %d" % i)
        after = srv.rss_kib()
        srv.check_alive()
    if before is None or after is None:
        raise Skip("the server's memory cannot be read here")
    return {"cycles": cycles, "growth": (after - before) / 1024.0,
            "per_cycle": (after - before) / float(cycles)}


def measure_no_connect_check(exe, short):
    """Client A echoes, half-closes and waits for the server's close (2 s);
    then, while A still waits, later clients connect, echo and close one at a time: after how
    many of them does A's EOF come?"""
    later_max = 150 if short else 300
    with Server(exe) as srv:
        with connect(srv.port) as first:
            echo_exact(first, b"client A, then a half-close\n", 10, "client A: echo")
            first.shutdown(socket.SHUT_WR)
            got = exchange(first, b"", 2.0, expect=1, until_eof=True)
            eof_at_once = got.eof or got.error is not None
            later = None
            if not eof_at_once:
                for n in range(1, later_max + 1):
                    with connect(srv.port) as sock:
                        echo_exact(sock, b"later client %d\n" % n, 10, "later client %d" % n)
                    readable, _ = wait_io(first, True, False, 0.0)
                    if readable:
                        got = exchange(first, b"", 2.0, expect=1, until_eof=True)
                        if got.eof or got.error is not None:
                            later = n
                            break
        srv.check_alive()
    return {"eof_at_once": eof_at_once, "later": later, "later_max": later_max}


def measure_key_demo(exe, short):
    """Runs the demo; its 'key:' and 'overlapped:' lines are the two columns: what a server
    that takes the session from the key would use (the notes), and what 07 uses."""
    code, out, err = run_program(exe, [], timeout=30.0)
    text = out.decode("utf-8", "replace")
    if code != 0:
        raise Fail("key_demo exited with %s: %s %s" % (code, text[-300:], err[-300:]))
    found = dict(line.split(": ", 1) for line in text.splitlines()
                 if line.startswith(("key: ", "overlapped: ")))
    second = ("failed, error 87" if b"CreateIoCompletionPort() failed: error 87" in err
              else "succeeded" if "associated with key B" in text else "?")
    output = (text + err.decode("utf-8", "replace").replace("\r\n", "\n")).rstrip("\n")
    return {"notes' way: session from the key": {"second": second, "session": found.get("key"),
                                                 "output": output},
            "07's way: session from the OVERLAPPED": {"second": second,
                                                      "session": found.get("overlapped")}}


# ============================================================================ the experiments
def variants_dir(exe_dir=REPO):
    """Where the experiments and steps built from diffs are: build/ for Makefile.win (exe_dir is
    the repository), the build folder itself for CMake (or any other --exe-dir)."""
    if os.path.normcase(os.path.abspath(exe_dir)) == os.path.normcase(REPO):
        return os.path.join(REPO, "build")
    return exe_dir


class Experiment:
    """rows: (label, function of the figures giving the cell's text). broken(figures) is the
    README's threshold: true for the variant, false for what it is measured against: the stage,
    or (against=NAME) the stage's variant NAME, when the lesson needs that variant's lines."""

    def __init__(self, stage, name, purpose, budget, measure, rows, broken, threshold,
                 standalone=False, against=None):
        self.stage, self.name, self.purpose, self.budget = stage, name, purpose, budget
        self.measure, self.rows, self.broken, self.threshold = measure, rows, broken, threshold
        self.standalone, self.against = standalone, against

    def source(self):
        """The variant's diff (a program of its own: its .c)."""
        return os.path.join(REPO, self.stage, "experiments",
                            self.name + (".c" if self.standalone else ".diff"))

    def exe(self, exe_dir=REPO, name=None):
        name = name or self.name
        return os.path.join(variants_dir(exe_dir), "experiments", self.stage, name,
                            (name if self.standalone else "EchoServ_win") + ".exe")

    def stage_exe(self, exe_dir=REPO):
        if self.against:
            return self.exe(exe_dir, self.against)
        return os.path.join(exe_dir, self.stage, "EchoServ_win.exe")

    def baseline(self):
        """The column the variant is measured against."""
        return ("variant " + self.against) if self.against else ("stage " + self.stage)


limit_text = "the limit (5 s; the suite: 2 s)"


def fmt_ms(x):
    return "none" if x is None else "%.0f ms" % (x * 1000)


EXPERIMENTS = [
    Experiment(
        "01_blocking", "listen5",
        "listen(s, 5): a burst of connects waits for the backlog where SOMAXCONN takes it at once",
        13, measure_listen5,
        [("connects started at once (server busy with 1 client)", lambda f: "%d" % f["burst"]),
         ("completed within 0.5 s", lambda f: "%d" % f["completed"]),
         ("refused", lambda f: "%d" % f["refused"]),
         ("still waiting", lambda f: "%d" % f["waiting"])],
        lambda f: f["completed"] < f["burst"] // 2,
        "fewer than half of the burst connected within 0.5 s"),
    Experiment(
        "02_nonblocking_select", "busy_poll",
        "no select(): non-blocking sockets polled in a loop burn a CPU with idle clients",
        13, measure_busy_poll,
        [("idle clients", lambda f: "%d" % f["clients"]),
         ("window", lambda f: "%.1f s" % f["window"]),
         ("server CPU s per wall s", lambda f: "%.2f" % f["cpu"]),
         ("server + wineserver CPU s per wall s", lambda f: "%.2f" % f["total"]
          if f["wineserver"] else "(no wineserver found)")],
        lambda f: f["cpu"] >= 0.1,
        "the server itself uses at least 0.1 CPU s per second of wall time"),
    Experiment(
        "02_nonblocking_select", "no_backpressure",
        "reads a client that does not read its echo and buffers it all: memory grows",
        38, measure_no_backpressure,
        [("pushed without reading", lambda f: "%.1f MiB" % f["pushed"]),
         ("server memory growth", lambda f: "%+.1f MiB" % f["growth"])],
        lambda f: f["growth"] >= 16,
        "the server's resident memory grows by 16 MiB or more"),
    Experiment(
        "03_overlapped_event", "lowest_index",
        "services only the index the wait returns: busy low-index clients starve a newcomer",
        29, measure_lowest_index,
        [("busy clients streaming", lambda f: "%d" % f["busy"]),
         ("busy clients with no echo meanwhile", lambda f: "%d" % f["starved"]),
         ("busy clients' echo, MiB/s", lambda f: "%.1f" % f["rate"]),
         ("newcomers echoed within 1 s", lambda f: "%d of %d" % (f["within_1s"], f["newcomers"])),
         ("newcomers echoed within %s" % limit_text, lambda f: "%d of %d"
          % (f["echoed"], f["newcomers"])),
         ("slowest newcomer echoed", lambda f: fmt_ms(f["worst"]))],
        lambda f: f["within_1s"] < f["newcomers"],
        "a newcomer waits more than 1 s for its first echo (or gets none)"),
    Experiment(
        "04_completion_routine", "book_sleepex_loop",
        "the notes' SleepEx(100, TRUE) + accept loop on one thread: under load new clients starve",
        41, measure_sleepex_loop,
        [("idle server: new clients' first echo, median", lambda f: fmt_ms(f["idle_median"])),
         ("idle server: worst", lambda f: fmt_ms(f["idle_worst"])),
         ("busy clients streaming", lambda f: "%d" % f["busy"]),
         ("busy clients with no echo meanwhile", lambda f: "%d" % f["starved"]),
         ("busy clients' echo, MiB/s", lambda f: "%.1f" % f["rate"]),
         ("newcomers echoed within 1 s", lambda f: "%d of %d" % (f["within_1s"], f["newcomers"])),
         ("newcomers echoed within %s" % limit_text, lambda f: "%d of %d"
          % (f["echoed"], f["newcomers"])),
         ("slowest newcomer echoed", lambda f: fmt_ms(f["worst"]))],
        lambda f: f["within_1s"] < f["newcomers"],
        "a newcomer waits more than 1 s for its first echo (or gets none)"),
    Experiment(
        "05_iocp_basic", "worker_exits",
        "a worker that ends on one client's failed I/O: after a few resets nobody is served",
        16, measure_worker_exits,
        [("clients that push, then reset (at most)", lambda f: "%d" % f["resets"]),
         ("a new client still echoed (2 s) after", lambda f: "%d resets" % f["survived"]),
         ("no echo any more after reset", lambda f: "never" if f["stopped_after"] is None
          else "%d" % f["stopped_after"])],
        lambda f: f["stopped_after"] is not None,
        "a new client gets no echo within 2 s after one of the 6 (short) or 12 resets"),
    Experiment(
        "06_iocp_acceptex", "acceptex_with_data",
        "AcceptEx with a receive buffer: clients that connect and wait are not accepted",
        35, measure_acceptex_with_data,
        [("clients that connect and wait", lambda f: "%d" % f["clients"]),
         ("accepted within 2 s (Connected lines)", lambda f: "%d" % f["silent"]),
         ("accepted once each has sent a line", lambda f: "%d" % f["speaking"])],
        lambda f: f["silent"] < f["clients"] // 2,
        "fewer than half of the waiting clients are accepted within 2 s"),
    Experiment(
        "06_iocp_acceptex", "no_repost",
        "a failed AcceptEx is not posted again: clients that reset shrink the pool to nothing",
        19, measure_no_repost,
        [("clients that connect and reset at once", lambda f: "%d" % f["resets"]),
         ("a new client then echoed", lambda f: "after %.1f s" % f["seconds"] if f["echoed"]
          else "no (%.0f s)" % f["limit"])],
        lambda f: not f["echoed"],
        "a new client gets no echo within the limit (5 s short, 10 s full)"),
    Experiment(
        "07_socket_pool", "key_demo",
        "associate a reused socket again with a new key: error 87, completions keep the old key",
        None, measure_key_demo,
        [("second CreateIoCompletionPort (key B)", lambda f: f["second"]),
         ("session B's receive is handled as", lambda f: f["session"] or "?")],
        lambda f: f["session"] != "session B",
        "session B's receive is handled as another session's", standalone=True),
    Experiment(
        "07_socket_pool", "transmitfile",
        "TransmitFile(TF_DISCONNECT | TF_REUSE_SOCKET) instead of DisconnectEx: Wine leaks 64 KiB a call",
        28, measure_transmitfile,
        [("connect/echo/close cycles after 1,100 to warm up", lambda f: "%d" % f["cycles"]),
         ("server memory growth (VmRSS)", lambda f: "%+.1f MiB" % f["growth"]),
         ("per cycle", lambda f: "%+.1f KiB" % f["per_cycle"])],
        lambda f: f["per_cycle"] >= 2,
        "once warm, the server's resident memory grows by 2 KiB or more a connection"),
    Experiment(
        "07_socket_pool", "no_connect_check",
        "SO_CONNECT_TIME check removed: under Wine a half-closed client waits for a later client",
        42, measure_no_connect_check,
        [("client A half-closes: server's close within 2 s", lambda f: "yes" if f["eof_at_once"]
          else "no"),
         ("A's close came after later clients", lambda f: "-" if f["eof_at_once"] else
          "%d" % f["later"] if f["later"] else "none of %d" % f["later_max"])],
        lambda f: not f["eof_at_once"],
        "client A gets no close within 2 s of its half-close", against="transmitfile"),
]


def find(stage, name):
    for exp in EXPERIMENTS:
        if exp.stage == stage.rstrip("/\\") and exp.name == name:
            return exp
    return None


def table(exp, figures):
    """The side-by-side table, one row per figure; figures: {column title: dict or a text}."""
    titles = list(figures)
    rows = [[""] + titles]
    for label, cell in exp.rows:
        rows.append([label] + [cell(f) if isinstance(f, dict) else f for f in figures.values()])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def listing():
    lines = ["Experiments (make -f Makefile.win experiment STAGE=<stage> NAME=<name>):"]
    for exp in EXPERIMENTS:
        lines.append("  %-22s %-18s %s" % (exp.stage, exp.name, exp.purpose))
    return "\n".join(lines)


def run(exp, short=False, exe_dir=REPO):
    """Measures the variant, then the stage; returns {column title: figures}."""
    if exp.standalone:
        if not os.path.isfile(exp.exe(exe_dir)):
            raise Fail("%s is not built (make -f Makefile.win experiments)" % exp.exe(exe_dir))
        return exp.measure(exp.exe(exe_dir), short)
    results = {}
    for title, exe in (("variant " + exp.name, exp.exe(exe_dir)),
                       (exp.baseline(), exp.stage_exe(exe_dir))):
        if not os.path.isfile(exe):
            raise Fail("%s is not built (make -f Makefile.win experiments)" % exe)
        results[title] = exp.measure(exe, short)
    return results


def main(argv):
    short = "--short" in argv  # the suite's short form
    argv = [a for a in argv if a != "--short"]
    if len(argv) != 2 or find(argv[0], argv[1]) is None:
        if len(argv) == 2:
            print("no experiment %s in %s\n" % (argv[1], argv[0]), file=sys.stderr)
        print(listing())
        return 1
    exp = find(argv[0], argv[1])
    print("%s/%s: %s" % (exp.stage, exp.name, exp.purpose), flush=True)
    started = time.monotonic()
    wineserver = Wineserver()  # one wineserver for both runs, as the suite does
    wineserver.start()
    try:
        results = run(exp, short)
    except (Fail, Skip) as err:
        print("could not measure: %s" % err)
        return 1
    finally:
        kill_leftovers()
        wineserver.stop()
    for figures in results.values():
        if "output" in figures:  # a standalone program: what it printed (stdout, then stderr)
            print(figures["output"])
    print(table(exp, results))
    # The first column (the variant; key_demo: the notes' way) is expected past the threshold, the
    # other (the stage, or what the variant is measured against) within it.
    verdicts = ["%s: %s (%s)" % (title, "past the threshold" if exp.broken(f) else "within it",
                                 "as expected" if exp.broken(f) == (n == 0) else "NOT as expected")
                for n, (title, f) in enumerate(results.items()) if isinstance(f, dict)]
    print("threshold (README): %s; %s" % (exp.threshold, "; ".join(verdicts)))
    print("(%.0f s, %s)" % (time.monotonic() - started, time.strftime("%Y-%m-%d")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
