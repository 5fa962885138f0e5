#!/usr/bin/env python3
"""xclient.py - an independent TCP echo load client (Python 3 standard library only).

Written from scratch to cross-check bench/echo_bench (see bench/crosscheck): the same modes, options
and output keys, a different design. Runs on Linux and, as far as its selectors allow, on Windows.

    python3 bench/xclient.py -p 9190 -c 60 -s 4096 -t 10
    python3 bench/xclient.py --churn -p 9190 -c 4 -t 10

echo (default): conns connections, each keeping exactly one size-byte message in flight for
  seconds seconds: send a message, receive until all its bytes came back, compare them with what was
  sent, send the next one (different bytes). A round trip counts only once it is fully echoed and
  matches. The clock starts once every connection is connected (the connect phase is not counted).
  Latency of a round trip: from just before its first byte is sent to just after its last byte
  arrives.
--churn: conns connections at a time, each connecting, echoing one size-byte message (checked),
  closing, and being replaced by a new one once closed, for seconds seconds; counts completed
  connections. Latency in churn: from the connect() call to the verified echo (a connection's life).

After the measured seconds no new message is sent, and every message still in flight must come
back (checked, not counted) within MESSAGE_TIMEOUT seconds: a message outstanding that long is an
error ("timeout"), so a server that stops echoing cannot go unnoticed. Every wait is bounded; the
whole run ends within CONNECT_TIMEOUT + seconds + MESSAGE_TIMEOUT + a few seconds.

Output: one line of key=value pairs on stdout (mode conns size seconds round_trips rtt_per_s
mb_per_s p50_ms p99_ms max_ms connections conn_per_s errors); the first few error messages go to
stderr. connections is the number of connections made (echo) or completed (churn); mb_per_s counts
the bytes of counted round trips both ways, in 10^6 bytes. Exit code 0, 1 if any error (connect
failure, mismatch, reset, early close, timeout), 2 on bad usage.

Design: one selectors loop (epoll on Linux) that only hands back the sockets that are ready, each socket's state an object attached to
its registration; sockets stay registered for reading, and a message is sent directly with send()
right after the previous echo completes; write interest is added only while a send is partial.
Messages are slices of a precomputed pseudo-random buffer passed through one of 256 byte-translation
tables (bytes.translate), so building and checking one costs no Python loop over its bytes.
--selector poll swaps epoll for poll(), which scans every socket on each turn as a poll loop does: a
diagnostic, to see how much the readiness mechanism's own CPU cost (large at 1,000 connections on a
2-core machine shared with the server) moves the figures. (That is how the cross-check found that
echo_bench's poll loop was the bottleneck at 1,000 connections; echo_bench now uses epoll on Linux.)
"""
import errno
import os
import random
import selectors
import socket
import sys
import time

USAGE = """\
Usage: xclient.py [--churn] [-h host] [-p port] [-c conns] [-s size] [-t seconds]
                  [--selector default|epoll|poll|select]
  echo mode (default): conns connections, each with one size-byte message in flight
  --churn: conns at a time, each: connect, echo one message (checked), close, repeat
  --selector: how readiness is waited for (default: the platform's best, epoll on Linux);
              poll scans every socket each turn, as a poll loop does (a diagnostic)
  defaults: -h 127.0.0.1 -p 9190 -c 10 -s 64 -t 5; limits: -c 1..2000, -s 1..65536, -t 1..600
"""
LIMITS = {"-c": (1, 2000), "-s": (1, 65536), "-t": (1, 600), "-p": (1, 65535)}
CONNECT_TIMEOUT = 30.0   # seconds one connect may take (echo: the whole connect phase)
MESSAGE_TIMEOUT = 15.0   # seconds one message may stay unechoed
MAX_REPORTED = 5         # error messages printed to stderr
RECV_CHUNK = 65536 + 1   # one more than the largest message: an extra byte shows at once
IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY,
               10035}  # 10035: WSAEWOULDBLOCK, what a non-blocking connect says on Windows


def usage_error(why):
    sys.stderr.write("xclient.py: %s\n%s" % (why, USAGE))
    sys.exit(2)


