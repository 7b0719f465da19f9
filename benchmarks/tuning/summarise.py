"""One line per rows file: mean hard LCS at each budget, exact share, mean steps, mean seconds
and GFLOP per row. Usage: python benchmarks/tuning/summarise.py ROWS.jsonl [...]"""

import json
import sys

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path)]
    if not rows:
        continue
    budgets = sorted(rows[0]["lcs_at_budget"], key=int)
    at = " ".join(f"@{b} {sum(r['lcs_at_budget'][b] for r in rows) / len(rows):.2f}"
                  for b in budgets)
    exact = sum(r["exact_match"] for r in rows)
    per_target = " ".join(f"{r['target_id']}:{r['lcs_ratio']:.1f}" for r in rows)
    print(f"{path.split('/')[-1]:40s} n={len(rows)} {at} exact {exact}/{len(rows)} "
          f"s/row {sum(r['seconds'] for r in rows) / len(rows):6.0f} "
          f"GFLOP/row {sum(r['compute']['flops'] for r in rows) / len(rows) / 1e9:7.0f}  "
          f"{per_target}")
