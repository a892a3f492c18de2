"""Settings, nanoGPT-style: `python train.py config/foo.py --batch_size=8 --compile=False`.

Every command's settings are a dataclass. Each field is declared once: its default, its valid range or
choices, and a one-line comment that `--help` prints:

    batch_size: int = setting(8, ge=1)  # micro-batch size per GPU, in sequences

Config files are Python-looking files of `name = value` lines; values may be literals, arithmetic and
names assigned earlier (`total_batch_size = 8 * 64 * 1024`). Nothing is ever evaluated as code: files and
overrides are parsed with `ast`, arithmetic is bounded (no 9**9**9), only known keys are accepted (an
unknown key names the closest known one), and one step, validate(), checks every value's type and
range and then the class's cross-field problems(). A bad value is one ConfigError line naming the
setting, what it got and what it accepts.

Rules a field may declare (in its metadata; model.py writes them with dataclasses.field directly):
    ge, gt, le, lt    numeric bounds                  choices   the allowed values
    pattern           a regex a string must match     path      'dir' (a directory to write into) or
                                                                'file' (a file to write)
Every float must be finite and every int must fit in 64 bits, without saying so.
"""
import ast
import dataclasses
import difflib
import inspect
import io
import itertools
import math
import operator
import os
import re
import sys
import time
import tokenize
import typing
from dataclasses import field

from . import paths
from .errors import ConfigError

MAX_INT = 2 ** 63 - 1  # every integer setting and every intermediate of config arithmetic fits in int64
MAX_SEQUENCE = 100_000  # longest string or list config arithmetic may build ("a" * 10**10 is refused)
RULE_KEYS = ("ge", "gt", "le", "lt", "choices", "pattern", "path")


def setting(default, **rules):
    """A dataclass field with a default and its valid range/choices (see the module docstring)."""
    unknown = set(rules) - set(RULE_KEYS)
    assert not unknown, f"unknown setting rules {unknown}"
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


MAX_CPU_THREADS = 4096  # cpu_threads' bound: more cores than any machine has; torch takes a C int (2**40 overflowed)
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
DTYPES = ["auto", "float32", "bfloat16", "float16"]


# ----------------------------------------------------------------------------- config files

