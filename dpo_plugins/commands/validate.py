"""Validate preference data: every problem as PATH:LINE: json.path: message.

Checks the format's own rules (for azure/openai, every rule of the hosted
services' preference format, under --profile azure or openai), then the
silent killers of DPO data in any format: identical chosen/rejected, empty
completions, prompts that differ between the chosen and rejected
transcripts, duplicates. With --model and --max-length it also tokenizes
every pair like TRL's DPOTrainer: token-length percentiles, rows TRL would
drop, pairs whose difference is truncated away, chat-template boundary
problems. Exits 1 when any error is found (warnings alone exit 0).
"""

from __future__ import annotations

import json

from ..errors import DpoPluginsError
from ..workflows.convert import validate
from ..option_checks import positive_int

HELP = "check preference data against its format's rules and DPO lint rules"


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help="input file or datasets folder")
    parser.add_argument("--from", dest="from_format", metavar="F", help="input format (default: detected)")
    parser.add_argument("--profile", choices=("azure", "openai"), help="also check the rows would pass this service")
    parser.add_argument("--model", metavar="M", help="tokenizer (model path or alias) for the token checks")
    parser.add_argument("--max-length", type=positive_int, metavar="N", help="TRL max_length for the truncation checks")
    parser.add_argument("--json", action="store_true", help="print a JSON report")


def run(args) -> int:
    if args.max_length is not None and not args.model:
        raise DpoPluginsError("--max-length needs --model (the tokenizer to count tokens with)")
    report = validate(args.input, args.from_format, args.profile, args.model, args.max_length)
    errors = len(report.errors)
    if args.json:
        print(json.dumps({
            "path": report.path, "format": report.source, "detected": report.detected, "rows": report.rows,
            "valid_rows": report.valid, "errors": errors, "warnings": len(report.findings) - errors,
            "by_rule": report.by_rule(), "problems": [f.as_dict() for f in report.findings],
            "token_stats": report.stats,
        }, indent=2))
        return 1 if errors else 0
    for finding in report.findings:
        print(finding)
    how = "detected" if report.detected else "given"
    print(f"\n{report.path}: format {report.source} ({how}), {report.rows} rows, {report.valid} readable; "
          f"{errors} error(s), {len(report.findings) - errors} warning(s)")
    for rule, count in report.by_rule().items():
        print(f"  {rule:<22} {count}")
    for name, value in report.stats.items():
        print(f"  {name}: {value}")
    return 1 if errors else 0
