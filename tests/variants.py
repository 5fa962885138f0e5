#!/usr/bin/env python3
"""variants.py - the experiments and the steps, kept as diffs and made into full files by
`git apply` (Python 3 standard library, and git).

    python3 tests/variants.py write build/experiments/06_iocp_acceptex/no_repost/EchoServ_win.c
    python3 tests/variants.py write build/steps/06_iocp_acceptex/2/EchoServ_win.c
                  writes one variant or intermediate (Makefile.win calls this)
    python3 tests/variants.py unpack   every variant and intermediate as a full file under
                                       build/unpacked/ (for a maintainer: see CONTRIBUTING.md)
    python3 tests/variants.py pack     rewrites every .diff from those full files

An experiment `NN_name/experiments/NAME.diff` is applied to the stage's EchoServ_win.c. The steps
`NN_name/steps/1-name.diff`, `2-name.diff`, ... are applied in order to the PREVIOUS stage's
EchoServ_win.c: intermediate N is the file after N of them, and the last one is the stage itself.
Every .diff starts `--- a/EchoServ_win.c` / `+++ b/EchoServ_win.c` (what
`diff -u --label a/EchoServ_win.c --label b/EchoServ_win.c OLD NEW` writes).
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["01_blocking", "02_nonblocking_select", "03_overlapped_event", "04_completion_routine",
          "05_iocp_basic", "06_iocp_acceptex", "07_socket_pool"]
SOURCE = "EchoServ_win.c"
HEADER = "--- a/%s\n+++ b/%s\n" % (SOURCE, SOURCE)
STEP_NAME = re.compile(r"([1-9][0-9]*)-[a-z0-9][a-z0-9-]*\.diff$")
UNPACKED = os.path.join(REPO, "build", "unpacked")


class VariantError(Exception):
    pass


def stage_file(stage):
    return os.path.join(REPO, stage, SOURCE)


def previous_stage(stage):
    return STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) > 0 else None


def experiment_diffs(stage):
    """{NAME: path} of the stage's experiments/NAME.diff."""
    paths = glob.glob(os.path.join(REPO, stage, "experiments", "*.diff"))
    return {os.path.basename(p)[:-len(".diff")]: p for p in sorted(paths)}


def step_diffs(stage):
    """The stage's steps/*.diff in order; raises VariantError unless they are named N-name.diff
    and numbered 1, 2, ... with no gap."""
    paths = glob.glob(os.path.join(REPO, stage, "steps", "*.diff"))
    numbered = []
    for path in paths:
        match = STEP_NAME.match(os.path.basename(path))
        if not match:
            raise VariantError("%s/steps/%s: a step is named N-name.diff (N from 1; name in a-z, "
                               "0-9, -)" % (stage, os.path.basename(path)))
        numbered.append((int(match.group(1)), path))
    numbered.sort()
    if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
        raise VariantError("%s/steps/: the steps are numbered %s, not 1 to %d"
                           % (stage, [n for n, _ in numbered], len(numbered)))
    if numbered and previous_stage(stage) is None:
        raise VariantError("%s has steps but no previous stage" % stage)
    return [path for _, path in numbered]


def git_apply(folder, diff, check=False):
    """git apply `diff` to folder/EchoServ_win.c; raises VariantError with git's words."""
    with open(diff, encoding="utf-8") as f:  # CR LF read as LF (a Windows checkout may have it)
        if not f.read().startswith(HEADER):
            raise VariantError("%s does not start with %r" % (os.path.relpath(diff, REPO), HEADER))
    command = ["git", "apply", "--whitespace=nowarn"] + (["--check"] if check else []) + \
        [os.path.abspath(diff)]
    try:
        proc = subprocess.run(command, cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60)
    except OSError as err:
        raise VariantError("git apply could not run (is git on PATH?): %s" % err)
    if proc.returncode != 0:
        raise VariantError("%s does not apply: %s" % (os.path.relpath(diff, REPO),
                                                       proc.stdout.decode("utf-8", "replace")
                                                       .strip().replace("\n", "; ")))


