"""The command-line shell of jaxpose's programs (`jaxpose.launch`, `jaxpose.data.check`;
without `--config`: `jaxpose.tools.summary`, `jaxpose.tools.rescore`): absl flags plus an
ml_collections `--config` flag, where a bad flag, config key or value is
one line that names it (`PROGRAM: error: ...`, exit 2), never a traceback."""

import functools
import sys
from typing import Callable, NoReturn

from absl import app, flags
from ml_collections import config_flags

import configs


def fail(program: str, message: str) -> NoReturn:
  print(f"{program}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _config_error(error: Exception) -> str:
  # ml_collections hands over the repr of a KeyError with its "Did you mean" hint.
  text = str(error.args[0] if error.args else error)
  return "config: no field " + text.strip("'").replace("\\n", ". ").replace("\\'", "'")


def _one_line(message: str) -> str:
  """A flag error whose message embeds a traceback (a config file that raised): its first
  line (which flag) and last line (the exception), without the frames between."""
  lines = [line for line in message.splitlines() if line.strip()]
  if len(lines) <= 1:
    return message
  return f"{lines[0].split(': Error whilst')[0]}: {lines[-1].strip()}"


def run(program: str, main: Callable[..., None]) -> None:
  """Defines `--config` and runs `main(argv, config_flag=...)` under absl.

  The flag is defined here, at start-up, not at import: ml_collections already loads the
  default file and applies `--config.KEY` overrides when the flag is defined.
  """
  try:
    config_flag = config_flags.DEFINE_config_file(
        "config", configs.DEFAULT_CONFIG_FILE,
        "Config file with get_config(arg); `file.py:ARGS` selects a variant, "
        "`--config.KEY=VALUE` overrides one field.", lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail(program, _config_error(e))

  def parse_flags(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(program, _one_line(str(e)))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      fail(program, _config_error(e))

  app.run(functools.partial(main, config_flag=config_flag), flags_parser=parse_flags)


def run_without_config(program: str, main: Callable[[list[str]], None]) -> None:
  """Runs `main(argv)` under absl, a bad flag being one line (no `--config` flag)."""
  def parse_flags(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(program, _one_line(str(e)))

  app.run(main, flags_parser=parse_flags)
