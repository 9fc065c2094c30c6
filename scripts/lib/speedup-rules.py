#!/usr/bin/env python3
"""Copies Prometheus rule files with every duration divided by a factor: `for:`,
`keep_firing_for:`, and the range and subquery windows and offsets inside expressions. Nothing else
changes (names, labels, thresholds, annotations), so the alerts fire on the same conditions,
only sooner. Used by `scripts/stack` when TW_STACK_RULE_SPEEDUP is set, so the fault
scenarios finish in minutes instead of the better part of an hour.

    speedup-rules.py FACTOR SOURCE_DIR DEST_DIR
"""
import pathlib
import re
import sys

import yaml

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def seconds(text):
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * UNITS[u] for n, u in parts)


def scaled(text, factor):
    s = max(1, round(seconds(text) / factor))
    return f"{s}s"


def scale_expr(expr, factor):
    def window(match):
        inner = match.group(1)
        if ":" in inner:  # a subquery [range:resolution]
            rng, res = inner.split(":", 1)
            return "[" + scaled(rng, factor) + ":" + (scaled(res, factor) if res else "") + "]"
        return "[" + scaled(inner, factor) + "]"

    expr = re.sub(r"\[([0-9smhdwy:]+)\]", window, expr)
    return re.sub(r"\boffset(\s+)(-?)([0-9smhdwy]+)",
                  lambda m: "offset" + m.group(1) + m.group(2) + scaled(m.group(3), factor), expr)


def main():
    factor, source, dest = float(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    if factor < 1:
        sys.exit("the factor must be at least 1")
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            if "interval" in group:
                group["interval"] = scaled(group["interval"], factor)
            for rule in group["rules"]:
                rule["expr"] = scale_expr(str(rule["expr"]), factor)
                for key in ("for", "keep_firing_for"):
                    if key in rule:
                        rule[key] = scaled(rule[key], factor)
        (dest / path.name).write_text(
            f"# {path.name} with every duration divided by {factor:g} (scripts/lib/speedup-rules.py)\n"
            + yaml.safe_dump(doc, sort_keys=False, width=120)
        )


if __name__ == "__main__":
    main()
