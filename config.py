"""Settings, nanoGPT-style: `python train.py config/foo.py --batch_size=8 --compile=False`.

Each setting is a dataclass field declared once, with a default and a one-line comment.
Config files are Python-looking files of `name = value` lines; values may be literals,
arithmetic, and names assigned earlier (e.g. `total_batch_size = 8 * 64 * 1024`).
Nothing is ever evaluated as code: files and overrides are parsed with `ast`, only
known keys are accepted (an unknown key names the closest known one), and every value
is type-checked against its field.
"""
import ast
import dataclasses
import difflib
import inspect
import io
import operator
import sys
import tokenize
import typing
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A bad setting: unknown key, wrong type, unparsable file."""


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"  # checkpoints, log.txt, metrics.jsonl and config.json go here
    data_dir: str = "data/fineweb"  # dataset directory of train_*/val_* shards and manifest.json
    init_from: str = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt), or 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'
    overwrite: bool = False  # allow init_from='scratch' to replace checkpoints already in out_dir
    log_interval: int = 1  # print a log line every this many iterations
    ckpt_interval: int = 1000  # write out_dir/ckpt.pt every this many iterations (and at the end)
    keep_last_n: int = 0  # also keep this many numbered step checkpoints ckpt_NNNNNNN.pt (0: none)
    plan: bool = False  # print the run plan (tokens, Chinchilla ratio, epochs, wall time) and exit
    tokens_per_sec: float = 0.0  # throughput for the plan's wall-time estimates (from bench.py); 0: measure as the run goes
    peak_tflops: float = 0.0  # the GPU's dense bf16/fp16 peak for MFU; 0: look it up in monitor.PEAK_TFLOPS
    # evaluation
    eval_interval: int = 250  # evaluate every this many iterations
    eval_iters: int = 20  # batches per validation set per evaluation (the same batches every time)
    eval_batch_size: int = 0  # eval micro-batch; 0: same as batch_size (never larger: eval must fit where training fits)
    val_sets: list = field(default_factory=lambda: ["val"])  # validation sets: 'split' in data_dir, or 'DIR:split'
    primary_val: str = ""  # the val set that ckpt_best.pt and early stopping follow; '': the first of val_sets
    early_stop_patience: int = 0  # stop after this many evals without a new best val loss (0: never)
    hellaswag_interval: int = 0  # run HellaSwag every this many iterations (0: never)
    hellaswag_path: str = ""  # HellaSwag jsonl; '': download with huggingface_hub
    hellaswag_limit: int = 0  # evaluate only the first N HellaSwag items (0: all 10,042)
    humaneval_interval: int = 0  # HumanEval solution loss every this many iterations (0: never)
    humaneval_path: str = ""  # HumanEval.jsonl.gz path (required when humaneval_interval > 0)
    # logging services
    wandb_log: bool = False  # log to Weights & Biases (needs the wandb package)
    wandb_project: str = "gpt2"  # wandb project
    wandb_run_name: str = ""  # wandb run name; '': out_dir's name
    tensorboard_log: bool = False  # write TensorBoard events to out_dir/tb (needs the tensorboard package)
    # data
    batch_size: int = 8  # micro-batch size per GPU, in sequences
    block_size: int = 1024  # sequence length T
    total_batch_size: int = 524288  # tokens per optimizer step (2**19, ~0.5M as GPT-3 Small); sets gradient accumulation
    seed: int = 1337  # seeds the model init, dropout and the shard order
    # model
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # embedding width
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 128 for speed
    dropout: float = 0.0  # 0 for pre-training; 0.1+ for fine-tuning
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    tie_weights: bool = True  # share the token embedding with the output head, as GPT-2
    # optimizer: AdamW, linear warmup then cosine decay to min_lr
    learning_rate: float = 6e-4  # peak learning rate (GPT-3 Small)
    min_lr: float = 6e-5  # final learning rate, ~learning_rate/10 per Chinchilla
    warmup_iters: int = 715  # linear warmup steps (375M tokens at 2**19 tokens/step, as GPT-3)
    max_iters: int = 19073  # total optimizer steps (10B tokens at 2**19 tokens/step)
    lr_decay_iters: int = 0  # iteration where the cosine reaches min_lr; 0: max_iters (follows an extended run)
    weight_decay: float = 0.1  # AdamW weight decay on 2-D weights only
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: off)
    # faults
    spike_factor: float = 0.0  # skip an update whose loss exceeds this times the running mean (0: only NaN/inf are skipped)
    max_bad_steps: int = 5  # stop after this many skipped updates in a row
    # system
    device: str = "auto"  # 'auto' (cuda, then mps, then cpu), or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' (bf16 where supported, else fp16 on GPU, fp32 on CPU), 'bfloat16', 'float16', 'float32'
    compile: bool = True  # torch.compile the model (switched off where Triton is unavailable)
    backend: str = ""  # torch.distributed backend under torchrun; '': nccl on GPU, gloo on CPU


# ----------------------------------------------------------------------------- parsing

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _safe_value(node, names, where):
    """Evaluate a literal, a list/tuple/dict of them, arithmetic, or an earlier name. Nothing else."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_safe_value(e, names, where) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_safe_value(k, names, where): _safe_value(v, names, where) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _safe_value(node.operand, names, where)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_safe_value(node.left, names, where), _safe_value(node.right, names, where))
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise ConfigError(f"{where}: '{node.id}' is not defined above; config values may only use names assigned earlier")
    raise ConfigError(f"{where}: only literals, arithmetic and earlier names are allowed, not {ast.unparse(node)!r}")


