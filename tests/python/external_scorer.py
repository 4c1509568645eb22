"""A small external reward scorer, as a production scorer (HPSv3, a 3D
foundation model) would join the pipeline: it reads the job manifest and the
frames with safetensors/numpy, and writes the scores table with pyarrow.

Scores (real measurements of the pixels, simple on purpose):
  - a window "moved" when the mean absolute difference between the frame
    before it and its last frame exceeds 1% of the range; rotation and
    translation accuracy count a window right when it moved exactly when an
    action of that kind was commanded;
  - vq_score is the mean pixel value (0..1) of the candidate's last frame.

WC_SCORER_MODE selects a broken variant for the tests: missing_column,
wrong_rows, nan, exit, sleep.
"""
import json, math, os, sys, time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file

job = json.load(open(sys.argv[1]))
mode = os.environ.get("WC_SCORER_MODE", "ok")
if mode == "exit":
    print("scorer failed on purpose", file=sys.stderr)
    sys.exit(3)
if mode == "sleep":
    time.sleep(60)

ROT, TRANS = 0xF0, 0x0F
rows = {k: [] for k in ["iter", "group_id", "prompt_id", "clip_index", "candidate", "rot_acc", "trans_acc", "if_score", "vq_score"]}
work = os.path.dirname(sys.argv[1])
fpw = job["frames_per_window"]
for g in job["groups"]:
    frames = load_file(os.path.join(work, g["frames"]))["frames"].astype(np.float64) / 255.0  # [G, F+1, H, W, 3]
    for j in range(frames.shape[0]):
        rot = trans = 0
        for w, a in enumerate(g["actions"]):
            moved = np.abs(frames[j, (w + 1) * fpw] - frames[j, w * fpw]).mean() > 0.01
            rot += moved == bool(a & ROT)
            trans += moved == bool(a & TRANS)
        n = len(g["actions"])
        for k, v in [("iter", job["iter"]), ("group_id", g["group_id"]), ("prompt_id", g["prompt_id"]), ("clip_index", job["clip_index"]), ("candidate", j),
                     ("rot_acc", rot / n), ("trans_acc", trans / n), ("if_score", (rot + trans) / (2 * n)), ("vq_score", float(frames[j, -1].mean()))]:
            rows[k].append(v)

if mode == "nan":
    rows["vq_score"][0] = math.nan
if mode == "wrong_rows":
    rows = {k: v[:-1] for k, v in rows.items()}
if mode == "missing_column":
    del rows["vq_score"]
types = {k: pa.int64() for k in ["iter", "group_id", "prompt_id", "clip_index", "candidate"]}
table = pa.table({k: pa.array(v, type=types.get(k, pa.float64())) for k, v in rows.items()})
pq.write_table(table, job["output"])
print(f"scored {table.num_rows} candidates")
