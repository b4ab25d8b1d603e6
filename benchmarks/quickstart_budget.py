"""Does `make quickstart` fit ten minutes on a plain 2-core CPU? The quickstart on the generic path, against
nanoGPT's CPU Shakespeare run on the same machine.

A plain machine (AVX2, no bf16 units: most laptops and cloud AMD cores) runs lmlab with PyTorch's ops in
fp32. This script reproduces that path on any CPU (`LMLAB_NATIVE=0`, pretraining in fp32; post-training is
fp32 already) and times it against nanoGPT's README CPU command (unmodified `train.py`, same process
layout as `pretrain_shakespeare_char.py`), so the figure carries from one machine to another as a ratio:
on an AMD EPYC (Zen 3) nanoGPT took 142 s, and 4.2 x 142 s is ten minutes. Ends with one JSON line
(`ratio` = quickstart wall / nanoGPT wall, each stage's wall, the figures every stage must still show).

    python benchmarks/quickstart_budget.py --nanogpt ~/src/nanoGPT [--set KEY=VALUE ...] [--native]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain_shakespeare_char import RECORDED_NANOGPT, ROOT, run_nanogpt  # noqa: E402

TARGET = 4.2
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def run_quickstart(work: Path, sets: list[str], native: bool) -> dict:
    out = work / "quickstart"
    cmd = [sys.executable, "-m", "lmlab.cli", "quickstart", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--set", f"out={out}"]
    if not native:
        cmd += ["--set", "pretrain.train.precision=fp32"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not native:
        env["LMLAB_NATIVE"] = "0"
    log = work / "quickstart.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        sys.exit(f"quickstart failed (exit {rc}); see {log}:\n" + log.read_text()[-2000:])
    return {"wall_s": wall, "summary": json.loads((out / "summary.json").read_text())}


def figures(summary: dict) -> dict:
    """What every stage must still show (issue 17): knowledge far above chance, the reward model >= 90% held
    out, DPO lowering fabrication, voting above one sample, and the masked-vs-causal comparison."""
    know = summary["probe"]["knowledge"]
    chance = summary["world"]["chance"]
    dpo, tt, bi = summary.get("dpo", {}), summary.get("testtime", {}), summary.get("bidirectional", {})
    vote = tt.get("vote", {})
    return {
        "qa_train_accuracy": know["train"]["accuracy"], "qa_test_accuracy": know["test"]["accuracy"],
        "chance_mean": sum(chance.values()) / len(chance),
        "rm_heldout_accuracy": summary.get("rm", {}).get("heldout_accuracy"),
        "dpo_fabrication": [dpo.get(k, {}).get("heldout", {}).get("unknown_fabrication") for k in ("before", "after")],
        "one_sample_accuracy": tt.get("sample_accuracy"), "greedy_accuracy": tt.get("greedy_accuracy"),
        "vote_accuracy": {n: vote[n] for n in sorted(vote, key=int)},
        "bidirectional_token_accuracy": {k: bi.get(k, {}).get("token_accuracy") for k in ("causal", "masked_left",
                                                                                            "masked_right")},
        "bidirectional_value_accuracy": {k: bi.get(k, {}).get("value_accuracy") for k in ("causal", "masked_left",
                                                                                            "masked_right")},
        "masked_val_loss": summary.get("masked_lm", {}).get("val_loss"),
        "pretrain_val_loss": summary["pretrain"]["val_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR"), help="path to a nanoGPT checkout")
    ap.add_argument("--text", default=str(SHAKESPEARE), help="tinyshakespeare.txt for nanoGPT's run")
    ap.add_argument("--set", action="append", default=[], help="extra quickstart --set overrides")
    ap.add_argument("--native", action="store_true", help="the default path (kernels, bf16 where it pays) instead")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lmlab-budget-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.nanogpt and Path(args.text).exists():
        nano = run_nanogpt(Path(args.nanogpt), Path(args.text), work, "cpu")
    else:
        nano = RECORDED_NANOGPT
    qs = run_quickstart(work, args.set, args.native)
    stages = {k: v.get("wall_s") for k, v in qs["summary"].items() if isinstance(v, dict) and "wall_s" in v}
    fig = {"benchmark": "quickstart_budget", "path": "default" if args.native else "generic (LMLAB_NATIVE=0, fp32)",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "quickstart_wall_s": round(qs["wall_s"], 1), "nanogpt_wall_s": round(nano["wall_s"], 1),
           "nanogpt_source": nano["source"], "ratio": round(qs["wall_s"] / nano["wall_s"], 3), "target": TARGET,
           "stage_walls_s": stages, "figures": figures(qs["summary"]), "sets": args.set}
    print(f"quickstart {fig['quickstart_wall_s']:.0f} s, nanoGPT {fig['nanogpt_wall_s']:.0f} s: ratio "
          f"{fig['ratio']:.2f} (target <= {TARGET})")
    for k, v in stages.items():
        print(f"  {k:24s} {v:8.1f} s")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
