#!/usr/bin/env python3
"""thread_trace.py - the pictures: which thread handles each I/O, from a real run (Python 3
standard library only).

    python3 tests/thread_trace.py 05_iocp_basic         build/trace/05_iocp_basic.svg (and .txt)
    python3 tests/thread_trace.py 05_iocp_basic --lifo  how 05's workers share the work
    python3 tests/thread_trace.py --all                 every built stage, copied to NN_name/threads.svg
    make -f Makefile.win trace STAGE=05_iocp_basic      builds the stage first, then the first line

It starts the stage's server with `--trace FILE` (common/Trace.h), drives a fixed workload over
loopback, stops the server as Ctrl+C does, reads the file the server wrote at its stop and draws
one lane per thread, time across, every event a mark coloured by connection. The suite's
trace_shape test runs the same workload and checks the shape each stage must have (check_shape).

The workload, the same for every stage:
    c1 idle       connects, echoes one line, waits; one more line while the others stream;
                  leaves last
    c2, c3 stream connect, echo one line, then stream STREAM_BYTES each, at the same time; leave
    c4 late       connects once the streams are done, echoes one line, leaves
Stage 01 serves one client at a time, so there they run one after another.
"""
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ON_WINDOWS, Fail, Server, Wineserver, connect, echo_exact,  # noqa: E402
                     kill_leftovers, random_bytes)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "build", "trace")
STAGES = ["01_blocking", "02_nonblocking_select", "03_overlapped_event", "04_completion_routine",
          "05_iocp_basic", "06_iocp_acceptex", "07_socket_pool", "appendix_epoll"]
LINE = b"Hello, which thread echoes me?\n"
STREAM_BYTES = 512 * 1024
EVENTS = ["accepted", "recv", "sent", "closed", "accept_posted", "disconnected"]
COMPLETIONS = ("recv", "sent")


def server_exe(stage, exe_dir=REPO):
    if stage == "appendix_epoll":
        return os.path.join(exe_dir, stage, "EchoServ_epoll")
    return os.path.join(exe_dir, stage, "EchoServ_win.exe")


# -- the workload -------------------------------------------------------------------------------
class Client:
    def __init__(self, label, port):
        self.label = label
        self.sock = connect(port)
        self.bytes = 0

    def echo(self, data, what):
        echo_exact(self.sock, data, timeout=60.0, what="%s: %s" % (self.label, what))
        self.bytes += len(data)

    def close(self):
        self.sock.close()


def stream_together(clients, size):
    """Each client streams size bytes at once, on a thread of its own; fails on any lost byte."""
    errors = []

    def run(client, seed):
        try:
            client.echo(random_bytes(size, seed), "stream")
        except Fail as err:
            errors.append(err)
    threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    return threads, errors


def wait_for_streams(threads, errors, bound=120.0):
    """Joins stream_together's threads (bounded); fails on the first stream that failed."""
    deadline = time.monotonic() + bound
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors or any(t.is_alive() for t in threads):
        raise Fail("stream: %s" % (errors[0] if errors else "not done within %.0f s" % bound))


def drive(port, one_at_a_time, stream_bytes=STREAM_BYTES):
    """The workload above. Returns the clients' labels (in the order the server accepts them)
    and the bytes each sent (all of which came back)."""
    done = []
    if one_at_a_time:
        for label, size in (("c1 idle", 0), ("c2 stream", stream_bytes),
                            ("c3 stream", stream_bytes), ("c4 late", 0)):
            client = Client(label, port)
            client.echo(LINE, "line")
            if size:
                client.echo(random_bytes(size, len(done)), "stream")
            elif label == "c1 idle":
                client.echo(LINE, "second line")
            client.close()
            done.append(client)
        return [(c.label, c.bytes) for c in done]
    idle = Client("c1 idle", port)
    idle.echo(LINE, "line")  # each waits for its echo: the server accepts them in this order
    streams = []
    for label in ("c2 stream", "c3 stream"):
        streams.append(Client(label, port))
        streams[-1].echo(LINE, "line")
    threads, errors = stream_together(streams, stream_bytes)
    idle.echo(LINE, "second line")  # while the streams run
    wait_for_streams(threads, errors)
    for c in streams:
        c.close()
    late = Client("c4 late", port)
    late.echo(LINE, "line")
    late.close()
    idle.close()
    return [(c.label, c.bytes) for c in (idle, streams[0], streams[1], late)]


