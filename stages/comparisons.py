"""comparisons: for every prompt of the RM split, K responses sampled from the SFT model (K drawn in
[k_min, k_max] per prompt, as InstructGPT showed its labelers 4 to 9), ranked by the simulated
labeler with pairwise noise; or, with ``comparisons.source: data``, the real rankings the
instructions stage read. InstructGPT's K responses came from several models; here a prompt's
responses are sampled at a mix of temperatures (``temperatures``), so that they differ in quality
and fewer prompts have all K responses tied.

Writes ``comparisons.jsonl``: per prompt ``messages``, ``responses``, their ``temperatures``, ``ranks``
(0 = best, ties equal: what the reward model learns from) and, for analysis only, the labeler's ``scores``, the
noise-free ``gold_ranks`` and a second labeler's ``other_ranks``. Samples are generated in parts
saved under checkpoints/comparisons/<key>/, so a killed run resumes with the next part, and a run
with another ``noise`` ranks the same samples again without generating them.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from pipeline.errors import LineageError
from pipeline.stage import StageContext, main
from pipeline.train.checkpoint import run_key

HEADLINE = [
    "cmp_prompts=prompts", "cmp_mean_k=mean_k", "cmp_sample_score=samples/score", "cmp_sample_exact=samples/exact",
    "cmp_distinct=samples/distinct", "labeler_agreement=labeler/agreement",
    "labeler_gold_agreement=labeler/gold_agreement",
]  # fmt: skip
PART = 256  # prompts per resumable part


def body(ctx: StageContext) -> dict[str, Any]:
    from pipeline.feedback.chat import ChatTokens
    from pipeline.feedback.data import COMPARISON_FIELDS, read_jsonl, read_split, write_jsonl
    from pipeline.feedback.labeler import judge, pair_agreement, rank
    from pipeline.io import read_json
    from pipeline.model.export import load_model
    from pipeline.model.reward import check_tokenizer, tokenizer_sha256
    from pipeline.progress import Progress
    from pipeline.tokenizer import load_tokenizer
    from pipeline.train.instruct import generate
    from pipeline.train.loop import device_for

    cfg, seed = ctx.params.comparisons, ctx.params.common.seed
    inst = ctx.input("instructions")
    if cfg.source == "data":
        rows = read_jsonl(inst / "comparisons.jsonl", COMPARISON_FIELDS)
        if not rows:
            raise LineageError(
                "comparisons.source: data, but instructions.comparisons gave no comparisons; set it"
            )
        for i, r in enumerate(rows):
            if len(r["responses"]) < 2:
                raise LineageError(
                    f"data/instructions/comparisons.jsonl: record {i} has K={len(r['responses'])}; K >= 2"
                )
        write_jsonl(ctx.out / "comparisons.jsonl", rows)
        return {
            "prompts": len(rows),
            "mean_k": sum(len(r["responses"]) for r in rows) / len(rows),
            "source": "data",
        }

    tok_file = ctx.input("tokenize", "tokenizer.json")
    chat = ChatTokens(load_tokenizer(tok_file), str(tok_file))
    sft_dir = ctx.input("sft", "model")
    check_tokenizer(read_json(sft_dir / "chat.json", ("tokenizer_sha256",))["tokenizer_sha256"],
                    tokenizer_sha256(tok_file), str(sft_dir))  # fmt: skip
    device = device_for(cfg.device)
    model = load_model(sft_dir, device).eval()
    prompts = read_split(inst, "rm")
    if not prompts:
        raise LineageError("data/instructions/rm.jsonl: no prompts; raise instructions.sizes.rm")
    draw = random.Random(f"{seed}/k")
    ks = [draw.randint(cfg.k_min, cfg.k_max) for _ in prompts]
    temps = temperatures(cfg.temperatures or [cfg.temperature], ks, random.Random(f"{seed}/temperature"))

    # the samples do not depend on the labeler: another noise reuses them
    key = run_key(
        cfg, seed, {"noise", "device"}, [sft_dir / "model.safetensors", tok_file, inst / "rm.jsonl"]
    )
    part_dir = ctx.root / "checkpoints" / "comparisons" / key
    rows: list[dict[str, Any]] = []
    bar = Progress(len(prompts), "comparisons: sampling", "prompts")
    for p0 in range(0, len(prompts), PART):
        part = part_dir / f"part-{p0 // PART:05d}.jsonl"
        if part.is_file():
            rows += read_jsonl(part)
            bar.update(len(prompts[p0 : p0 + PART]))
            continue
        chunk, chunk_k, chunk_t = prompts[p0 : p0 + PART], ks[p0 : p0 + PART], temps[p0 : p0 + PART]
        flat = [
            chat.encode_prompt(ex["messages"]) for ex, k in zip(chunk, chunk_k, strict=True) for _ in range(k)
        ]
        flat_t = [t for ts in chunk_t for t in ts]
        texts = [""] * len(flat)
        for n, t in enumerate(sorted(set(flat_t))):  # one generation pass per temperature
            at = [i for i, ft in enumerate(flat_t) if ft == t]
            outs = generate(
                model, [flat[i] for i in at], cfg.max_new_tokens, eos=chat.end, temperature=t, top_k=cfg.top_k,
                top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed + p0 + 1_000_003 * n, device=device,
            )  # fmt: skip
            for i, o in zip(at, outs, strict=True):
                texts[i] = chat.decode_response(o)
        part_rows = []
        for ex, k, ts in zip(chunk, chunk_k, chunk_t, strict=True):
            responses, texts = texts[:k], texts[k:]
            part_rows.append({"id": ex["id"], "family": ex["family"], "messages": ex["messages"],
                              "responses": responses, "temperatures": ts,
                              "scores": [judge(ex, r).score for r in responses]})  # fmt: skip
        write_jsonl(part, part_rows)
        rows += part_rows
        bar.update(len(part_rows))
    bar.close()
    # the labeler ranks; a second, independent one shows how often two agree (InstructGPT: ~73%)
    for r in rows:
        r["ranks"] = rank(r["scores"], cfg.noise, random.Random(f"{seed}/labeler/{r['id']}"))
        r["gold_ranks"] = rank(r["scores"])
        r["other_ranks"] = rank(r["scores"], cfg.noise, random.Random(f"{seed}/labeler-2/{r['id']}"))
    write_jsonl(ctx.out / "comparisons.jsonl", rows)

    agree = total = gold_agree = gold_total = 0
    for r in rows:
        a, t = pair_agreement(r["ranks"], r["other_ranks"])
        agree, total = agree + a, total + t
        a, t = pair_agreement(r["ranks"], r["gold_ranks"])
        gold_agree, gold_total = gold_agree + a, gold_total + t
    judged = [judge(ex, resp) for ex, r in zip(prompts, rows, strict=True) for resp in r["responses"]]
    n_resp = len(judged)
    family_score: dict[str, list[float]] = {}
    temp_score: dict[str, list[float]] = {}
    for r in rows:
        family_score.setdefault(r["family"], []).extend(r["scores"])
        for t, sc in zip(r["temperatures"], r["scores"], strict=True):
            temp_score.setdefault(f"{t:g}", []).append(sc)
    return {
        "prompts": len(rows),
        "responses": n_resp,
        "mean_k": n_resp / len(rows),
        "samples": {
            "score": sum(j.score for j in judged) / n_resp,
            "exact": sum(j.exact for j in judged) / n_resp,
            "ended": sum(j.ended for j in judged) / n_resp,
            "empty": sum(not r.replace("<|end|>", "").strip() for row in rows for r in row["responses"])
            / n_resp,
            "distinct": sum(len(set(r["responses"])) / len(r["responses"]) for r in rows) / len(rows),
            "families": {f: sum(v) / len(v) for f, v in sorted(family_score.items())},
            "temperatures": {t: sum(v) / len(v) for t, v in sorted(temp_score.items())},
        },
        "labeler": {
            "noise": cfg.noise,
            "agreement": agree / max(total, 1),
            "gold_agreement": gold_agree / max(gold_total, 1),
            "strict_pairs": total,
            "all_tied_prompts": sum(len(set(r["ranks"])) < 2 for r in rows),
        },
        "source": "labeler",
    }


def temperatures(mix: list[float], ks: list[int], rng: random.Random) -> list[list[float]]:
    """The sampling temperature of each of a prompt's K responses: the mix in turn, from a random
    start, so every prompt sees as even a mix as its K allows."""
    out = []
    for k in ks:
        first = rng.randrange(len(mix))
        out.append([mix[(first + j) % len(mix)] for j in range(k)])
    return out


if __name__ == "__main__":
    sys.exit(main("comparisons", body, headline=HEADLINE))
