"""Lets `python launch/X.py` import the repository's packages without an install (the README installs anyway)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