def read_config_file(path, names):
    """`name = value` assignments of a config file, as a dict; `names` are values known so far."""
    try:
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    out = {}
    for stmt in tree.body:
        where = f"{path}:{stmt.lineno}"
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise ConfigError(f"{where}: config files may only hold `name = value` lines")
        value = _safe_value(stmt.value, {**names, **out}, where)
        out[stmt.targets[0].id] = value
    return out


def parse_override(text):
    """A command-line value: a Python literal if it parses as one, else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _check_type(key, value, ftype):
    """The value converted to the field's type, or ConfigError."""
    origin = typing.get_origin(ftype)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        ftype = [t for t in typing.get_args(ftype) if t is not type(None)][0]
    if ftype is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif ftype is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e5 for max_iters
            return int(value)
    elif ftype is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ftype is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # --wandb_run_name=2024
            return str(value)
    elif ftype is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):  # --val_sets=val,val-python
            return [v for v in value.split(",") if v]
    tname = getattr(ftype, "__name__", str(ftype))
    raise ConfigError(f"{key} must be {tname}, got {value!r} ({type(value).__name__})")


def _closest(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def field_comments(cls):
    """Field name -> its one-line comment, read from the class source (declared once, documented once)."""
    comments = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        src = inspect.getsource(klass)
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                line = tok.line.strip()
                name = line.split(":", 1)[0].strip()
                if name.isidentifier() and not line.startswith("#"):
                    comments[name] = tok.string.lstrip("# ").strip()
    return comments


def config_help(cls):
    comments = field_comments(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name}={default!r}".ljust(34) + f"  {comments.get(f.name, '')}")
    return "\n".join(lines)


def load_config(cls, argv):
    """An instance of dataclass `cls` from config files and --key=value (or --key value) overrides, in order."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for f in fields.values():
        values[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    hints = typing.get_type_hints(cls)
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            print(f"usage: {sys.argv[0]} [config/file.py ...] [--key=value ...]\n\nsettings (default, meaning):")
            print(config_help(cls))
            sys.exit(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if key not in fields:
                raise ConfigError(f"unknown setting '{key}'{_closest(key, list(fields))} (--help lists them)")
            if not eq and hints[key] is bool:  # a bare flag: --compile
                text = "True"
            elif not eq:  # the space form: --out_dir data/fineweb
                if i >= len(argv) or argv[i].startswith("--"):
                    raise ConfigError(f"--{key} needs a value: --{key}=...")
                text, i = argv[i], i + 1
            values[key] = _check_type(key, parse_override(text), hints[key])
        elif arg.startswith("-"):
            raise ConfigError(f"cannot parse argument {arg!r}: settings are given as --key=value")
        else:
            for key, value in read_config_file(arg, values).items():
                if key not in fields:
                    raise ConfigError(f"{arg}: unknown setting '{key}'{_closest(key, list(fields))}")
                values[key] = _check_type(key, value, hints[key])
    return cls(**values)


def format_config(cfg):
    return "\n".join(f"  {k} = {v!r}" for k, v in dataclasses.asdict(cfg).items())


def run_script(main, argv, errors=()):
    """Run a script's main(argv) so that mistakes end in one 'error: ...' line, not a traceback:
    a ConfigError exits 2 (usage), any of `errors` exits 1."""
    try:
        return main(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except tuple(errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
