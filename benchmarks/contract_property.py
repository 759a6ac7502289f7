"""The contract test of issue 25 at a large budget: random data folders and configs, real commands.

    .venv/bin/python benchmarks/contract_property.py --cases=200 --start_seed=1000 --out=/tmp/contract

Each seed is one case of `tests/contract_cases.py` (`make_case`): a random small dataset (CSV
encodings, delimiters, label spellings, image modes, masks, `.npz`, config values in and out of
range, workdirs, reruns/predict/score on a finished run) and the commands to run on it. Every
command is checked against the contract (exit 0, or one line naming the file/row/key and the
refusal status; no traceback; data folders byte-identical; the latest checkpoint intact). Writes
`summary.json` (every case, its commands, exit statuses and problems) and `summary.md` (counts and
the distinct violations, each with the seeds that show it) into `--out`; the case folders stay
under `--out/cases` only with `--keep`. `tests/test_contract_property.py` runs a small budget.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import contract_cases  # noqa: E402


def signature(problem: str) -> str:
    """A violation without its paths, numbers and quoted values: one key per distinct finding."""
    kind, _, what = problem.partition(": ")
    what = re.sub(r"/\S+", "PATH", what)
    what = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", what)
    what = re.sub(r"\d+", "N", what)
    return f"{kind}: {what[:160]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--start_seed", type=int, default=1000)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds instead of a range")
    parser.add_argument("--out", default="/tmp/contract_property")
    parser.add_argument(
        "--timeout", type=float, default=contract_cases.HANG_GUARD_S, help="per command"
    )
    parser.add_argument("--keep", action="store_true", help="keep every case's folder")
    parser.add_argument(
        "--max_minutes", type=float, default=None, help="stop starting cases after this"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    cases_dir = out / "cases"
    shutil.rmtree(cases_dir, ignore_errors=True)
    cases_dir.mkdir(parents=True)
    base = contract_cases.BaseRuns(out / "base_runs", timeout=args.timeout)
    start = time.monotonic()
    records, by_signature = [], collections.defaultdict(list)
    families = collections.Counter()
    codes = collections.Counter()
    seeds = (
        [int(x) for x in args.seeds.split(",")]
        if args.seeds
        else range(args.start_seed, args.start_seed + args.cases)
    )
    for seed in seeds:
        if args.max_minutes and time.monotonic() - start > 60 * args.max_minutes:
            print(
                f"stopping after {len(records)} cases (--max_minutes={args.max_minutes})",
                flush=True,
            )
            break
        root = cases_dir / str(seed)
        case = contract_cases.make_case(seed, root)
        t = time.monotonic()
        result = contract_cases.run_case(case, base, timeout=args.timeout)
        families[case.family] += 1
        for s in result.steps:
            codes[(s.command.split()[2], s.code)] += 1
        record = result.to_json()
        record["seconds"] = round(time.monotonic() - t, 1)
        records.append(record)
        for p in result.problems:
            by_signature[signature(p)].append((seed, p))
        status = "ok" if not result.problems else f"{len(result.problems)} problem(s)"
        print(f"seed {seed} [{case.family}] {record['seconds']} s: {status}", flush=True)
        for p in result.problems:
            print(f"    {p[:400]}", flush=True)
        if not args.keep and not result.problems:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - start
    found = [r for r in records if r["problems"]]
    contract = [
        r
        for r in found
        if any(
            contract_cases.problem_kind(p) in contract_cases.CONTRACT_KINDS for p in r["problems"]
        )
    ]
    summary = {
        "command": " ".join([sys.executable, *sys.argv]),
        "cases": len(records),
        "start_seed": args.start_seed,
        "seconds": round(elapsed),
        "families": dict(families),
        "exit_codes": {f"{m} {c}": n for (m, c), n in sorted(codes.items(), key=str)},
        "cases_with_problems": len(found),
        "cases_violating_contract": len(contract),
        "distinct": [
            {"signature": sig, "seeds": [s for s, _ in hits], "example": hits[0][1][:1500]}
            for sig, hits in sorted(by_signature.items(), key=lambda kv: -len(kv[1]))
        ],
        "records": records,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [
        "# Contract property run",
        "",
        f"`{summary['command']}`",
        "",
        f"- {len(records)} cases (seeds {records[0]['seed'] if records else '-'}..{records[-1]['seed'] if records else '-'}) in {elapsed / 60:.1f} min",
        f"- families: {dict(families)}",
        f"- exit statuses: {summary['exit_codes']}",
        f"- cases with any problem: {len(found)}; violating the contract (traceback, exit status, "
        f"not one line, unnamed, data or checkpoint changed, misread, hang): {len(contract)}",
        "",
        "## Distinct problems",
        "",
    ]
    for d in summary["distinct"]:
        lines += [
            f"- **{d['signature']}** — seeds {d['seeds'][:12]}",
            f"  - e.g. `{d['example'][:600]}`",
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:10]))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
