#!/usr/bin/env python
"""Thin wrapper: ``python tools/train.py [args]`` == ``vssm-train [args]`` (see vssm/engine/train.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vssm.engine.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
