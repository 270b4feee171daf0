"""morph3d: open 3D-morphable-model face swap.

Data flows one way: frames -> landmarks (`fitting.detection`) -> parameters (`fitting.fit`)
-> renders and identity transfer (`render`, `morph3d.swap`) -> composite (`morph3d.composite`).
"""

__version__ = "0.1.0"

import os as _os

# mediapipe (TFLite, glog) prints start-up chatter on stderr; keep the terminal readable.
_os.environ.setdefault("GLOG_minloglevel", "2")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
