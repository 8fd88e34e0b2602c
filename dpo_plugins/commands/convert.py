"""Convert preference data between formats, through the canonical record.

IN and OUT are .jsonl (or .jsonl.gz), .json, .parquet files or datasets
folders (save_to_disk). --from is detected from the first row when omitted.
Strict by default: any invalid line fails the run, every bad line is listed
and nothing is written. --skip-invalid writes the valid rows and lists each
skipped line. A record the target format cannot represent is an error for
its line, never silently altered: a field the target cannot hold is an
error, or with --lossy a warning (the row is written without it, and the
summary counts the losses per field).
"""

from __future__ import annotations

import sys

from ..workflows.convert import convert
from ..records import ERROR

HELP = "convert preference data between formats (azure, openai, hf, hh, ...)"


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help="input file or datasets folder")
    parser.add_argument("output", metavar="OUT", help="output file (.jsonl, .jsonl.gz, .json, .parquet) or folder")
    parser.add_argument("--from", dest="from_format", metavar="F", help="input format (default: detected)")
    parser.add_argument("--to", dest="to_format", metavar="F", help="output format (default: the input format)")
    parser.add_argument("--skip-invalid", action="store_true", help="write the valid rows, report the others")
    parser.add_argument("--lossy", action="store_true",
                        help="write rows the target cannot hold completely, warning per dropped field")
    parser.add_argument("--bom", action="store_true", help="start JSONL/JSON output with a UTF-8 BOM (Azure accepts both)")


def run(args) -> int:
    report = convert(args.input, args.output, args.from_format, args.to_format, args.skip_invalid, args.bom,
                     args.lossy)
    if report.detected:
        print(f"detected format: {report.source}", file=sys.stderr)
    for finding in report.findings:
        print(f"{'skipped' if finding.problem.severity == ERROR else 'lossy'} {finding}", file=sys.stderr)
    skipped = len({f.line for f in report.errors})
    target = args.to_format or report.source
    print(f"wrote {report.written} {target} rows to {args.output}" + (f" ({skipped} lines skipped)" if skipped else ""),
          file=sys.stderr)
    for field, count in sorted(report.stats.get("lost", {}).items()):
        print(f"  lost {field}: {count} time(s)", file=sys.stderr)
    return 0