def apply_chain(base, diffs, out):
    """Copies `base` to `out` (an EchoServ_win.c), then applies each diff to it in order."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    if os.path.basename(out) != SOURCE:
        raise VariantError("the output must be named %s: the diffs patch that name" % SOURCE)
    shutil.copyfile(base, out)
    for diff in diffs:
        git_apply(folder, diff)


def build_variant(kind, stage, name, out):
    """Writes experiment NAME, or intermediate N (name: a number), of stage to `out`."""
    if kind == "experiments":
        diffs = experiment_diffs(stage)
        if name not in diffs:
            raise VariantError("%s has no experiments/%s.diff" % (stage, name))
        apply_chain(stage_file(stage), [diffs[name]], out)
    else:
        steps = step_diffs(stage)
        if not name.isdigit() or not 1 <= int(name) <= len(steps):
            raise VariantError("%s has %d steps: N is 1 to %d, not %s"
                               % (stage, len(steps), len(steps), name))
        apply_chain(stage_file(previous_stage(stage)), steps[:int(name)], out)


def compose_problem(stage):
    """None if the stage's steps, applied in order to the previous stage, give its file byte for
    byte; else what is wrong."""
    try:
        steps = step_diffs(stage)
        if not steps:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, SOURCE)
            apply_chain(stage_file(previous_stage(stage)), steps, out)
            with open(out, "rb") as made, open(stage_file(stage), "rb") as real:
                made, real = made.read(), real.read()
    except VariantError as err:
        return str(err)
    if made != real:
        line = next((i for i, (a, b) in enumerate(zip(made.split(b"\n"), real.split(b"\n")), 1)
                     if a != b), min(made.count(b"\n"), real.count(b"\n")) + 1)
        return ("%s's %d steps applied to %s give a file that differs from %s/%s from line %d"
                % (stage, len(steps), previous_stage(stage), stage, SOURCE, line))
    return None


def check_applies(stage, name):
    """Raises VariantError unless experiments/NAME.diff applies cleanly to the stage (--check)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(stage_file(stage), os.path.join(tmp, SOURCE))
        git_apply(tmp, experiment_diffs(stage)[name], check=True)


def changed_lines(diff):
    """The lines a diff removes or adds (not its ---/+++ header)."""
    with open(diff, encoding="utf-8") as f:
        lines = f.read().splitlines()[2:]
    return sum(1 for line in lines if line[:1] in "+-")


def make_diff(old, new):
    """The unified diff from file old to file new, with the header HEADER (git diff does the
    work; the function names it adds after each @@ are dropped, as diff -u has none)."""
    proc = subprocess.run(["git", "diff", "--no-index", "--no-color", "--no-ext-diff",
                           "--diff-algorithm=myers", "-U3", old, new],
                          stdout=subprocess.PIPE, timeout=60)
    if proc.returncode not in (0, 1):
        raise VariantError("git diff --no-index %s %s failed" % (old, new))
    text = proc.stdout.decode("utf-8")
    body = text[text.find("\n@@") + 1:] if "\n@@" in text else ""
    newline = "\r\n" if "\r\n" in body else "\n"  # a CR LF checkout: its diffs too
    return (HEADER.replace("\n", newline) +
            re.sub(r"(?m)^(@@ [^@]* @@)[^\n]*\n", lambda m: m.group(1) + newline, body))


def unpacked(stage):
    """[(full file under build/unpacked/, its .diff, the diffs that make it from base, base,
    what pack diffs it from)]. pack diffs a step's last full file from the stage itself."""
    folder = os.path.join(UNPACKED, stage)
    found = [(os.path.join(folder, "experiments", name + ".c"), diff, [diff], stage_file(stage),
              stage_file(stage)) for name, diff in experiment_diffs(stage).items()]
    steps = step_diffs(stage)
    before = stage_file(previous_stage(stage)) if steps else None
    for n, diff in enumerate(steps, 1):
        full = os.path.join(folder, "steps", os.path.basename(diff)[:-len(".diff")] + ".c")
        found.append((full, diff, steps[:n], stage_file(previous_stage(stage)), before))
        before = full
    return found


