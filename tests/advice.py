"""Advice that works when followed (issues 28 and 37): the concrete --name=value fixes an error line gives, pasted
into the same command, get it past that error. Shared by the bad-input cases, the fault matrix and the property
tests, so every advice line they produce is applied."""
import contextlib
import io
import re

from gptlib.errors import run_command

# given first, so a case's own values and the advice win: a short run of each command
SHORT = {"train": ["--max_iters=2"], "sample": ["--max_new_tokens=2", "--num_samples=1"], "eval": ["--max_tokens=64"],
         "bench": ["--iters=1", "--warmup_iters_bench=0"]}


def applicable_advice(line):
    """The --name=value settings an error line's fix (after 'problem; ') tells the user to add, where they are
    concrete: what a user would paste. Not: placeholders ('N', '...'), another script's flags, a syntax example
    ('write --x="[...]"'), or the value in force named as the thing to change ('change --x=4')."""
    fix = line.split("; ", 1)[1] if "; " in line else ""
    if fix.startswith(("write ", "quote ")):
        return []
    out = []
    for m in re.finditer(r"(\w+\.py\s+|change\s+)?--([a-z_][a-z0-9_]*)=([^\s;,)]+)", fix):
        value = m.group(3).strip("'\"")
        if m.group(1) or not value or value in ("N", "...", "DIR", "PATH", "FILE") or "..." in value or \
                value.endswith(".") or value[:1] in "[(\"'":
            continue
        out.append(f"--{m.group(2)}={value}")
    return out


def assert_advice_works(main, command, argv, line):
    """Apply line's concrete advice to the command that printed it: it must run, or fail on something else.
    Returns the advice applied (empty: the line gives none to paste)."""
    applied = applicable_advice(line)
    if applied:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = run_command(main, SHORT.get(command, []) + list(argv) + applied)
        after = err.getvalue().strip().splitlines()
        assert rc == 0 or line not in after, f"{command}: {applied} did not help: {line} -> {after[-3:]}"
    return applied
