"""jaxpose configs: one file per reported setup, each exposing `get_config(arg=None)`."""

import os

DEFAULT_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