def parse_args(argv):
    opts = {"-h": "127.0.0.1", "-p": 9190, "-c": 10, "-s": 64, "-t": 5, "churn": False,
            "selector": selectors.DefaultSelector}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--churn":
            opts["churn"] = True
        elif arg == "--selector":
            if i + 1 >= len(argv):
                usage_error("--selector needs a value")
            i += 1
            name = argv[i]
            cls = (selectors.DefaultSelector if name == "default" else
                   getattr(selectors, name.capitalize() + "Selector", None)
                   if name in ("epoll", "poll", "select") else None)
            if cls is None:
                usage_error("--selector %r is not available here" % name)
            opts["selector"] = cls
        elif arg == "--help":
            sys.stdout.write(USAGE)
            sys.exit(0)
        elif arg in ("-h", "-p", "-c", "-s", "-t"):
            if i + 1 >= len(argv):
                usage_error("%s needs a value" % arg)
            value = argv[i + 1]
            i += 1
            if arg == "-h":
                if not value:
                    usage_error("empty host")
                opts[arg] = value
            else:
                try:
                    if not value.isdigit():
                        raise ValueError
                    number = int(value, 10)
                except ValueError:
                    usage_error("%s %r is not a whole number" % (arg, value))
                low, high = LIMITS[arg]
                if not low <= number <= high:
                    usage_error("%s %d is outside %d..%d" % (arg, number, low, high))
                opts[arg] = number
        else:
            usage_error("unknown argument %r" % arg)
        i += 1
    return opts


class Messages:
    """Message n of connection k: a size-byte window of a fixed pseudo-random buffer, starting at an
    offset that depends on k and n, passed through table t = (k + n) mod 256 of the 256 tables that
    add t to every byte. The buffer starts with a shuffle of all 256 byte values, so every value
    occurs; two consecutive messages of one connection use different tables and offsets, so a stale
    or misrouted echo cannot pass for the expected one."""

    def __init__(self, size):
        rng = random.Random(0x5EED)
        values = list(range(256))
        rng.shuffle(values)
        self.size = size
        self.buffer = bytes(values) + rng.randbytes(size + 1024)
        self.tables = [bytes((b + t) & 255 for b in range(256)) for t in range(256)]

    def get(self, conn, seq):
        offset = (conn * 7919 + seq * 263) % 1021
        return self.buffer[offset:offset + self.size].translate(self.tables[(conn + seq) & 255])


class Conn:
    """One connection's state, attached to its selector registration."""
    __slots__ = ("index", "sock", "seq", "msg", "sent", "got", "parts", "t0", "writing",
                 "connecting", "t_connect")

    def __init__(self, index, sock):
        self.index, self.sock = index, sock
        self.seq = 0
        self.msg = b""
        self.sent = self.got = 0
        self.parts = []
        self.t0 = self.t_connect = 0.0
        self.writing = False
        self.connecting = True