def wait_for_lines(srv, prefix, count, timeout):
    """Waits (bounded) until the server has printed count lines starting with prefix."""
    deadline = time.monotonic() + timeout
    with srv.cond:
        while sum(1 for s, line in srv.lines if s == "stdout" and line.startswith(prefix)) < count:
            if time.monotonic() > deadline:
                raise Fail("%d '%s' lines within %.0f s; the log ends: %s"
                           % (count, prefix, timeout, srv.tail()))
            srv.cond.wait(0.5)


def run_traced(exe, trace_path, workload):
    """Starts the server exe with --trace, runs workload(port), stops it as Ctrl+C does and
    returns (what workload returned, the server's log lines). Fails if the stop is not clean."""
    if not os.path.isfile(exe):
        raise Fail("%s is not built (make -f Makefile.win)" % exe)
    if os.path.exists(trace_path):
        os.remove(trace_path)
    with Server(exe, ["0", "--trace", trace_path]) as srv:
        result = workload(srv.port)
        # Every client's "Closed" line before the stop: each stage records its close before
        # that line, so the trace then holds every event of the run.
        wait_for_lines(srv, "Closed client", len(result), timeout=20)
        stop = srv.stop()
        lines = [line for s, line in srv.lines if s == "stdout"]
    if stop.seconds is None:
        raise Fail("%s did not stop within 2 s of Ctrl+C" % exe)
    if not os.path.isfile(trace_path):
        raise Fail("%s wrote no trace file (%s)" % (exe, trace_path))
    return result, lines


# -- reading the file ---------------------------------------------------------------------------
class Trace:
    """A trace file: threads {id: role}, events [(us, thread, event, socket, bytes)], and the
    recorder's own count of records kept and lost."""

    def __init__(self, path):
        self.roles, self.events = {}, []
        self.records = self.lost = None
        with open(path) as f:
            for line in f:
                words = line.split()
                if not words or words[0] == "#":
                    continue
                if words[0] == "thread":
                    self.roles.setdefault(int(words[1]), words[2])
                elif words[0] == "records":
                    self.records, self.lost = int(words[1]), int(words[3])
                else:
                    us, tid, event, sock, count = words
                    self.events.append((int(us), int(tid), event, int(sock), int(count)))
        if self.records is None:
            raise Fail("%s: no 'records' line (the server did not finish writing it)" % path)
        self.events.sort(key=lambda e: e[0])

    def main_thread(self):
        return next(t for t, role in self.roles.items() if role == "main")

    def threads_of(self, events):
        return {e[1] for e in self.events if e[2] in events}

    def count(self, event):
        return sum(1 for e in self.events if e[2] == event)

    def bytes(self, event):
        return sum(e[4] for e in self.events if e[2] == event)

    def connections(self):
        """Each event's connection number: 1, 2, ... in the order accepted; 0 for an accept
        posted that no client has reached yet. A socket starts a new connection at each accept
        (07 reuses sockets); its later events (a disconnect after the close) keep that number."""
        current, numbers, next_number = {}, [], 1
        for us, tid, event, sock, count in self.events:
            if event == "accept_posted":
                current[sock] = 0
            elif event == "accepted":
                current[sock] = next_number
                next_number += 1
            numbers.append(current.get(sock, 0))
        return numbers

    def lanes(self):
        """[(thread, name)]: main first, then the named threads in the order they started
        (workers numbered), then any unnamed thread that recorded something."""
        lanes, workers = [], 0
        main = self.main_thread()
        accepts_on_main = any(e[1] == main and e[2] == "accepted" for e in self.events)
        lanes.append((main, "main (accept)" if accepts_on_main else "main"))
        for tid, role in self.roles.items():
            if tid == main:
                continue
            if role == "worker":
                workers += 1
                lanes.append((tid, "worker %d" % workers))
            else:
                lanes.append((tid, role))
        named = {t for t, _ in lanes}
        for tid in sorted({e[1] for e in self.events} - named):
            lanes.append((tid, "thread %d" % tid))
        return lanes