def _guard(value, where):
    """Bound what config arithmetic may build: int64 integers, short strings and lists."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ConfigError(f"{where}: {_number(value)} is too large (settings are at most {MAX_INT:,})")
    if isinstance(value, (str, list)) and len(value) > MAX_SEQUENCE:
        raise ConfigError(f"{where}: a value of {len(value):,} items or characters is too long")
    return value


def _number(v):
    return f"a {v.bit_length()}-bit number" if isinstance(v, int) and v.bit_length() > 64 else repr(v)


def _binop(op, left, right, where):
    if isinstance(op, ast.Pow):  # refuse before computing: 9**9**9 would never finish
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 \
                and right * math.log2(abs(left)) > 64:
            raise ConfigError(f"{where}: {left}**{right} is too large (settings are at most {MAX_INT:,})")
    if isinstance(op, ast.Mult):  # "a" * 10**10 would fill the memory first
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list)) and isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
                raise ConfigError(f"{where}: a value of {len(seq) * n:,} items or characters is too long")
    try:
        return _BINOPS[type(op)](left, right)
    except ZeroDivisionError:
        raise ConfigError(f"{where}: division by zero") from None
    except OverflowError:
        raise ConfigError(f"{where}: the result is too large for a number") from None
    except TypeError:
        raise ConfigError(f"{where}: cannot apply {type(op).__name__} to {left!r} and {right!r}") from None


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _safe_value(node, names, where):
    """A literal, a list/tuple/dict of them, bounded arithmetic, or an earlier name. Nothing else."""
    if isinstance(node, ast.Constant):
        return _guard(node.value, where)
    if isinstance(node, (ast.List, ast.Tuple)):
        return _guard([_safe_value(e, names, where) for e in node.elts], where)
    if isinstance(node, ast.Dict):
        return {_safe_value(k, names, where): _safe_value(v, names, where) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _safe_value(node.operand, names, where)
        if not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: a sign needs a number, not {v!r}")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _safe_value(node.left, names, where), _safe_value(node.right, names, where)
        return _guard(_binop(node.op, left, right, where), where)
    if isinstance(node, ast.Call) and _call_name(node.func) in SAFE_CALLS and not node.keywords and len(node.args) <= 1:
        args = [_safe_value(a, names, where) for a in node.args]
        try:
            return _guard(SAFE_CALLS[_call_name(node.func)](*args), where)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {ast.unparse(node)}: {e}") from None
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise ConfigError(f"{where}: '{node.id}' is not defined above; config values may only use names assigned earlier")
    raise ConfigError(f"{where}: only literals, arithmetic and earlier names are allowed, not {ast.unparse(node)!r}")


# The calls a config value may make: nanoGPT's finetune_shakespeare.py names its run 'ft-' + str(time.time()).
# A config file may `import time` for that, and nothing else.
SAFE_CALLS = {"str": str, "int": int, "float": float, "round": round, "time.time": time.time}
CONFIG_IMPORTS = {"time"}


def _call_name(func):
    """'str' or 'time.time' for the callee of a call node, else ''."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def read_config_file(path, names):
    """(`name = value` assignments of a config file as a dict, the names its later values use): `names` are
    values known so far. A name used by a later value is a helper (`n = 8` then `batch_size = n * 2`)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except OSError as e:
        bad = paths.problem(path, "file")
        raise ConfigError(f"cannot read config file: {bad[1] if bad else f'{path}: {e.strerror}'}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; config files hold `name = value` lines") from None
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte
        raise ConfigError(f"{path}:{getattr(e, 'lineno', '?')}: syntax error: {getattr(e, 'msg', e)}") from None
    out, used = {}, set()
    for stmt in tree.body:
        where = f"{path}:{stmt.lineno}"
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if isinstance(stmt, ast.Import) and {a.name for a in stmt.names} <= CONFIG_IMPORTS and \
                not any(a.asname for a in stmt.names):
            continue  # nanoGPT's `import time`; time.time() is one of SAFE_CALLS
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise ConfigError(f"{where}: config files may only hold `name = value` lines")
        out[stmt.targets[0].id] = _safe_value(stmt.value, {**names, **out}, where)
        used |= {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name) and n.id in out}
    return out, used


def parse_override(text):
    """A command-line value: a Python literal if it parses as one, else the plain string."""
    try:
        return _guard(ast.literal_eval(text), f"--{text}")
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text


# ----------------------------------------------------------------------------- types and rules

def _check_type(key, value, ftype):
    """The value converted to the field's type, or ConfigError."""
    origin = typing.get_origin(ftype)
    if ftype is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():  # 1e5 for max_iters
            return int(value)
    elif ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{key} is too large for a number") from None
    elif ftype is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # --wandb_run_name=2024
            return str(value)
    elif ftype is list or origin is list:
        item = (typing.get_args(ftype) or (str,))[0]
        if isinstance(value, str) and value.strip()[:1] in "[(" and value.strip():  # a list literal that did not parse
            raise ConfigError(f"{key}: {value!r} is not a valid list; write --{key}=\"['a', 'b']\" (quoted for the "
                              f"shell) or --{key}=a,b")
        if isinstance(value, str):  # --val_sets=val,val-python  or  --languages "Python, C"
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)) and item is str and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of names (str), got {value!r}; quote them: "
                              f"--{key}=\"['a', 'b']\" or --{key}=a,b")
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # --classic_lrs=1e-3: one item
            value = [value]
        if isinstance(value, (list, tuple)):
            return [_check_type(key, v, item) for v in value]
    tname = getattr(ftype, "__name__", str(ftype))
    raise ConfigError(f"{key} must be {'a list of ' + item.__name__ if origin is list else tname}, "
                      f"got {value!r} ({type(value).__name__})")


def describe_rules(rules):
    """'>= 1', 'one of a, b', ... for --help and messages."""
    words = []
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in rules:
            words.append(f"{sym} {rules[key]:g}" if isinstance(rules[key], float) else f"{sym} {rules[key]}")
    if "choices" in rules:
        words.append("one of " + ", ".join(repr(c) for c in rules["choices"]))
    if "pattern" in rules:
        words.append("of the form " + rules["pattern"].replace("(:\\d+)?", "[:N]").replace("|", ", "))
    return " and ".join(words)


def _check_path(key, value, kind):
    """A destination: a directory to write into ('dir') or a file to write ('file'); it need not exist,
    but it must not be the other kind, and no folder on its way may be a file."""
    if not value:
        return
    path = os.path.abspath(os.path.expanduser(value))
    if kind == "dir" and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}={value!r} is a file, not a directory; pass a directory (it is created if missing)")
    if kind == "file" and os.path.isdir(path):
        raise ConfigError(f"{key}={value!r} is a directory; pass a file name inside it instead")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"{key}={value!r} cannot be created: {parent} is a file, not a directory")


