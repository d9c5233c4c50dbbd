"""The 95% interval of every speedup in saved benchmark results, as `infer.bench` now computes
it (`speedup_interval`: a paired bootstrap of the repeats), for runs made before it did; and
`auto` against every other method of its cell, paired the same way.
python results/smollm2/auto-noise/intervals.py results/smollm2/auto-decay/code-committed ..."""

import json
import sys

sys.path.insert(0, ".")
from infer.bench_summary import speedup_interval  # noqa: E402

for folder in sys.argv[1:]:
    cells = json.load(open(f"{folder}/bench.json"))["cells"]
    ar = {(c["temperature"], c["batch_size"]): c["wall_s"] for c in cells if c["method"] == "ar"}
    for c in cells:
        if c["method"] != "ar" and "wall_s" in c:
            ci = speedup_interval(ar[c["temperature"], c["batch_size"]], c["wall_s"])
            print(folder, f"T={c['temperature']}", f"B={c['batch_size']}", c["key"],
                  f"{c['speedup_vs_ar']:.3f}x", ci, f"({len(c['wall_s'])} repeats)")  # fmt: skip
    for a in (c for c in cells if c["method"] == "auto" and "wall_s" in c):
        for c in cells:
            same = (c["temperature"], c["batch_size"]) == (a["temperature"], a["batch_size"])
            if same and c["method"] not in ("ar", "auto") and "wall_s" in c:
                ci = speedup_interval(c["wall_s"], a["wall_s"])
                speed = c["median_s"] / a["median_s"]
                print(folder, f"T={a['temperature']}", f"B={a['batch_size']}",
                      f"auto against {c['key']}: {speed:.3f}x", ci)  # fmt: skip
