#!/usr/bin/env python
"""Thin wrapper: ``python tools/export.py [args]`` == ``vssm-export [args]`` (see vssm/export.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vssm.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