# -- the shapes each stage's lesson needs -------------------------------------------------------
def check_shape(stage, trace, clients, log_lines):
    """The problems with this run's trace, [] if none: the lesson of the stage's picture, and
    that the recorder lost nothing (counted against the workload and the Shutdown line)."""
    problems = []
    if trace.lost:
        problems.append("the recorder lost %d records" % trace.lost)
    total = sum(b for _, b in clients)
    # 06 records a close for a session whose accept failed too: count the clients' closes only.
    closed = sum(1 for e, n in zip(trace.events, trace.connections()) if e[2] == "closed" and n)
    for event, seen in (("accepted", trace.count("accepted")), ("closed", closed)):
        if seen != len(clients):
            problems.append("%d '%s' events, the workload made %d" % (seen, event, len(clients)))
    for event in COMPLETIONS:
        if trace.bytes(event) != total:
            problems.append("'%s' events add up to %d bytes, the clients sent %d"
                            % (event, trace.bytes(event), total))
    shutdown = [line for line in log_lines if line.startswith("Shutdown:")]
    if shutdown:  # 05-07: "Shutdown: <A> accepted, <C> closed, <B> bytes echoed"
        words = shutdown[-1].replace(",", "").split()
        accepted, closed_now, echoed = int(words[1]), int(words[3]), int(words[5])
        if (accepted, closed_now, echoed) != (trace.count("accepted"), closed,
                                              trace.bytes("sent")):
            problems.append("%s, the trace: %d accepted, %d closed, %d bytes sent"
                            % (shutdown[-1], trace.count("accepted"), closed, trace.bytes("sent")))
    main = trace.main_thread()
    all_threads = {e[1] for e in trace.events}
    completions = trace.threads_of(COMPLETIONS)
    if stage in ("01_blocking", "02_nonblocking_select", "03_overlapped_event", "appendix_epoll"):
        if all_threads != {main}:
            problems.append("events on %d threads, not on the main thread alone" % len(all_threads))
    elif stage == "04_completion_routine":
        io = [t for t, role in trace.roles.items() if role == "I/O"]
        if not io or completions != {io[0]}:
            problems.append("completions on %d threads, not on the I/O thread alone"
                            % len(completions))
        if trace.threads_of(("accepted",)) != {main}:
            problems.append("accepts not on the main (accept) thread")
    else:
        workers = {t for t, role in trace.roles.items() if role == "worker"}
        if main in completions:
            problems.append("a completion on the main thread")
        if len(completions & workers) < 2:
            problems.append("completions on %d worker(s) under the streaming load, not 2 or more"
                            % len(completions & workers))
        if stage != "05_iocp_basic" and not trace.threads_of(("accepted",)) <= workers:
            problems.append("an accept completed off the workers")
    return problems


# -- the picture --------------------------------------------------------------------------------
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#17becf"]
PENDING = "#999999"
WIDTH, LEFT, RIGHT, TOP, LANE = 880, 118, 70, 58, 30


def mark(event, x, y, colour, in_lane=True):
    """One event's mark: its shape says what happened, its colour which connection. In a lane,
    receives sit above the middle and sends below, so that both show where they are dense."""
    if event == "recv":
        return '<circle cx="%.1f" cy="%.1f" r="3.6" fill="%s"/>' % (x, y - 5 * in_lane, colour)
    if event == "sent":
        return ('<path d="M%.1f %.1fl4 7h-8z" fill="%s"/>' % (x, y + (1.5 if in_lane else -3.5),
                                                              colour))
    if event == "accepted":
        return ('<path d="M%.1f %.1fl6 6l-6 6l-6-6z" fill="%s" stroke="#000" stroke-width="0.8"/>'
                % (x, y - 6, colour))
    if event == "closed":
        return ('<path d="M%.1f %.1fl10 10m0-10l-10 10" stroke="%s" stroke-width="2.4"/>'
                % (x - 5, y - 5, colour))
    if event == "accept_posted":
        return ('<circle cx="%.1f" cy="%.1f" r="4.5" fill="none" stroke="%s" stroke-width="1.4"/>'
                % (x, y, colour))
    return ('<rect x="%.1f" y="%.1f" width="9" height="9" fill="none" stroke="%s" '
            'stroke-width="1.6"/>' % (x - 4.5, y - 4.5, colour))


LEGEND_TEXT = {"accepted": "accepted", "recv": "receive done", "sent": "send done",
               "closed": "closed", "accept_posted": "accept posted", "disconnected": "disconnected"}