def check_value(key, value, rules):
    """ConfigError unless value meets its declared rules (and is a finite float / an int64)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ConfigError(f"{key}={_number(value)} is too large (at most {MAX_INT:,})")
    ok = True
    for k, test in (("ge", operator.ge), ("gt", operator.gt), ("le", operator.le), ("lt", operator.lt)):
        if k in rules and not test(value, rules[k]):
            ok = False
    if "choices" in rules and value not in rules["choices"]:
        ok = False
    if "pattern" in rules and not re.fullmatch(rules["pattern"], str(value)):
        ok = False
    if not ok:
        raise ConfigError(f"{key} must be {describe_rules(rules)}, got {value!r}")
    if "path" in rules:
        _check_path(key, value, rules["path"])


def validate(cfg):
    """Check every field of a settings dataclass against its rules, then the class's cross-field
    problems() (the first one found is raised). Returns cfg."""
    for f in dataclasses.fields(cfg):
        check_value(f.name, getattr(cfg, f.name), f.metadata)
    problems = cfg.problems() if hasattr(cfg, "problems") else []
    if problems:
        raise ConfigError(problems[0])
    return cfg


# ----------------------------------------------------------------------------- loading

def _closest(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


GROUP_MARK = "# ---"  # a comment line `# --- heading` in a settings class starts a group of --help


def field_comments(cls):
    """(field name -> its one-line comment, field name -> its group heading or ''), read from the class source
    (declared once, documented once)."""
    comments, groups = {}, {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        heading = ""
        for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(klass)).readline):
            if tok.type == tokenize.COMMENT:
                line = tok.line.strip()
                if line.startswith(GROUP_MARK):
                    heading = line[len(GROUP_MARK):].strip(" -")
                    continue
                name = line.split(":", 1)[0].strip()
                if name.isidentifier() and not line.startswith("#"):
                    comments[name] = tok.string.lstrip("# ").strip()
                    groups[name] = heading
    return comments, groups


def defaults(cls):
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def config_help(cls):
    """--help: every setting with its default, meaning and valid range, under its group's heading (in the order
    the groups are declared; a class without headings is one list)."""
    comments, groups = field_comments(cls)
    by_group = {}
    for f in dataclasses.fields(cls):
        rule = describe_rules(f.metadata)
        comment = comments.get(f.name, "") + (f" [{rule}]" if rule else "")
        by_group.setdefault(groups.get(f.name, ""), []).append(
            f"  --{f.name}={defaults(cls)[f.name]!r}".ljust(34) + f"  {comment}")
    return "\n\n".join((f"{heading}:\n" if heading else "") + "\n".join(lines) for heading, lines in by_group.items())


def nanogpt_names(cls):
    """nanoGPT's setting names that cls translates (its NANOGPT class attribute: name -> translator)."""
    return getattr(cls, "NANOGPT", {}) if cls else {}


def _translate(cls, values, nano, given):
    """Apply nanoGPT's names (nano: name -> (value, position)) to values, once every file and override is read
    (eval_iters x batch_size x block_size needs the final sizes); as everywhere, the later of a nanoGPT name and
    a setting it becomes wins (given: setting -> position). Returns the line saying what each became, or ''."""
    said = []
    for name, (value, at) in nano.items():
        changes, meaning = nanogpt_names(cls)[name](value, values)
        kept = sorted(k for k in changes if given.get(k, -1) > at)
        values.update({k: v for k, v in changes.items() if k not in kept})
        said.append(f"{name}={value!r} -> {meaning}" + (f" (your later {', '.join(kept)} kept)" if kept else ""))
    return f"nanoGPT settings: {'; '.join(said)}" if said else ""


