#!/usr/bin/env python
"""Thin wrapper: ``python tools/validate.py [args]`` == ``vssm-validate [args]`` (see vssm/engine/validate.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vssm.engine.validate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