def where_made(stage):
    if stage == "appendix_epoll":
        return "Linux (native, no Wine)"
    if ON_WINDOWS:
        return "Windows (%s)" % platform.version()
    try:
        wine = subprocess.run(["wine", "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        wine = "Wine"
    return "%s on Linux" % wine.replace("wine-", "Wine ")


def draw(stage, trace, clients, path, made):
    """Writes the SVG: one lane per thread, time across, a legend of shapes and colours."""
    lanes = trace.lanes()
    numbers = trace.connections()
    # 06 and 07 post an accept for every session before the first client: drawn as one mark
    # with its count at the left, so that the time axis shows the clients, not the start-up.
    first_accept = next((e[0] for e in trace.events if e[2] == "accepted"), None)
    startup = [i for i, e in enumerate(trace.events)
               if e[2] == "accept_posted" and first_accept is not None and e[0] < first_accept]
    # The stop's cancelled accepts (06: a close of a socket no client reached) are not drawn.
    cancelled = [i for i, (e, n) in enumerate(zip(trace.events, numbers))
                 if e[2] == "closed" and n == 0]
    skip = set(startup) | set(cancelled)
    shown = [e for i, e in enumerate(trace.events) if i not in skip] or trace.events
    t0 = shown[0][0] if shown else 0
    t1 = max(shown[-1][0], t0 + 1) if shown else 1
    plot = WIDTH - LEFT - RIGHT
    height = TOP + LANE * len(lanes) + 30 + 44 + (22 if cancelled else 0)
    row = {tid: i for i, (tid, _) in enumerate(lanes)}
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="Helvetica, Arial, sans-serif" font-size="13">' % (WIDTH, height, WIDTH,
                                                                            height),
           '<rect width="100%" height="100%" fill="#fff"/>',
           '<text x="8" y="20" font-size="15" font-weight="bold">%s: which thread handles '
           'each I/O</text>' % stage,
           '<text x="8" y="38" fill="#555">made by make trace on %s, %s; %d events</text>'
           % (made, time.strftime("%Y-%m-%d"), len(trace.events))]
    per_lane = Counter(e[1] for i, e in enumerate(trace.events) if i not in set(cancelled))
    for i, (tid, name) in enumerate(lanes):
        y = TOP + LANE * i + LANE / 2
        if i % 2 == 0:
            out.append('<rect x="0" y="%d" width="%d" height="%d" fill="#f3f3f3"/>'
                       % (TOP + LANE * i, WIDTH, LANE))
        out.append('<text x="8" y="%.1f" dominant-baseline="middle">%s</text>' % (y, name))
        out.append('<text x="%d" y="%.1f" dominant-baseline="middle" fill="#555">%d</text>'
                   % (WIDTH - RIGHT + 10, y, per_lane.get(tid, 0)))
    axis = TOP + LANE * len(lanes)
    out.append('<text x="%d" y="%d" fill="#555" font-size="11">events</text>'
               % (WIDTH - RIGHT + 10, TOP - 6))
    out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>' % (LEFT, axis, LEFT + plot,
                                                                         axis))
    span_ms = (t1 - t0) / 1000.0
    for k in range(6):
        x = LEFT + plot * k / 5
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#888"/>' % (x, axis, x,
                                                                               axis + 4))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555" font-size="11">'
                   '%s ms</text>' % (x, axis + 16, "%.0f" % (span_ms * k / 5)))
    for i, ((us, tid, event, sock, count), number) in enumerate(zip(trace.events, numbers)):
        if i in skip:
            continue
        x = LEFT + plot * (us - t0) / (t1 - t0)
        y = TOP + LANE * row[tid] + LANE / 2
        colour = COLOURS[(number - 1) % len(COLOURS)] if number else PENDING
        out.append(mark(event, x, y, colour))
    if startup:
        y = TOP + LANE * row[trace.events[startup[0]][1]] + LANE / 2
        out.append(mark("accept_posted", LEFT + 6, y, PENDING))
        out.append('<text x="%d" y="%.1f" dominant-baseline="middle" fill="#555">%d accepts '
                   'posted at the start, before the first client (not to scale)</text>'
                   % (LEFT + 16, y, len(startup)))
    legend = axis + 38
    x = 8
    for event in EVENTS:
        if trace.count(event):
            out.append(mark(event, x + 6, legend, "#333", in_lane=False))
            out.append('<text x="%d" y="%d" dominant-baseline="middle">%s</text>'
                       % (x + 16, legend, LEGEND_TEXT[event]))
            x += 30 + 7 * len(LEGEND_TEXT[event])
    x, legend = 8, legend + 22
    for i, (label, _) in enumerate(clients):
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>'
                   % (x, legend - 6, COLOURS[i % len(COLOURS)]))
        out.append('<text x="%d" y="%d" dominant-baseline="middle">%s</text>' % (x + 17, legend,
                                                                                 label))
        x += 30 + 7 * len(label)
    if trace.count("accept_posted"):
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (x, legend - 6,
                                                                                PENDING))
        out.append('<text x="%d" y="%d" dominant-baseline="middle">no client yet</text>'
                   % (x + 17, legend))
    if cancelled:
        out.append('<text x="8" y="%d" dominant-baseline="middle" fill="#555">Not drawn: %d '
                   'accepts still pending at the stop, cancelled by it (their sessions closed).'
                   '</text>' % (legend + 22, len(cancelled)))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# -- LIFO: how 05's workers share the work -------------------------------------------------------
