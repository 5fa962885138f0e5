"""benchlib.py - what bench/run and bench/crosscheck share: the stages' capacities, building
echo_bench, and the tests' harness (starting servers, the wineserver, waiting for idle)."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness import ON_WINDOWS, ClientCount, Server, Wineserver  # noqa: E402,F401  (re-exported)

STAGES = {  # how many clients each stage serves at once (the contract)
    "01_blocking": 1, "02_nonblocking_select": 63, "03_overlapped_event": 63,
    "04_completion_routine": 1000, "05_iocp_basic": 1000, "06_iocp_acceptex": 1000,
    "07_socket_pool": 1000,
    "appendix_epoll": 1000,  # Linux only, native (no Wine)
}
NATIVE_STAGES = {"appendix_epoll"}
# The reference appendix_epoll is measured against (bench/run): an epoll echo loop, nothing else.
BARE_EXE = os.path.join(HERE, "bare_epoll_echo")
SETTLE_TIMEOUT = 60.0  # seconds a server may take to close the previous run's connections
BENCH_EXE = os.path.join(HERE, "echo_bench.exe" if ON_WINDOWS else "echo_bench")


def server_exe(stage):
    """A stage's server: the Windows .exe (through Wine on Linux), or the appendix's native one."""
    name = "EchoServ_epoll" if stage in NATIVE_STAGES else "EchoServ_win.exe"
    return os.path.join(ROOT, stage, name)


def build():
    """Every stage (make; on Linux the appendix too), then echo_bench, natively; on Linux also
    the bare epoll loop bench/run compares the appendix with."""
    make = "mingw32-make" if ON_WINDOWS and shutil.which("mingw32-make") else "make"
    subprocess.run([make, "-s", "-f", "Makefile.win"], cwd=ROOT, check=True, timeout=900)
    compiler = "gcc" if ON_WINDOWS else (shutil.which("cc") or "gcc")
    libs = ["-lws2_32"] if ON_WINDOWS else []
    subprocess.run([compiler, "-O2", "-std=c11", "-Wall", "-Wextra", "-o", BENCH_EXE,
                    os.path.join(HERE, "echo_bench.c")] + libs, check=True, timeout=300)
    if not ON_WINDOWS:
        subprocess.run([compiler, "-O2", "-std=c11", "-Wall", "-Wextra", "-o", BARE_EXE,
                        os.path.join(HERE, "bare_epoll_echo.c")], check=True, timeout=300)
