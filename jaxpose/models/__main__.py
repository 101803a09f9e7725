"""`python -m jaxpose.models --list`: prints the model preset names, one a line."""

import argparse

from jaxpose import models


def main() -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxpose.models", description=__doc__)
  parser.add_argument("--list", action="store_true", help="print the preset names")
  args = parser.parse_args()
  if not args.list:
    parser.error("nothing to do; pass --list")
  for name in models.MODELS:
    print(name)


if __name__ == "__main__":
  main()
