"""Watch one stage work: start its server, run its client against it, stop the server with Ctrl+C.

    python3 tests/demo.py 01_blocking          (or: make -f Makefile.win demo STAGE=01_blocking)

At a terminal you type the lines yourself (Q quits; Ctrl+C stops the demo too); with no terminal a
few sample lines are sent (input piped in is not passed on). The server's own log lines are shown
prefixed with "server| ". On Linux both programs run in Wine. Ended by SIGTERM (kill, timeout) or
SIGHUP (the terminal closed), it stops the server as after Ctrl+C.
"""
import os
import signal
import subprocess
import sys
import threading

SAMPLE_INPUT = b"Hello, echo server!\nTCP is a byte stream.\nQ\n"
# The signals that end the demo as Ctrl+C does (SIGHUP: not on Windows).
END_SIGNALS = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


class Ended(SystemExit):
    """Raised by a SIGTERM or SIGHUP: the server is stopped on the way out (a SystemExit, so that
    uncaught it ends the demo quietly, with 128 + the signal's number)."""


def ended(signum, _frame):
    raise Ended(128 + signum)


def launcher():
    return [] if os.name == "nt" else ["wine"]


def start_server(stage):
    """Starts the server on a free port; returns (process, port) once it listens. The server is
    kept out of the terminal's Ctrl+C (its own process group; on Linux its own session): a Ctrl+C
    at the terminal reaches the client and this script, which then stops the server itself."""
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if os.name == "nt" else 0
    server = subprocess.Popen(launcher() + [os.path.join(stage, "EchoServ_win.exe"), "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, creationflags=flags,
                              start_new_session=os.name != "nt")
    listening = threading.Event()
    port = []

    def show_log():
        for raw in server.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            print("server| " + line, flush=True)
            if line.startswith("Listening on port "):
                port.append(int(line.split()[-1]))
                listening.set()
        listening.set()  # the server ended: stop waiting

    server.log_thread = threading.Thread(target=show_log, daemon=True)
    server.log_thread.start()
    try:
        started = listening.wait(60) and port
    except BaseException:  # Ctrl+C or SIGTERM while Wine starts: the server is not left running
        server.kill()
        raise
    if not started:
        server.kill()
        sys.exit("The server did not start listening (see its output above).")
    return server, port[0]


def stop_server(server):
    """Ctrl+C, as a user would press it; Ctrl+Break on Windows (a child in its own group). A Ctrl+C
    (or a SIGTERM or SIGHUP) meanwhile is passed on to the server (a second one ends it at once)."""
    def interrupt(*_):
        server.send_signal(signal.CTRL_BREAK_EVENT if os.name == "nt" else signal.SIGINT)

    previous = {sig: signal.signal(sig, interrupt) for sig in [signal.SIGINT] + END_SIGNALS}
    try:
        interrupt()
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    server.log_thread.join(5)  # every line the server printed, its last one included


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = os.path.basename(sys.argv[1].rstrip("/\\")) if len(sys.argv) == 2 else ""
    stage = os.path.join(root, name)
    if not name or not os.path.isfile(os.path.join(stage, "EchoServ_win.c")):
        stages = sorted(folder for folder in os.listdir(root)
                        if os.path.isfile(os.path.join(root, folder, "EchoServ_win.c")))
        sys.exit("Usage: python3 tests/demo.py <stage folder>   (make -f Makefile.win demo STAGE=...)\n"
                 "%s is not a stage; the stages: %s" % (name or "(none)", ", ".join(stages)))
    for program in ("EchoServ_win.exe", "StableEchoClnt_win.exe"):
        if not os.path.isfile(os.path.join(stage, program)):
            sys.exit("%s is not built: make -f Makefile.win %s" % (os.path.join(name, program), name))
    os.environ.setdefault("WINEDEBUG", "-all")
    for sig in END_SIGNALS:
        signal.signal(sig, ended)
    server, port = start_server(stage)
    client = launcher() + [os.path.join(stage, "StableEchoClnt_win.exe"), "127.0.0.1", str(port)]
    try:
        if sys.stdin.isatty():
            code = subprocess.call(client)
        else:
            print("(no terminal to type at: the demo sends its own sample lines; piped input is not "
                  "passed on)", flush=True)
            code = subprocess.run(client, input=SAMPLE_INPUT).returncode
        print("\nclient exited with code %d; stopping the server with Ctrl+C" % code, flush=True)
    except KeyboardInterrupt:  # Ctrl+C at the terminal: it has ended the client as well
        code = 0
        print("\nCtrl+C: stopping the server", flush=True)
    except Ended as end:  # SIGTERM or SIGHUP: subprocess has killed the client
        code = end.code
        try:
            print("\nSignal %d: stopping the server" % (code - 128), flush=True)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
    finally:
        stop_server(server)
    sys.exit(code)


if __name__ == "__main__":
    main()