class Client:
    def __init__(self, opts):
        self.host, self.port = opts["-h"], opts["-p"]
        self.conns, self.size, self.seconds = opts["-c"], opts["-s"], opts["-t"]
        self.churn = opts["churn"]
        self.messages = Messages(self.size)
        self.sel = opts["selector"]()
        self.errors = 0
        self.reported = 0
        self.round_trips = 0
        self.connections = 0
        self.latencies = []
        self.measuring = False  # inside the measured seconds: completions count
        self.sending = True     # new messages (and, in churn, new connections) may start
        self.live = {}          # Conn objects not yet closed, by index
        self.connecting = 0     # how many of them have a connect under way
        self.in_flight = 0      # how many of them have a message under way
        self.next_index = 0
        self.addr = None
        self.elapsed = 0.0
        self.hard_deadline = time.monotonic() + CONNECT_TIMEOUT + self.seconds + MESSAGE_TIMEOUT + 5

    # -- errors ---------------------------------------------------------------------------------
    def error(self, conn, why):
        self.errors += 1
        if self.reported < MAX_REPORTED:
            self.reported += 1
            where = "connection %d: " % conn.index if conn is not None else ""
            sys.stderr.write("xclient.py: %s%s\n" % (where, why))
        elif self.reported == MAX_REPORTED:
            self.reported += 1
            sys.stderr.write("xclient.py: (further errors not shown)\n")
        if conn is not None:
            self.close(conn)

    def close(self, conn):
        if self.live.pop(conn.index, None) is None:
            return
        if conn.connecting:
            conn.connecting = False
            self.connecting -= 1
        if conn.msg:
            conn.msg = b""
            self.in_flight -= 1
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    # -- connecting -----------------------------------------------------------------------------
    def open(self):
        """Starts one non-blocking connect; the Conn is registered for writability."""
        index = self.next_index
        self.next_index += 1
        try:
            sock = socket.socket(self.addr[0], socket.SOCK_STREAM)
        except OSError as err:
            self.error(None, "socket(): %s" % err)
            return None
        conn = Conn(index, sock)
        conn.t_connect = time.perf_counter()
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(self.addr[1])
        except OSError as err:
            sock.close()
            self.error(None, "connect: %s" % err)
            return None
        self.live[index] = conn
        self.connecting += 1
        if code != 0 and code not in IN_PROGRESS:
            self.error(conn, "connect: %s" % os.strerror(code))
            return None
        # Done at once (0) or in progress: either way the socket reports writable, and
        # connected() reads the outcome from SO_ERROR.
        self.sel.register(sock, selectors.EVENT_WRITE, conn)
        return conn

    def connected(self, conn):
        """The connect finished (writable): check its outcome; True if it is usable."""
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            self.error(conn, "connect: %s" % os.strerror(code))
            return False
        conn.connecting = False
        self.connecting -= 1
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
        return True

    # -- one message ------------------------------------------------------------------------------
    def start_message(self, conn, now):
        conn.msg = self.messages.get(conn.index, conn.seq)
        self.in_flight += 1
        conn.sent = conn.got = 0
        conn.parts = []
        conn.t0 = now
        self.push(conn)

    def push(self, conn):
        """Sends what the socket takes of the rest of conn's message; write interest while any is
        left."""
        try:
            conn.sent += conn.sock.send(conn.msg[conn.sent:] if conn.sent else conn.msg)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as err:
            self.error(conn, "send: %s" % err)
            return
        want = conn.sent < len(conn.msg)
        if want != conn.writing:
            conn.writing = want
            self.sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0),
                            conn)

    def pull(self, conn):
        """Reads what arrived; on a complete, matching echo finishes the round trip."""
        try:
            data = conn.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.error(conn, "recv: %s (message %d, %d of %d bytes back)"
                       % (err, conn.seq, conn.got, self.size))
            return
        now = time.perf_counter()
        if not data:
            if conn.msg:
                self.error(conn, "the server closed the connection (message %d, %d of %d bytes "
                           "back)" % (conn.seq, conn.got, self.size))
            else:
                self.error(conn, "the server closed the connection between messages")
            return
        got = conn.got + len(data)
        if not conn.msg or got > conn.sent:
            self.error(conn, "%d bytes came back, but only %d were sent"
                       % (got, conn.sent if conn.msg else 0))
            return
        if got < self.size:  # partial: check it now, join at the end
            if data != conn.msg[conn.got:got]:
                self.mismatch(conn, conn.got, data)
                return
            conn.parts.append(data)
            conn.got = got
            return
        echoed = b"".join(conn.parts) + data if conn.parts else data
        if echoed != conn.msg:
            self.mismatch(conn, 0, echoed)
            return
        self.done(conn, now)

    def mismatch(self, conn, base, data):
        expected = conn.msg[base:base + len(data)]
        at = next(i for i in range(len(data)) if data[i] != expected[i])
        self.error(conn, "wrong echo: message %d byte %d is 0x%02x, sent 0x%02x"
                   % (conn.seq, base + at, data[at], expected[at]))

    def done(self, conn, now):
        conn.msg = b""
        self.in_flight -= 1
        conn.parts = []
        conn.seq += 1
        if self.measuring:
            self.round_trips += 1
            self.latencies.append(now - (conn.t_connect if self.churn else conn.t0))
        if self.churn:
            self.close(conn)
            if self.measuring:
                self.connections += 1
            if self.sending:
                self.open()
        elif self.sending:
            self.start_message(conn, now)

    # -- the loop --------------------------------------------------------------------------------
    def ready(self, conn, events):
        if conn.connecting:
            if self.connected(conn) and self.churn:
                self.start_message(conn, time.perf_counter())
            return
        if events & selectors.EVENT_WRITE and conn.writing:
            self.push(conn)
            if conn.index not in self.live:
                return
        if events & selectors.EVENT_READ:
            self.pull(conn)

    def loop_until(self, stop, condition=None):
        """Runs the selector loop until monotonic time stop or until condition() is true; checks
        for messages and connects that have waited too long once a second."""
        sel = self.sel
        next_check = time.monotonic() + 1.0
        while self.live:
            now = time.monotonic()
            if now >= stop or now >= self.hard_deadline:
                return
            if condition is not None and condition():
                return
            if now >= next_check:
                self.check_stalls()
                next_check = now + 1.0
                continue
            for key, events in sel.select(min(stop, next_check) - now):
                self.ready(key.data, events)

    def check_stalls(self):
        now = time.perf_counter()
        for conn in list(self.live.values()):
            if conn.connecting:
                if now - conn.t_connect > CONNECT_TIMEOUT:
                    self.error(conn, "connect timed out after %.0f s" % CONNECT_TIMEOUT)
            elif conn.msg and now - conn.t0 > MESSAGE_TIMEOUT:
                self.error(conn, "timeout: message %d not echoed within %.0f s (%d of %d bytes "
                           "back)" % (conn.seq, MESSAGE_TIMEOUT, conn.got, self.size))

    def run(self):
        try:
            info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as err:
            self.error(None, "cannot resolve %s: %s" % (self.host, err))
            return
        self.addr = (info[0][0], info[0][4])
        if self.churn:
            self.run_churn()
        else:
            self.run_echo()
        for conn in list(self.live.values()):  # only on a hard-deadline exit: all stuck
            self.error(conn, "still busy at the hard deadline")
        self.sel.close()

    def run_echo(self):
        for _ in range(self.conns):
            if self.open() is None and self.errors:
                break
        self.loop_until(time.monotonic() + CONNECT_TIMEOUT + 1, lambda: not self.connecting)
        for conn in list(self.live.values()):
            if conn.connecting:
                self.error(conn, "connect timed out after %.0f s" % CONNECT_TIMEOUT)
        self.connections = len(self.live)
        if self.errors or not self.live:  # retry nothing: a run without all its connections
            for conn in list(self.live.values()):  # measures nothing
                self.close(conn)
            return
        self.measure()

    def run_churn(self):
        self.measure(open_first=True)  # a churn run counts from its first connect

    def measure(self, open_first=False):
        start_wall = time.monotonic()
        start = time.perf_counter()
        self.measuring = True
        if open_first:
            for _ in range(self.conns):
                self.open()
        else:
            for conn in list(self.live.values()):
                if conn.index in self.live:
                    self.start_message(conn, time.perf_counter())
        self.loop_until(start_wall + self.seconds)
        self.elapsed = time.perf_counter() - start
        self.measuring = False
        self.sending = False
        # Drain: what is in flight must still come back right (checked, not counted).
        for conn in list(self.live.values()):
            if not conn.msg and not conn.connecting:
                self.close(conn)  # between messages (churn: not started) : nothing owed
        if self.churn:
            for conn in list(self.live.values()):
                if conn.connecting:
                    self.close(conn)  # a connect not finished: nothing was sent on it
        self.loop_until(time.monotonic() + MESSAGE_TIMEOUT + 1.5, lambda: not self.in_flight)
        for conn in list(self.live.values()):
            if conn.msg:
                self.error(conn, "timeout: message %d not echoed (%d of %d bytes back) after the "
                           "run" % (conn.seq, conn.got, self.size))
            else:
                self.close(conn)

    # -- result ---------------------------------------------------------------------------------
    def result_line(self):
        lat = sorted(self.latencies)

        def pct(p):  # nearest rank, in ms
            if not lat:
                return 0.0
            rank = max(1, -(-len(lat) * p // 100))  # ceil(n * p / 100)
            return lat[int(rank) - 1] * 1000.0

        secs = self.elapsed
        per_s = (lambda n: n / secs) if secs > 0 else (lambda n: 0.0)
        fields = [
            ("mode", "churn" if self.churn else "echo"), ("conns", self.conns),
            ("size", self.size), ("seconds", "%.2f" % secs),
            ("round_trips", self.round_trips), ("rtt_per_s", "%.1f" % per_s(self.round_trips)),
            ("mb_per_s", "%.3f" % (per_s(self.round_trips) * 2 * self.size / 1e6)),
            ("p50_ms", "%.3f" % pct(50)), ("p99_ms", "%.3f" % pct(99)),
            ("max_ms", "%.3f" % (lat[-1] * 1000.0 if lat else 0.0)),
            ("connections", self.connections),
            ("conn_per_s", "%.1f" % (per_s(self.connections) if self.churn else 0.0)),
            ("errors", self.errors)]
        return " ".join("%s=%s" % kv for kv in fields)


def raise_fd_limit(need):
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def main(argv):
    opts = parse_args(argv)
    if opts["selector"] is getattr(selectors, "SelectSelector", None) and opts["-c"] > 500:
        # Windows' only selector: Python's select() there takes at most 512 sockets
        usage_error("-c %d: select() here takes at most 512 sockets" % opts["-c"])
    raise_fd_limit(opts["-c"] + 64)
    client = Client(opts)
    try:
        client.run()
    except KeyboardInterrupt:
        client.error(None, "interrupted")
    print(client.result_line(), flush=True)
    return 1 if client.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
