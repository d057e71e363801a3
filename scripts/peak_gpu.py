"""Run ``python -m MODULE ARGS…`` in this process and print its wall time and peak GPU memory.

    python scripts/peak_gpu.py training.reward_model --data seed --max-steps 50 --load-in-4bit

Used by ``scripts/gpu_check.sh``; the figures go to stdout as one ``[gpu_check] …`` line (and as JSON
to ``$GPU_CHECK_JSON`` when set) so that bench/RESULTS.md can quote them.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) >= 2 else 2
    import torch

    # `python scripts/peak_gpu.py` puts scripts/ first on sys.path; the modules it runs live at the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    module, args = sys.argv[1], sys.argv[2:]
    sys.argv = [module] + args
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # the entry points end with sys.exit(main())
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    row = {"module": module, "args": args, "rc": code, "wall_s": round(wall, 1), "peak_gpu_mib": round(peak, 1),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__}
    print(f"[gpu_check] {module}: rc={code} wall={wall:.1f}s peak GPU memory={peak:.0f} MiB", flush=True)
    if os.environ.get("GPU_CHECK_JSON"):
        with open(os.environ["GPU_CHECK_JSON"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
