"""GPT-1 fine-tuning: transforms, head, objective, transfer, loaders, the generic loop, the stage."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import TokenizeConfig, parse_params
from pipeline.errors import LineageError
from pipeline.eval.config import FinetuneTask
from pipeline.eval.finetune import GPTClassifier, build_model, encode_items, objective
from pipeline.eval.inputs import text_encoder
from pipeline.eval.loaders import load_task
from pipeline.eval.transforms import Specials, collate, sequences
from pipeline.model.gpt import GPT, GPTConfig
from pipeline.stage import run_stage
from pipeline.tokenizer import train_tokenizer
from pipeline.train.supervised import SupervisedConfig, SupervisedTrainer
from tests.eval_project import make_project, params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    cfg = TokenizeConfig(kind="char", vocab_size=80)
    return train_tokenizer(["the river and the mountain, a garden of letters. " * 3], cfg)


@pytest.fixture(scope="module")
def small_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=80, block_size=32, n_layer=2, n_head=2, n_embd=16))


def test_each_transform_gives_the_exact_token_layout(tok):
    sp, enc = Specials.of(tok), text_encoder(tok)
    s, d, e = sp.start, sp.delim, sp.extract
    assert sequences("classify", {"text": "the river"}, enc, sp, 32) == [[s, *enc("the river"), e]]
    assert sequences("entail", {"premise": "a garden", "hypothesis": "river"}, enc, sp, 32) == [
        [s, *enc("a garden"), d, *enc("river"), e]
    ]
    a, b = enc("the mountain"), enc("letters")
    assert sequences("similar", {"a": "the mountain", "b": "letters"}, enc, sp, 32) == [
        [s, *a, d, *b, e],
        [s, *b, d, *a, e],
    ]
    got = sequences("choice", {"context": "a river", "choices": ["the", "garden"]}, enc, sp, 32)
    assert got == [[s, *enc("a river"), d, *enc("the"), e], [s, *enc("a river"), d, *enc("garden"), e]]
    # too long: the context loses its beginning, every sequence fits, the markers stay
    long = sequences(
        "entail", {"premise": "the river and the mountain " * 4, "hypothesis": "garden"}, enc, sp, 20
    )[0]
    assert len(long) == 20 and long[0] == s and long[-1] == e and d in long
    assert long[1:-1][long[1:-1].index(d) + 1 :] == enc("garden")
    # a special token's text inside a document stays text
    assert e not in enc("<|extract|>")


def test_similarity_head_is_symmetric_in_the_order_of_its_inputs(tok, small_gpt):
    sp, enc = Specials.of(tok), text_encoder(tok)
    model = GPTClassifier(small_gpt, "similar", 2).eval()
    ab = collate([(sequences("similar", {"a": "the river", "b": "a garden of letters"}, enc, sp, 32), 0)])
    ba = collate([(sequences("similar", {"a": "a garden of letters", "b": "the river"}, enc, sp, 32), 0)])
    with torch.no_grad():
        out_ab, _ = model(ab["tokens"], ab["extract"])
        out_ba, _ = model(ba["tokens"], ba["extract"])
    assert torch.equal(out_ab, out_ba)


def _grads(model, loss_fn, batch):
    model.zero_grad()
    loss, _ = loss_fn(model, batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_lambda_changes_the_gradient_and_zero_gives_exactly_the_classifier_gradient(tok, small_gpt):
    sp, enc = Specials.of(tok), text_encoder(tok)
    items = [{"text": "the river", "label": 0}, {"text": "a garden of letters", "label": 1}]
    batch = collate(encode_items("classify", items, enc, sp, 32))
    model = GPTClassifier(small_gpt, "classify", 2, clf_dropout=0.0)

    def classifier_only(m, b):
        out, _ = m(b["tokens"], b["extract"])
        return torch.nn.functional.cross_entropy(out, b["label"]), {}

    g0 = _grads(model, objective(0.0, False), batch)
    ref = _grads(model, classifier_only, batch)
    g5 = _grads(model, objective(0.5, False), batch)
    assert g0.keys() == ref.keys() and all(torch.equal(g0[k], ref[k]) for k in g0)
    assert any(not torch.allclose(g5[k], g0[k]) for k in g0 if k.startswith("gpt."))
    assert torch.allclose(g5["head.weight"], g0["head.weight"])  # L1 does not reach the head


def test_layers_transferred_zero_is_the_random_init_and_k_copies_the_first_k_blocks(small_gpt):
    def state(m):
        return {k: v.clone() for k, v in m.state_dict().items()}

    random_init = state(build_model(small_gpt, 0, "classify", 2, 0.1, seed=7))
    torch.manual_seed(7)
    fresh = state(GPTClassifier(GPT(small_gpt.config), "classify", 2, 0.1))
    assert random_init.keys() == fresh.keys() and all(torch.equal(random_init[k], fresh[k]) for k in fresh)
    one = build_model(small_gpt, 1, "classify", 2, 0.1, seed=7)
    pre = small_gpt.state_dict()
    assert torch.equal(one.gpt.transformer.h[0].attn.c_attn.weight, pre["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(one.gpt.transformer.wte.weight, pre["transformer.wte.weight"])
    assert torch.equal(
        one.gpt.transformer.h[1].attn.c_attn.weight, fresh["gpt.transformer.h.1.attn.c_attn.weight"]
    )
    full = build_model(small_gpt, None, "classify", 2, 0.1, seed=7)
    assert all(torch.equal(full.gpt.state_dict()[k], v) for k, v in pre.items())


def test_the_supervised_loop_resumes_exactly_after_a_kill(tmp_path, tok, small_gpt):
    sp, enc = Specials.of(tok), text_encoder(tok)
    items = [
        {"text": t, "label": i % 2}
        for i, t in enumerate(["the river", "a garden", "letters", "the mountain"] * 4)
    ]
    ex = encode_items("classify", items, enc, sp, 32)

    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(ex), generator=g).tolist()
        return [collate([ex[i] for i in order[s : s + 4]]) for s in range(0, len(ex), 4)]

    cfg = SupervisedConfig(lr=1e-2, epochs=2, checkpoint_interval=3, dtype="float32")

    def trainer(ckpt, source=batches):
        return SupervisedTrainer(build_model(small_gpt, None, "classify", 2, 0.1, seed=1), objective(0.5, False),
                                 source, cfg, seed=1, checkpoint=ckpt)  # fmt: skip

    whole = trainer(tmp_path / "a.pt")
    whole.run()

    def dying(epoch):
        out = batches(epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # killed after the first epoch's checkpoint
        return out

    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "b.pt", dying).run()
    resumed = trainer(tmp_path / "b.pt")
    assert resumed.resumed_from == 3
    resumed.run()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_lm_term_over_real_tokens_only_is_the_mean_over_every_next_token(tok, small_gpt):
    sp, enc = Specials.of(tok), text_encoder(tok)
    items = [{"text": "the river", "label": 0}, {"text": "a garden of letters and the mountain", "label": 1}]
    batch = collate(encode_items("classify", items, enc, sp, 32))
    model = GPTClassifier(small_gpt, "classify", 2, clf_dropout=0.0).eval()
    loss, metrics = objective(1.0, False)(model, batch)
    out, h = model(batch["tokens"], batch["extract"])
    logits = model.gpt.lm_head(h)  # every position, padding included, then ignored
    full = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), batch["targets"].reshape(-1), ignore_index=-1
    )
    assert metrics["lm_loss"] == pytest.approx(full.item(), rel=1e-5)
    assert loss.item() == pytest.approx(metrics["clf_loss"] + full.item(), rel=1e-5)


def test_length_buckets_cover_each_example_once_per_epoch_with_less_padding_the_same_on_resume(tok):
    from pipeline.eval.finetune import epoch_batches

    sp, enc = Specials.of(tok), text_encoder(tok)
    r = random.Random(0)
    words = ["the", "river", "and", "mountain", "a", "garden", "of", "letters"]
    items = [{"text": " ".join(r.choices(words, k=r.randint(1, 12))), "label": i % 2} for i in range(96)]
    ex = encode_items("classify", items, enc, sp, 64)

    def seen(batches):  # the examples of a batch list, by their token rows
        return sorted(
            tuple(row[row.nonzero()].flatten().tolist()) for b in batches for row in b["tokens"][:, 0]
        )

    def padding(batches):
        return sum(int((b["tokens"] == 0).sum()) for b in batches)

    bucketed, plain = epoch_batches(ex, 8, 1, False), epoch_batches(ex, 8, 1, False, bucket=1)
    e0 = bucketed(0)
    assert seen(e0) == seen(plain(0)) == sorted(tuple(seqs[0]) for seqs, _ in ex)  # all, once
    assert padding(e0) < padding(plain(0))
    again = bucketed(0)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(e0, again, strict=True))
    assert any(not torch.equal(a["tokens"], b["tokens"]) for a, b in zip(e0, bucketed(1), strict=True))


def test_predict_returns_outputs_in_input_order_whatever_the_batching(tok, small_gpt):
    from pipeline.eval.finetune import predict

    sp, enc = Specials.of(tok), text_encoder(tok)
    texts = ["the river", "a garden of letters and the mountain", "letters", "the mountain and the river"]
    ex = encode_items("classify", [{"text": t, "label": 0} for t in texts], enc, sp, 32)
    model = GPTClassifier(small_gpt, "classify", 2, clf_dropout=0.0)
    together = predict(model, ex, 3, False)
    alone = [predict(model, [e], 1, False)[0] for e in ex]
    assert together.shape == (4, 2)
    assert all(torch.allclose(torch.tensor(together[i]), torch.tensor(alone[i]), atol=1e-5) for i in range(4))


def test_next_passage_choices_are_short_endings_joined_to_the_context_never_document_openings():
    from pipeline.eval.embedded import next_passage_items, passages

    def doc(i, src):
        return {"id": f"d{i}", "source": src, "text": " ".join(f"{src}{i}w{k}" for k in range(40))}

    docs = [doc(i, "a" if i % 2 else "b") for i in range(8)]
    items = next_passage_items(docs, 10, 4, 1000, random.Random(0), choice_words=3)
    assert len(items) == 8 * 3  # 4 passages per document, 3 with a next one
    openings = {passages(d["text"], 10)[0].split()[0] for d in docs}
    for it in items:
        ctx = it["context"].split()
        src, i, k = ctx[-1][0], ctx[-1][1 : ctx[-1].index("w")], int(ctx[-1].split("w")[1])
        assert it["choices"][it["label"]] == " ".join(f"{src}{i}w{k + j}" for j in (1, 2, 3))
        for c, choice in enumerate(it["choices"]):
            first = choice.split()
            assert len(first) == 3 and first[0] not in openings
            if c != it["label"]:
                assert first[0][0] == src and not first[0].startswith(
                    f"{src}{i}w"
                )  # same source, other document
    whole = next_passage_items(docs, 10, 4, 1000, random.Random(0))  # evaluate's items: whole passages
    assert all(len(c.split()) == 10 for it in whole for c in it["choices"])


def test_source_items_take_a_few_passages_per_document_so_one_long_page_cannot_fill_a_side():
    from collections import Counter

    from pipeline.eval.embedded import source_items

    long_doc = {"id": "long", "source": "ref", "text": " ".join(f"w{k}" for k in range(2000))}
    short = [
        {"id": f"s{i}", "source": "web", "text": " ".join(f"v{i}x{k}" for k in range(20))} for i in range(5)
    ]
    items = source_items([long_doc, *short], ["ref", "web"], 10, 1000, random.Random(0), per_doc=4)
    per_doc = Counter(it["doc"] for it in items)
    assert per_doc["long"] == 4 and all(per_doc[f"s{i}"] == 2 for i in range(5))
    assert {it["label"] for it in items if it["doc"] == "long"} == {0}
    again = source_items([long_doc, *short], ["ref", "web"], 10, 1000, random.Random(0), per_doc=4)
    assert again == items  # seeded


def test_separated_needs_the_pretrained_interval_above_the_random_init_interval():
    from stages.finetune import _separated

    def res(lo_p, hi_r):
        return {"pretrained": {"acc": {"low": lo_p}}, "random_init": {"acc": {"high": hi_r}}}

    assert (
        _separated(res(0.62, 0.60)) and not _separated(res(0.60, 0.61)) and not _separated({"pretrained": {}})
    )


# ------------------------------------------------------------------------------------- real data sets
def write_fixtures(d):
    (d / "sst2").mkdir()
    (d / "sst2" / "train.tsv").write_text('sentence\tlabel\na "charming" journey \t1\nbleak and dull \t0\n')
    (d / "sst2" / "dev.tsv").write_text("sentence\tlabel\nfunny and warm\t1\n")
    (d / "cola").mkdir()
    (d / "cola" / "train.tsv").write_text(
        "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tRode sailors the.\n"
    )
    (d / "cola" / "dev.tsv").write_text("gj04\t1\t\tThe rope stretched.\n")
    (d / "rte").mkdir()
    for f in ("train.tsv", "dev.tsv"):
        (d / "rte" / f).write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tA cat exists.\tentailment\n"
                                   "1\tA dog ran.\tNo dogs.\tnot_entailment\n")  # fmt: skip
    (d / "mrpc").mkdir()
    for f in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        (d / "mrpc" / f).write_text(
            '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "hi".\tHe greeted.\n'
        )
    (d / "stsb").mkdir()
    for f in ("train.tsv", "dev.tsv"):
        (d / "stsb" / f).write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                                    "0\tmain\tx\t2012\t1\tnone\tnone\tA plane takes off.\tA plane is taking off.\t5.000\n")  # fmt: skip
    (d / "story").mkdir()
    header = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
    for f in ("train.csv", "test.csv"):
        (d / "story" / f).write_text(
            header + 'x1,Tom ran.,He fell.,"He cried, loudly.",Mom came.,He smiled.,He flew.,1\n'
        )
    (d / "piqa").mkdir()
    for f in ("train", "valid"):
        (d / "piqa" / f"{f}.jsonl").write_text(
            '{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid"}\n'
        )
        (d / "piqa" / f"{f}-labels.lst").write_text("0\n")


def test_loaders_read_glue_story_cloze_and_piqa_files(tmp_path):
    write_fixtures(tmp_path)

    def load(kind, folder):
        return load_task(kind, FinetuneTask(kind=kind, path=str(tmp_path / folder)), tmp_path, 0, True)

    sst = load("sst2", "sst2")
    assert sst.train[0] == {"text": 'a "charming" journey ', "label": 1} and sst.form == "classify"
    cola = load("cola", "cola")
    assert [it["label"] for it in cola.train] == [1, 0] and cola.metrics[0] == "mcc"
    rte = load("rte", "rte")
    assert rte.test[1] == {"premise": "A dog ran.", "hypothesis": "No dogs.", "label": 1}
    mrpc = load("mrpc", "mrpc")
    assert mrpc.train[0] == {"a": 'He said "hi".', "b": "He greeted.", "label": 1} and mrpc.form == "similar"
    stsb = load("stsb", "stsb")
    assert stsb.regression and stsb.test[0]["label"] == 5.0
    story = load("story_cloze", "story")
    assert (
        story.test[0]["context"] == "Tom ran. He fell. He cried, loudly. Mom came."
        and story.test[0]["label"] == 0
    )
    piqa = load("piqa", "piqa")
    assert piqa.test[0]["choices"] == ["twist the lid", "eat the lid"] and piqa.test[0]["label"] == 0


def test_loaders_refuse_a_missing_field_and_a_label_outside_the_label_set(tmp_path):
    write_fixtures(tmp_path)
    (tmp_path / "sst2" / "dev.tsv").write_text("text_col\tlabel\nfunny\t1\n")
    with pytest.raises(LineageError, match=r"dev.tsv: row 1: no 'sentence' field") as e:
        load_task("sst2", FinetuneTask(kind="sst2", path=str(tmp_path / "sst2")), tmp_path, 0, True)
    assert "\n" not in str(e.value)
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\nfunny\t3\n")
    with pytest.raises(LineageError, match=r"label 3 is outside the label set \['negative', 'positive'\]"):
        load_task("sst2", FinetuneTask(kind="sst2", path=str(tmp_path / "sst2")), tmp_path, 0, True)
    (tmp_path / "rte" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n")
    with pytest.raises(LineageError, match="outside the label set"):
        load_task("rte", FinetuneTask(kind="rte", path=str(tmp_path / "rte")), tmp_path, 0, True)
    with pytest.raises(LineageError, match="common.offline is true"):
        load_task("sst2", FinetuneTask(kind="sst2", path="nyu-mll/glue:sst2"), tmp_path, 0, True)


# ----------------------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("ft"))


def test_finetune_stage_writes_models_predictions_and_metrics_for_every_task(project):
    from stages import finetune

    m = run_stage("finetune", finetune.body, project, parse_params(params(project)), finetune.HEADLINE)
    out = project / "data" / "finetune"
    for task in ("source", "similarity", "next_passage", "entailment"):
        res = m["tasks"][task]
        table = pq.read_table(out / "predictions" / f"{task}.parquet").to_pydict()
        gold = np.asarray(table["gold"])
        form = json.loads((out / "model" / task / "config.json").read_text())["form"]
        for variant in ("pretrained", "random_init", "zero_shot"):
            # the reported accuracy is that of the predictions written beside it; a classification
            # task's chance level is its test labels' majority class
            acc, pred = res[variant]["acc"], np.asarray(table[f"pred_{variant}"])
            assert acc["value"] == pytest.approx(float((pred == gold).mean())), (task, variant)
            if form != "choice":
                assert acc["chance"] == pytest.approx(np.bincount(gold).max() / len(gold)), (task, variant)
        assert len(table["gold"]) == res["n_test"] and {
            "pred_pretrained",
            "pred_random_init",
            "pred_zero_shot",
        } <= set(table)
        config = json.loads((out / "model" / task / "config.json").read_text())
        assert config["form"] in ("classify", "similar", "choice", "entail")
        assert (out / "model" / task / "model.safetensors").is_file()
    from stages.evaluate import load_finetuned_trunk

    trunk = load_finetuned_trunk(out / "model" / "source")  # what evaluate scores as finetune/source
    assert trunk.lm_head.weight is trunk.transformer.wte.weight
    headline = json.loads((project / "metrics" / "finetune.json").read_text())
    for task, res in m["tasks"].items():  # `dvc exp show` compares the very numbers of metrics.json
        assert headline[f"ft/{task}"] == pytest.approx(res["pretrained"]["acc"]["value"], abs=1e-4)
        assert headline[f"zs/{task}"] == pytest.approx(res["zero_shot"]["acc"]["value"], abs=1e-4)
    losses = [t["train"]["pretrained"]["loss"] for t in m["tasks"].values()]
    assert headline["ft_train_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-4)


def test_finetune_refuses_a_model_from_another_tokenizer_and_writes_nothing(project, tmp_path):
    from stages import finetune

    root = tmp_path / "p"
    shutil.copytree(project / "data", root / "data")
    shutil.rmtree(root / "data" / "finetune", ignore_errors=True)
    data = params(root, {"tokenize": {"vocab_size": 300}})
    bigger = train_tokenizer(["a different corpus " * 50], TokenizeConfig(vocab_size=290))
    bigger.save(str(root / "data" / "tokenize" / "tokenizer.json"))
    with pytest.raises(LineageError, match="made for another tokenizer") as e:
        run_stage("finetune", finetune.body, root, parse_params(data), finetune.HEADLINE)
    assert "\n" not in str(e.value) and not (root / "data" / "finetune").exists()
