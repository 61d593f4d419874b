#!/usr/bin/env python3
"""Collaborative ResNet training with hivemind on ImageNet streamed from GCS by hivedata.

`python train.py` alone runs the embedded default (local GCS emulator, generated data);
`python train.py --help` lists every flag.
"""

import sys

from hivedata.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