def unpack():
    for stage in STAGES:
        for full, _, diffs, base, _ in unpacked(stage):
            with tempfile.TemporaryDirectory() as tmp:
                apply_chain(base, diffs, os.path.join(tmp, SOURCE))
                os.makedirs(os.path.dirname(full), exist_ok=True)
                shutil.copyfile(os.path.join(tmp, SOURCE), full)
            print("wrote %s" % os.path.relpath(full, REPO))
    print("Change the stage, carry the change into these files, then: python3 tests/variants.py pack")


def pack():
    """Each experiment: the diff from its stage to its full file. Each step N: from intermediate
    N-1 (the previous stage for N = 1) to intermediate N; the last step's to the stage itself."""
    for stage in STAGES:
        found = unpacked(stage)
        last_step = found[-1][0] if step_diffs(stage) else None
        for full, diff, _, _, old in found:
            new = stage_file(stage) if full == last_step else full
            for path in (old, new):
                if not os.path.isfile(path):
                    raise VariantError("%s is missing: run `python3 tests/variants.py unpack` first"
                                       % os.path.relpath(path, REPO))
            text = make_diff(old, new)
            with open(diff, encoding="utf-8", newline="") as f:
                if f.read() == text:
                    continue
            with open(diff, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            print("rewrote %s (%d changed lines)" % (os.path.relpath(diff, REPO),
                                                     changed_lines(diff)))
        problem = compose_problem(stage)
        if problem:
            raise VariantError(problem)


def write(out):
    """Makefile.win's entry: the output path names what to write, e.g.
    build/experiments/STAGE/NAME/EchoServ_win.c or build/steps/STAGE/N/EchoServ_win.c."""
    parts = os.path.normpath(out).replace("\\", "/").split("/")
    if len(parts) < 4 or parts[-4] not in ("experiments", "steps") or parts[-3] not in STAGES:
        raise VariantError("%s: expected .../experiments/STAGE/NAME/%s or .../steps/STAGE/N/%s"
                           % (out, SOURCE, SOURCE))
    build_variant(parts[-4], parts[-3], parts[-2], out)


def howto(stage, n):
    """What `make step` prints: the steps of the stage, and how to run intermediate n."""
    steps = step_diffs(stage) if stage in STAGES else []
    if not steps or not n.isdigit() or not 1 <= int(n) <= len(steps):
        print("usage: make -f Makefile.win step STAGE=<stage> N=<number>; the steps:")
        for each in STAGES:
            for i, diff in enumerate(step_diffs(each), 1):
                print("  STAGE=%s N=%d  %s" % (each, i, os.path.relpath(diff, REPO)))
        raise VariantError("no step %s of %s" % (n, stage) if n else "N= says which step")
    exe = "build/steps/%s/%s/EchoServ_win.exe" % (stage, n)
    print("%s: %s applied to %s/%s, step %s of %d." % (exe, ", ".join(
        os.path.basename(d) for d in steps[:int(n)]), previous_stage(stage), SOURCE, n, len(steps)))
    wine = "" if os.name == "nt" else "WINEDEBUG=-all wine "
    print("Run it from the repository root, each line in its own console:")
    print("  %s%s 9190" % (wine, exe.replace("/", os.sep) if os.name == "nt" else exe))
    print("  %s%s/StableEchoClnt_win.exe 127.0.0.1 9190" % (wine, stage))


def main(argv):
    try:
        if argv[:1] == ["write"] and len(argv) == 2:
            write(argv[1])
        elif argv[:1] == ["howto"] and len(argv) <= 3:
            howto(*(argv[1:] + ["", ""])[:2])
        elif argv == ["unpack"]:
            unpack()
        elif argv == ["pack"]:
            pack()
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except VariantError as err:
        print("variants.py: %s" % err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
