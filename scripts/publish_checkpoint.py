"""Publish one checkpoint of a PPO run as a policy version (PPO publishes only its best one).

    python scripts/publish_checkpoint.py --run-dir runs/ppo-run20 --card /tmp/run20pub/rlhf-run20/card.json \
        --step 8 --name rlhf-v2 [--publish-dir rlhf_demo/versions --replace]

``RUN/checkpoints/step-000000N/adapter-policy.{safetensors,json}`` (a run keeps every checkpoint with
``--checkpoint-every K --keep-checkpoints 0``) becomes the version ``--name``: in the data dir's registry, or with
``--publish-dir`` in that folder (``rlhf_demo/versions`` for a shipped version). Its card is the card the run
published (``--card``: parent, reward model and its hash, config, command) with ``checkpoint_step``, ``checkpoint_of``
and ``--note``; the run's own best-checkpoint metrics and validation are dropped (they are about another iteration).
Nothing is trained or changed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DROPPED = ("files", "created", "name", "metrics", "validation", "best_step")


def checkpoint_card(run_card: dict, step: int, checkpoint: Path, note: str = "") -> dict:
    """The run's published card, re-pointed at iteration ``step``."""
    card = {k: v for k, v in run_card.items() if k not in DROPPED}
    card.update(checkpoint_step=step, checkpoint_of=run_card.get("name"), checkpoint_dir=str(checkpoint),
                note=note or f"iteration {step} of the run that published {run_card.get('name')}")
    return card


def publish_checkpoint(run_dir: Path, run_card: dict, step: int, name: str, versions_dir: Path,
                       publish_dir: str | Path = "", replace: bool = False, note: str = ""):
    """Publish iteration ``step`` of ``run_dir`` as ``name``; returns the registry's Version."""
    from rlhf_demo.registry import publish_to

    ck = Path(run_dir) / "checkpoints" / f"step-{step:07d}"
    for f in ("adapter-policy.safetensors", "adapter-policy.json"):
        if not (ck / f).is_file():
            raise FileNotFoundError(f"{ck}: no {f} (was the checkpoint kept? --keep-checkpoints 0 keeps every one)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(ck / "adapter-policy.safetensors", Path(tmp) / "adapter_model.safetensors")
        shutil.copyfile(ck / "adapter-policy.json", Path(tmp) / "adapter_config.json")
        return publish_to(Path(tmp), checkpoint_card(run_card, step, ck, note), versions_dir, name=name,
                          publish_dir=publish_dir, replace=replace)


def main(argv: list[str] | None = None) -> int:
    from rlhf_demo.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="the PPO run's --run-dir")
    ap.add_argument("--card", type=Path, required=True, help="card.json of the version that run published")
    ap.add_argument("--step", type=int, required=True, help="the iteration whose checkpoint is published")
    ap.add_argument("--name", required=True, help="name of the new version, e.g. rlhf-v2")
    ap.add_argument("--publish-dir", default="", help="publish into this versions folder (e.g. rlhf_demo/versions) "
                                                      "instead of the data dir's registry")
    ap.add_argument("--replace", action="store_true", help="with --publish-dir: replace a version of that name there")
    ap.add_argument("--note", default="", help="the card's note (default: which iteration of which run)")
    a = ap.parse_args(argv)
    try:
        run_card = json.loads(a.card.read_text(encoding="utf-8"))
        v = publish_checkpoint(a.run_dir, run_card, a.step, a.name, Settings().versions_dir, a.publish_dir,
                               a.replace, a.note)
    except (OSError, ValueError) as exc:
        print(f"publish_checkpoint: {exc}", file=sys.stderr)
        return 2
    print(f"published {v.name} at {v.path} (iteration {a.step} of {a.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