def paced_round_trips(port, rounds=200, pause=0.002):
    """Light load: one client, one line at a time, a short pause after each echo, so that every
    worker is back waiting on the port when the next line comes."""
    client = Client("c1", port)
    for _ in range(rounds):
        client.echo(LINE, "line")
        time.sleep(pause)  # the load's pace, not a wait for the server
    client.close()
    return [("c1", client.bytes)]


def many_streams(port, clients=16, size=256 * 1024):
    streams = [Client("c%d" % (i + 1), port) for i in range(clients)]
    threads, errors = stream_together(streams, size)
    wait_for_streams(threads, errors)
    for c in streams:
        c.close()
    return [(c.label, c.bytes) for c in streams]


def worker_shares(trace):
    """The share of completions each worker handled, largest first, as percentages."""
    workers = [t for t, role in trace.roles.items() if role == "worker"]
    counts = Counter(e[1] for e in trace.events if e[2] in COMPLETIONS)
    total = sum(counts[w] for w in workers) or 1
    return sorted((100.0 * counts[w] / total for w in workers), reverse=True)


def idle_workers(trace, below=5.0):
    """How many workers handled less than `below` % of the completions."""
    return sum(1 for share in worker_shares(trace) if share < below)


def lifo(stage, runs=3):
    """Prints how the stage's workers share the work under light and heavy load. A port releases
    its waiting workers last in, first out, while fewer run than its concurrency value (Microsoft's
    page on I/O completion ports): under a light load the same two workers (one takes a receive,
    the other the send it posts, as the first still runs) should take nearly everything, and any
    further worker sleep. With two workers, as on a 2-processor machine, both work either way."""
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "%s-lifo.txt" % stage)
    print("%s on %s: completions per worker, largest share first" % (stage, where_made(stage)))
    for name, workload in (("light (1 client, 200 lines 2 ms apart)", paced_round_trips),
                           ("heavy (16 clients stream 256 KiB at once)", many_streams)):
        for run in range(runs):
            run_traced(server_exe(stage), path, workload)
            trace = Trace(path)
            shares = worker_shares(trace)
            print("  %s, run %d: %d workers, %s; under 5 %%: %d"
                  % (name, run + 1, len(shares), " ".join("%.0f %%" % x for x in shares),
                     idle_workers(trace)))
    return 0


def make_picture(stage):
    os.makedirs(OUT, exist_ok=True)
    txt, svg = os.path.join(OUT, stage + ".txt"), os.path.join(OUT, stage + ".svg")
    clients, lines = run_traced(server_exe(stage), txt,
                                lambda port: drive(port, stage == "01_blocking"))
    trace = Trace(txt)
    draw(stage, trace, clients, svg, where_made(stage))
    problems = check_shape(stage, trace, clients, lines)
    print("%s: %d events on %d threads, %d lost; wrote %s"
          % (stage, len(trace.events), len({e[1] for e in trace.events}), trace.lost,
             os.path.relpath(svg, REPO)))
    for p in problems:
        print("  shape: " + p)
    return 1 if problems else 0


def all_pictures():
    """Every built stage's picture, copied beside its README as threads.svg."""
    failed = 0
    for stage in STAGES:
        if not os.path.isfile(server_exe(stage)):
            print("%s: not built, no picture" % stage)
            continue
        failed += make_picture(stage)
        shutil.copyfile(os.path.join(OUT, stage + ".svg"), os.path.join(REPO, stage, "threads.svg"))
    return 1 if failed else 0


def main(argv):
    if argv == ["--all"]:
        return with_wineserver(all_pictures)
    if not argv or argv[0].rstrip("/") not in STAGES:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        print("stages: " + " ".join(STAGES), file=sys.stderr)
        return 1
    stage = argv[0].rstrip("/")
    return with_wineserver(lambda: lifo(stage) if "--lifo" in argv else make_picture(stage))


def with_wineserver(job):
    wineserver = Wineserver()  # one wineserver for every run, as the suite does
    wineserver.start()
    try:
        return job()
    except Fail as err:
        print(err, file=sys.stderr)
        return 1
    finally:
        kill_leftovers()
        wineserver.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
