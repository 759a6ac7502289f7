"""Command-line plumbing shared by `s4mi_jax.main` and `s4mi_jax.aot`: flag errors as one line."""

from __future__ import annotations

import os
import sys

from absl import flags


def one_line(error: Exception) -> str:
    """The useful part of a flag error: no embedded traceback, no escaped newlines or quotes."""
    text = str(error)
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    text = text.replace("\\n", "\n").replace("\\'", "'")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        head = lines[0].split("Traceback")[0].strip()
        lines = [head, lines[-1]] if head else lines[-1:]
    return " ".join(lines)


def check_config_loads(arg: str) -> None:
    """`get_config` of `--config=FILE[:arg]` runs without raising; if it raises, one line naming the
    file, the line and the exception (config_flags would report only the exception: "'learning_rate'")."""
    import importlib.util
    import traceback

    from s4mi_jax.errors import ConfigError

    path, sep, variant = arg.partition(":")
    if not os.path.isfile(path):
        return  # config_flags names a missing file itself.
    spec = importlib.util.spec_from_file_location("_s4mi_config_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.get_config(variant) if sep else module.get_config()
    except Exception as e:  # Whatever the user's file raises.
        mine = os.path.abspath(path)
        frames = [
            f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == mine
        ]
        where = f" (line {frames[-1].lineno})" if frames else ""
        call = f"get_config({variant!r})" if sep else "get_config()"
        raise ConfigError(
            f"bad config file {path}{where}: {call} raised {type(e).__name__}: {one_line(e)}"
        ) from None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad `--config...` flag prints one line instead of a traceback."""
    from s4mi_jax.data import validate
    from s4mi_jax.errors import S4MIError

    try:  # config_flags imports the file while parsing: README.md would be a SyntaxError traceback.
        for i, arg in enumerate(argv[1:], start=1):
            value = None
            if arg.startswith("--config="):
                value = arg.split("=", 1)[1]
            elif arg == "--config" and i + 1 < len(argv):
                value = argv[i + 1]
            if value is not None:
                validate.check_config_file(value)
                check_config_loads(value)
    except S4MIError as e:
        print(f"s4mi_jax: error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, SyntaxError) as e:
        print(f"s4mi_jax: error: bad config or flag: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


def config_file_flag(help_text: str) -> flags.FlagHolder:
    """`--config` (an ml_collections config file), defined once per process: `main` and `aot` both
    take it, and a process may import both (the test suite does)."""
    if "config" in flags.FLAGS:
        return flags.FlagHolder(flags.FLAGS, flags.FLAGS["config"])
    from ml_collections import config_flags

    return config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)
