"""One line per rows file and method: mean hard LCS at each budget, exact share, mean seconds
and GFLOP per row, each target's best LCS. Usage: python benchmarks/tuning/summarise.py
ROWS.jsonl [...]"""

import json
import sys

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path)]
    for method in dict.fromkeys(r["method"] for r in rows):  # in the file's order
        mine = [r for r in rows if r["method"] == method]
        budgets = sorted(mine[0]["lcs_at_budget"], key=int)
        at = " ".join(f"@{b} {sum(r['lcs_at_budget'][b] for r in mine) / len(mine):.2f}"
                      for b in budgets)
        exact = sum(r["exact_match"] for r in mine)
        per_target = " ".join(f"{r['target_id']}:{r['lcs_ratio']:.1f}" for r in mine)
        name = path.split("/")[-1] + ("" if len(rows) == len(mine) else f" {method}")
        print(f"{name:40s} n={len(mine)} {at} exact {exact}/{len(mine)} "
              f"s/row {sum(r['seconds'] for r in mine) / len(mine):6.0f} "
              f"GFLOP/row {sum(r['compute']['flops'] for r in mine) / len(mine) / 1e9:7.0f}  "
              f"{per_target}")