def load_config(cls, argv, positional=None, foreign=None, notes=None):
    """A validated instance of dataclass `cls` from config files and --key=value (or --key value)
    overrides, applied in order.

    positional: the name of a list field that bare arguments are appended to (plot.py's run
    directories) instead of being read as config files. foreign: another settings class whose keys
    a config file may hold and this command ignores (sample.py reading out_dir from a train config).
    nanoGPT's names that cls translates (cls.NANOGPT) are accepted in files and overrides; the line saying
    what they became is appended to notes, or printed when notes is None.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = defaults(cls)
    hints = typing.get_type_hints(cls)
    ignorable = ({f.name for f in dataclasses.fields(foreign)} | set(nanogpt_names(foreign))) - set(fields) \
        if foreign else set()
    nano, given, order = {}, {}, itertools.count()  # order: each setting's position, for _translate
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            usage = f"[{positional} ...]" if positional else "[config/file.py ...]"
            print(f"usage: {os.path.basename(sys.argv[0])} {usage} [--key=value ...]\n\nsettings (default, meaning):\n")
            print(config_help(cls))
            sys.exit(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if key not in fields and key not in nanogpt_names(cls):
                raise ConfigError(f"unknown setting '{key}'{_closest(key, list(fields))} (--help lists them)")
            if not eq and hints.get(key) is bool:  # a bare flag: --compile
                text = "True"
            elif not eq:  # the space form: --out_dir data/fineweb
                if i >= len(argv) or argv[i].startswith("--"):
                    raise ConfigError(f"--{key} needs a value: --{key}=...")
                text, i = argv[i], i + 1
            _set(key, parse_override(text), next(order), fields, hints, values, nano, given)
        elif arg.startswith("-") and arg != "-":
            raise ConfigError(f"cannot parse argument {arg!r}: settings are given as --key=value")
        elif positional:
            values[positional] = values[positional] + [arg]
        else:
            found, helpers = read_config_file(arg, values)
            unknown = [k for k in found if k not in fields and k not in nanogpt_names(cls) and k not in ignorable
                       and k not in helpers]
            if unknown:  # every one at once
                raise ConfigError(f"{arg}: unknown setting{'s' * (len(unknown) > 1)} " + ", ".join(
                    f"'{k}'{_closest(k, list(fields))}" for k in unknown))
            for key, value in found.items():
                if key in fields or key in nanogpt_names(cls):
                    _set(key, value, next(order), fields, hints, values, nano, given)
    line = _translate(cls, values, nano, given)
    if line and notes is not None:
        notes.append(line)
    elif line:
        print(line)
    return validate(cls(**values))


def _set(key, value, at, fields, hints, values, nano, given):
    """One setting from a file or the command line, at position `at`: this project's (type-checked) or a nanoGPT
    name (kept for _translate; a later value of the same name replaces it)."""
    if key in fields:
        values[key] = _check_type(key, value, hints[key])
        given[key] = at
    else:
        nano.pop(key, None)
        nano[key] = (value, at)


# ----------------------------------------------------------------------------- advice that works when followed

FIX = re.compile(r"(?<![\w.])--([a-z_][a-z0-9_]*)=([^\s;,)]+)")  # a concrete '--name=value' in an error line
MAX_FIX_STEPS = 4  # completions of a fix (each adds what the settings' checks then ask for)


def cli_value(value):
    """A setting's value as one writes it after --name= (lists comma-joined)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def checked_fix(cfg, changes, check=None):
    """'--name=value ...' that applies `changes` (setting -> value) to the settings cfg, completed with the
    concrete fixes its checks then ask for (validate, and check(trial) when given, which raises ConfigError), or
    '' when no such fix passes them. So an error line never prints a fix that would fail again (issue 37): none
    that repeats what is already in force, none that trips another rule without naming its fix too."""
    hints, applied = typing.get_type_hints(type(cfg)), {}
    for k, v in changes.items():
        if getattr(cfg, k) != v:
            applied[k] = v
    for _ in range(MAX_FIX_STEPS):
        if not applied:
            return ""
        trial = dataclasses.replace(cfg, **applied)
        try:
            validate(trial)
            if check:
                check(trial)
            return " ".join(f"--{k}={cli_value(v)}" for k, v in applied.items())
        except ConfigError as e:
            more = {k: _check_type(k, parse_override(v), hints[k]) for k, v in FIX.findall(str(e))
                    if k in hints and k not in applied}
            if not more:
                return ""
            applied.update(more)
    return ""


def no_effect_notes(cfg, **context):
    """One 'note: ...' line for each setting given a value other than its default that does nothing in this run
    (issue 37: no setting is ignored silently): cfg.no_effect(**context) names them, setting -> why."""
    if not hasattr(cfg, "no_effect"):
        return []
    default = defaults(type(cfg))
    return [f"note: {name}={getattr(cfg, name)!r} has no effect here: {why}"
            for name, why in cfg.no_effect(**context).items() if getattr(cfg, name) != default[name]]


def format_config(cfg):
    return "\n".join(f"  {k} = {v!r}" for k, v in dataclasses.asdict(cfg).items())
