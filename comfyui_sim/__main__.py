from __future__ import annotations

import sys

from comfyui_sim.cli import main

sys.exit(main())
