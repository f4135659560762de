"""instructions: InstructGPT's prompts and demonstrations, dealt into prompt-disjoint splits.

The embedded suite (pipeline/feedback/suite.py: every answer computable by rule or read from the
standard library) unless ``instructions.demonstrations`` names real data; real rankings from
``instructions.comparisons`` go to comparisons.jsonl for the reward model. Writes, once for every
later stage: ``sft.jsonl``, ``rm.jsonl``, ``ppo.jsonl``, ``eval.jsonl``, ``comparisons.jsonl`` and
``examples.md`` (a few prompts of each family).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from typing import Any

from pipeline.errors import LineageError
from pipeline.stage import StageContext, main

DROP_REASONS = {
    "too_long": "longer than max_chars",
    "identical_responses": "with identical responses ranked apart (chosen == rejected)",
    "contradictory": "ranking a pair of responses opposite to another record",
}
HEADLINE = ["prompts/*=splits/*/prompts", "real_comparisons=comparisons", "families"]


def body(ctx: StageContext) -> dict[str, Any]:
    from pipeline.feedback.data import (
        check_disjoint,
        comparisons,
        deal,
        demonstrations,
        read_records,
        write_jsonl,
    )  # fmt: skip
    from pipeline.feedback.suite import build_suite

    cfg, seed = ctx.params.instructions, ctx.params.common.seed
    dropped: dict[str, Counter] = {"demonstrations": Counter(), "comparisons": Counter()}
    if cfg.demonstrations is not None:
        src = cfg.demonstrations
        records, origin = read_records(src, ctx.root, "instructions.demonstrations")
        demos = demonstrations(records, src.layout, origin, src.max_chars, dropped["demonstrations"])
        if not demos:
            raise LineageError(
                f"{origin}: every demonstration is longer than instructions.demonstrations.max_chars "
                f"({src.max_chars} characters); raise it"
            )
        random.Random(seed).shuffle(demos)
        pools = {"demo": demos}
    else:
        pools = build_suite(list(cfg.families), seed, cfg.max_modules)
    if cfg.system:
        for items in pools.values():
            for ex in items:
                if ex["messages"][0]["role"] != "system":
                    ex["messages"] = [{"role": "system", "content": cfg.system}, *ex["messages"]]
    splits, dealt = deal(pools, cfg.sizes.model_dump())
    check_disjoint(splits)
    real: list[dict[str, Any]] = []
    if cfg.comparisons is not None:
        src = cfg.comparisons
        records, origin = read_records(src, ctx.root, "instructions.comparisons")
        taught = {json.dumps(ex["messages"], sort_keys=True) for s in ("sft", "eval") for ex in splits[s]}
        real = [
            c
            for c in comparisons(records, src.layout, origin, src.max_chars, dropped["comparisons"])
            if c["group"] not in taught
        ]
    for name, items in splits.items():
        write_jsonl(ctx.out / f"{name}.jsonl", items)
    write_jsonl(ctx.out / "comparisons.jsonl", real)
    (ctx.out / "examples.md").write_text(examples_md(splits["sft"]))
    short = {
        f"{split}/{family}": n["asked"] - n["given"]
        for split, fams in dealt.items()
        for family, n in fams.items()
        if n["given"] < n["asked"]
    }
    if short:
        print(f"instructions: some families ran out of distinct prompts: {short}", file=sys.stderr)
    for what, counts in dropped.items():
        if counts:
            why = ", ".join(f"{n} {DROP_REASONS[k]}" for k, n in sorted(counts.items()) if n)
            if why:
                print(f"instructions: dropped {what}: {why}", file=sys.stderr)
    return {
        "families": len(pools),
        "pool": {f: len(v) for f, v in pools.items()},
        "splits": {
            name: {"prompts": len(items), "families": {f: n["given"] for f, n in dealt[name].items()}}
            for name, items in splits.items()
        },
        "shortfall": short,
        "comparisons": len(real),
        "dropped": {what: dict(counts) for what, counts in dropped.items()},
    }


def examples_md(items: list[dict[str, Any]], per_family: int = 2) -> str:
    seen: dict[str, int] = {}
    lines = ["# Instruction examples (SFT split)\n"]
    for ex in items:
        if seen.get(ex["family"], 0) >= per_family:
            continue
        seen[ex["family"]] = seen.get(ex["family"], 0) + 1
        prompt = " / ".join(f"{m['role']}: {m['content']}" for m in ex["messages"])
        lines.append(f"- **{ex['family']}** ({ex['kind']}): {prompt!r} -> {ex['reference']!r}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main("instructions", body, headline=HEADLINE))
