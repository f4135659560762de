"""Tasks built offline from the mix's validation documents (never its training split).

Documents are cut into passages of ``passage_words`` words and split, per source, between a
task's train side and test side by document, so no test passage was ever trained on. Each
builder is deterministic given the seed.

Fine-tuning (GPT-1 forms):
* ``source``: which source a passage comes from (classification);
* ``similarity``: two passages from one document, or from two documents of the same source;
* ``next_passage``: the true continuation of a passage among ``choices`` (StoryCloze-like: each
  choice is the first ``CHOICE_WORDS`` words of a passage; the distractors open passages of other
  documents of the same source, never a document's first passage);
* ``entailment``: whether a span of words comes from the premise passage; the negatives are spans
  of other documents chosen for the largest word overlap with the premise (lexically close).

Evaluation (lm-eval JSONL): ``cloze`` (LAMBADA-style last word of a passage) and ``next_passage``.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from pipeline.eval.task import Task, choice_prompt, verbalized

Doc = dict[str, Any]  # id, source, text


def passages(text: str, n_words: int) -> list[str]:
    """Consecutive runs of ``n_words`` words (a shorter tail of at least half of that is kept)."""
    words = text.split()
    out = [" ".join(words[i : i + n_words]) for i in range(0, len(words), n_words)]
    if out and len(words) % n_words and len(words) % n_words < n_words // 2:
        out.pop()
    return out


def split_docs(docs: list[Doc], test_fraction: float, seed: int) -> tuple[list[Doc], list[Doc]]:
    """Documents per source into (train, test) by a seeded shuffle; each source with two or more
    documents gives at least one to each side."""
    by_source: dict[str, list[Doc]] = defaultdict(list)
    for d in sorted(docs, key=lambda d: d["id"]):
        by_source[d["source"]].append(d)
    rng = random.Random(seed)
    train, test = [], []
    for s in sorted(by_source):
        group = by_source[s]
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        if len(group) >= 2:
            n_test = min(max(n_test, 1), len(group) - 1)
        test.extend(group[:n_test])
        train.extend(group[n_test:])
    return train, test


def _cap(items: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    if len(items) > n:
        items = rng.sample(items, n)
    return items


def _by_doc(docs: list[Doc], n_words: int) -> list[tuple[Doc, list[str]]]:
    return [(d, p) for d in docs if (p := passages(d["text"], n_words))]


SOURCE_PASSAGES_PER_DOC = 4


def source_items(
    docs: list[Doc], sources: list[str], n_words: int, cap: int, rng: random.Random,
    per_doc: int = SOURCE_PASSAGES_PER_DOC,
) -> list[dict]:  # fmt: skip
    """Passages labelled with their source, at most ``per_doc`` from one document: a few long
    documents (a language-reference chapter, an API page) would otherwise make up most of one side
    of the split and teach or test the length of one page rather than its source."""
    items = []
    for d, ps in _by_doc(docs, n_words):
        if d["source"] in sources:
            chosen = ps if len(ps) <= per_doc else rng.sample(ps, per_doc)
            items += [{"text": p, "label": sources.index(d["source"]), "doc": d["id"]} for p in chosen]
    return _cap(items, cap, rng)


def similarity_items(docs: list[Doc], n_words: int, cap: int, rng: random.Random) -> list[dict]:
    """For each passage with a sibling: one positive pair (a sibling) and one negative pair (a
    passage of another document, of the same source when there is one)."""
    per_doc = _by_doc(docs, n_words)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, (d, _) in enumerate(per_doc):
        by_source[d["source"]].append(i)
    items = []
    for i, (d, ps) in enumerate(per_doc):
        others = [j for j in by_source[d["source"]] if j != i] or [j for j in range(len(per_doc)) if j != i]
        if len(ps) < 2 or not others:
            continue
        for k, p in enumerate(ps):
            sib = rng.choice([q for m, q in enumerate(ps) if m != k])
            other = rng.choice(per_doc[rng.choice(others)][1])
            items.append({"a": p, "b": sib, "label": 1, "doc": d["id"]})
            items.append({"a": p, "b": other, "label": 0, "doc": d["id"]})
    return _cap(items, cap, rng)


def next_passage_items(docs: list[Doc], n_words: int, n_choices: int, cap: int, rng: random.Random,
                       choice_words: int | None = None) -> list[dict]:  # fmt: skip
    """A passage as the context; the choices: its true continuation and ``n_choices - 1`` passages of
    other documents of the same source. With ``choice_words`` every choice is cut to its first that
    many words (a StoryCloze-like ending, so the choice hinges on the join with the context) and the
    distractors are never the opening of a document (the true continuation never is)."""
    per_doc = _by_doc(docs, n_words)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, (d, _) in enumerate(per_doc):
        by_source[d["source"]].append(i)

    def cut(p: str) -> str:
        return p if choice_words is None else " ".join(p.split()[:choice_words])

    items = []
    for i, (d, ps) in enumerate(per_doc):
        others = [j for j in by_source[d["source"]] if j != i]
        if len(others) < 1:
            others = [j for j in range(len(per_doc)) if j != i]
        first = 0 if choice_words is None else 1
        pool = [q for j in others for q in per_doc[j][1][first:]]
        if len(pool) < n_choices - 1:
            continue
        for k in range(len(ps) - 1):
            choices = [cut(c) for c in (ps[k + 1], *rng.sample(pool, n_choices - 1))]
            order = list(range(n_choices))
            rng.shuffle(order)
            items.append(
                {
                    "context": ps[k],
                    "choices": [choices[o] for o in order],
                    "label": order.index(0),
                    "doc": d["id"],
                }
            )
    return _cap(items, cap, rng)


WORD_RE = re.compile(r"\w+")


def entailment_items(docs: list[Doc], n_words: int, cap: int, rng: random.Random, span: int = 10,
                     candidates: int = 20) -> list[dict]:  # fmt: skip
    """Premise = a passage; hypothesis = ``span`` words from it (label 1), or the span of another
    document that shares the most words with the premise among ``candidates`` random ones (label 0)."""
    per_doc = _by_doc(docs, n_words)
    spans: list[tuple[int, str]] = []  # (doc index, span text)
    for i, (_, ps) in enumerate(per_doc):
        for p in ps:
            w = p.split()
            for s in range(0, max(1, len(w) - span + 1), span):
                spans.append((i, " ".join(w[s : s + span])))
    items = []
    for i, (d, ps) in enumerate(per_doc):
        for p in ps:
            w = p.split()
            if len(w) <= span:
                continue
            s = rng.randrange(0, len(w) - span + 1)
            items.append({"premise": p, "hypothesis": " ".join(w[s : s + span]), "label": 1, "doc": d["id"]})
            words = set(WORD_RE.findall(p.lower()))
            pool = [sp for sp in rng.sample(spans, min(candidates * 3, len(spans))) if sp[0] != i][
                :candidates
            ]
            if not pool:
                continue
            best = max(pool, key=lambda sp: len(words & set(WORD_RE.findall(sp[1].lower()))))
            items.append({"premise": p, "hypothesis": best[1], "label": 0, "doc": d["id"]})
    return _cap(items, cap, rng)


# next_passage (fine-tuning): each choice is the first CHOICE_WORDS words of a passage, about a
# clause, as StoryCloze's one-sentence endings; the whole passage would bury the join with the
# context under 32 words of unrelated text (and cost four times a passage per item)
CHOICE_WORDS = 8


def embedded_task(kind: str, name: str, docs: list[Doc], n_words: int, test_fraction: float,
                  caps: tuple[int, int], n_choices: int, seed: int,
                  choice_words: int | None = CHOICE_WORDS) -> Task:  # fmt: skip
    """One embedded fine-tuning task over ``docs`` (the validation split), train/test by document."""
    train_docs, test_docs = split_docs(docs, test_fraction, seed)
    sources = sorted({d["source"] for d in docs})
    sides = []
    for side, part, cap in (("train", train_docs, caps[0]), ("test", test_docs, caps[1])):
        rng = random.Random(f"{seed}/{name}/{side}")
        if kind == "source":
            sides.append(source_items(part, sources, n_words, cap, rng))
        elif kind == "similarity":
            sides.append(similarity_items(part, n_words, cap, rng))
        elif kind == "next_passage":
            sides.append(next_passage_items(part, n_words, n_choices, cap, rng, choice_words))
        elif kind == "entailment":
            sides.append(entailment_items(part, n_words, cap, rng))
        else:
            raise ValueError(f"unknown embedded task {kind!r}")
    train, test = sides
    if kind == "source":
        words = [s.replace("_", " ") for s in sources]
        return Task(name, "classify", train, test, labels=sources, metrics=("acc", "f1"),
                    prompt=verbalized("{text}\nThis text comes from", words))  # fmt: skip
    if kind == "similarity":
        return Task(name, "similar", train, test, labels=["different", "same"], metrics=("acc", "f1"),
                    prompt=verbalized("{a}\n{b}\nQuestion: are these two passages from the same document? Answer:",
                                      ["no", "yes"]))  # fmt: skip
    if kind == "next_passage":
        return Task(name, "choice", train, test, metrics=("acc",), prompt=choice_prompt)
    return Task(name, "entail", train, test, labels=["other", "from_premise"], metrics=("acc", "f1"),
                prompt=verbalized("{premise}\nQuestion: {hypothesis}. True or False? Answer:", ["False", "True"]))  # fmt: skip


# ------------------------------------------------------------------------------ evaluation (lm-eval)
def cloze_items(docs: list[Doc], n_words: int, cap: int, rng: random.Random) -> list[dict]:
    """LAMBADA-style: ``n_words`` words of context, then the next word (letters only, 3+) to predict."""
    items = []
    for d in docs:
        words = d["text"].split()
        for s in range(0, len(words) - n_words, n_words + 1):
            target = words[s + n_words]
            if target.isalpha() and len(target) >= 3:
                items.append({"context": " ".join(words[s : s + n_words]), "completion": " " + target})
    return _cap(items, cap, rng)


def eval_items(kind: str, docs: list[Doc], seed: int, n_words: int, n_choices: int, n_test: int,
               n_train: int, test_fraction: float = 0.5) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """(train, test) items of a held-out text task for lm-eval; train is the k-shot pool."""
    train_docs, test_docs = split_docs(docs, test_fraction, seed)
    out = []
    for side, part, cap in (("train", train_docs, n_train), ("test", test_docs, n_test)):
        rng = random.Random(f"{seed}/{kind}/{side}")
        if kind == "cloze":
            out.append(cloze_items(part, n_words, cap, rng))
        else:
            out.append(
                [{k: v for k, v in it.items() if k != "doc"}
                 for it in next_passage_items(part, n_words, n_choices, cap, rng)]
            )  # fmt: skip
    return out[0], out[1]
