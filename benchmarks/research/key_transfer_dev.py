# ruff: noqa  (a research script, kept as it ran; see the docstring)
"""Research harness of issue 12 (keys that transfer): the dev protocol and the ablation rows of docs/benchmark.md.

It ran against the package *before* the layout change (commit e93aa92, flat modules): check that tree out and put
it first on the path, e.g.

    git archive e93aa92 src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python benchmarks/research/key_transfer_dev.py --split dev \
        --variants '{"name":"mpn-def-n3","nneg":3};{"name":"mpn-n3-cs6","nneg":3,"cs":"ja,ko,he,fa,ta,ka"}'

Dev protocol (``--split dev``): relations currency and language in the 15 XNLI languages, the base classifier of
seed 0 (English training claims). Edits: claims of validation countries, then of training countries, that the base
gets wrong in English (100). The memory is drawn from training countries with no dev edit; locality is measured on
2000 claims (all 15 languages) of other training countries that are not in the memory; neighbourhood on the dev
edits' own neighbours. No test country is used. ``--split test`` reproduces the demo's protocol instead.
Variants are JSON objects: ``method`` (mpn/tpatcher), ``nneg`` (hard negatives per language), ``cs`` (alias
languages for code-switched examples), ``key_mode="solved"`` (a logistic key fitted on the cached inputs, scaled to
edit >= +1 and memory <= -3, then only the value trained), ``edit`` (EditConfig overrides).
Each variant prints one JSON row: fixed GR per language, SR, ER, locality and neighbourhood retain rates, median
seconds per edit, and per language the mean pre-activation and firing rate of each patch on its own record's
translation (``tr_``) and on its neighbours (``nb_``).
"""

import os, sys, time, json, copy

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch

torch.set_num_threads(1)
from peft_mpn.experiment import ExperimentConfig, load_or_train_base
from peft_mpn.data import build_benchmark, to_edit_records
from peft_mpn.data.countries import XNLI_LANGUAGES

CACHE = os.environ.get("KEY_DEV_CACHE", "runs/key-dev-cache")
ALL = ["en", "ru", "hi", "el", "fr", "de", "es", "bg", "tr", "vi", "sw", "ur", "th", "ar", "zh"]
RELS = ["currency", "language"]


def base_and_bench(langs=ALL, rels=RELS):
    from pathlib import Path

    cfg = ExperimentConfig(relations=rels, train_languages=["en"], heldout_languages=[l for l in langs if l != "en"])
    bench = build_benchmark(languages=langs, relations=rels, seed=0)
    base, tok, info = load_or_train_base(cfg, bench, Path(CACHE), print)
    return cfg, bench, base, tok, info


"""Dev harness: edits on a split, metrics + per-language diagnostics, variants of the key training."""
import argparse, random, hashlib
import numpy as np
from collections import defaultdict
from peft_mpn.config import MPNConfig
from peft_mpn.data.records import EditRecord
from peft_mpn.editor import MPNEditor, _one_thread
from peft_mpn.losses import EditConfig
from peft_mpn.experiment import _eval_texts, EvalCache, _evaluate, _method_metrics, _predict
from peft_mpn.trainer import edit_optimizer, clip_grad_norm
from peft_mpn.baselines import locate_ffn
from peft_mpn.fastpath import FFNSuffix
from peft_mpn.data.benchmark import build_claims
from peft_mpn.data.countries import country_name, currency_name, language_name


# ------------------------------------------------------------------ alias table / code switching
def alias_table(claims, alias_langs):
    """{english surface: {lang: alias}} for country names and values of the claims (babel names)."""
    table = {}
    for c in claims:
        en_name = c.names["en"]
        table.setdefault(en_name, {})
        for lang in alias_langs:
            n = c.names.get(lang) or country_name(c.country, lang)
            if n:
                table[en_name][lang] = n
        val = c.values["en"]
        table.setdefault(val, {})
        for lang in alias_langs:
            v = c.values.get(lang)
            if not v:
                v = (
                    currency_name(c.key, lang)
                    if c.relation == "currency"
                    else language_name(c.key, lang)
                    if c.relation == "language"
                    else None
                )
            if v:
                table[val][lang] = v
    return table


def code_switch(text, table, lang):
    """Replace every English surface in text (longest first) by its alias in lang; None if nothing replaced."""
    hits = sorted((s for s in table if s and s in text and lang in table[s]), key=len, reverse=True)
    out, done = text, False
    used = []
    for s in hits:
        if any(s in u for u in used):
            continue
        if s in out:
            out = out.replace(s, table[s][lang])
            done = True
            used.append(s)
    return out if done else None


def add_code_switched(rec, table, alias_langs):
    """Pseudo-languages 'cs-xx': English template with names in xx, for inputs and negatives."""
    r = copy.deepcopy(rec)
    extra = []
    for lang in alias_langs:
        t = code_switch(r["inputs"]["en"], table, lang)
        if t is None or t == r["inputs"]["en"]:
            continue
        key = f"cs-{lang}"
        r["inputs"][key] = t
        if r.get("negatives", {}).get("en"):
            negs = [code_switch(n, table, lang) or n for n in r["negatives"]["en"]]
            r["negatives"][key] = negs
        extra.append(key)
    return r, extra


# ------------------------------------------------------------------ editor variant
class KeyEditor(MPNEditor):
    def __init__(
        self,
        *a,
        key_mode="default",
        pos_target=1.0,
        mem_target=-3.0,
        l2=1e-3,
        neg_weight=1.0,
        mined=0,
        mined_weight=5.0,
        finetune_key=False,
        center=True,
        pos_langs=None,
        **kw,
    ):
        super().__init__(*a, **kw)
        self.key_mode, self.pos_target, self.mem_target, self.l2 = key_mode, pos_target, mem_target, l2
        self.neg_weight, self.mined, self.mined_weight, self.finetune_key = (
            neg_weight,
            mined,
            mined_weight,
            finetune_key,
        )
        self.center = center
        self.patches = {}
        self.fit_seconds = []

    def edit(self, record):
        res = super().edit(record)
        if self._trained[0] is not None:
            k, b = self._trained[0]
            self.patches[res.id] = (k.detach().clone(), b.detach().clone())
        return res

    def _solve(self, cached):
        pos = cached.read("cls")  # training languages (+ code-switched pseudo-languages)
        mem = self._memory.reads
        negs = [mem] if mem is not None and len(mem) else []
        wts = [torch.ones(len(mem))] if negs else []
        if self._negative_reads is not None:
            negs.append(self._negative_reads)
            wts.append(torch.full((len(self._negative_reads),), self.neg_weight))
        neg = torch.cat(negs)
        wn = torch.cat(wts)
        mu = mem.mean(0) if (self.center and mem is not None and len(mem)) else torch.zeros(pos.shape[1])
        if self.mined and mem is not None and len(mem):
            zc = mem - mu
            e = pos[0] - mu
            sims = (zc @ e) / (zc.norm(dim=1) * e.norm() + 1e-8)
            top = sims.topk(min(self.mined, len(mem))).indices
            wn[top] = wn[top] * self.mined_weight
        X = torch.cat([pos, neg]) - mu
        scale = X.norm(dim=1).mean()
        X = X / scale
        y = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))])
        w = torch.cat([torch.full((len(pos),), 1.0 / len(pos)), wn / wn.sum()])
        k = torch.zeros(X.shape[1], requires_grad=True)
        c = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([k, c], lr=1, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (w * torch.nn.functional.softplus(-y * (X @ k + c))).sum() + 0.5 * self.l2 * k.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            s = X @ k + c
            sp, sn = s[: len(pos)], s[len(pos) :]
            lo = float(sp.min())
            hi = float(sn.max())
            if lo - hi < 1e-3:
                hi = float(torch.quantile(sn, 0.99))
                lo = max(lo, hi + 1e-3)
            alpha = (self.pos_target - self.mem_target) / (lo - hi)
            beta = self.pos_target - alpha * lo
            key = alpha * k / scale
            bias = alpha * (c - (mu @ k) / scale) + beta
        return key, bias

    def _train_fast(self, record):
        if self.key_mode == "default":
            return super()._train_fast(record)
        cached, params = self._begin_fast(record)
        t = time.perf_counter()
        key, bias = self._solve(cached)
        self.fit_seconds.append(time.perf_counter() - t)
        pk, pb = self._trained[0]
        with torch.no_grad():
            pk.copy_(key.view_as(pk))
            pb.copy_(bias.view_as(pb))
        return self._loop(cached, params, record, train_key=self.finetune_key)

    def _loop(self, cached, params, record, train_key):
        values = self.strategy.value_parameters()
        keys = [p for p in params if all(p is not v for v in values)]
        if train_key:
            optimizer = edit_optimizer(
                keys, self.config.lr, self.config.weight_decay, values, self.config.value_lr_scale
            )
        else:
            optimizer = edit_optimizer(
                [], self.config.lr, self.config.weight_decay, values, self.config.value_lr_scale
            )
        stats = None
        steps = 0
        for step in range(self.config.max_steps):
            parts, stats = self._fast_step(cached, record.label, step)
            if self.stopper.observe(stats):
                break
            optimizer.zero_grad()
            parts.total.backward()
            clip_grad_norm(params if train_key else values, self.config.max_grad_norm)
            optimizer.step()
            steps = step + 1
        return steps, stats


def run(args):
    tl = args.train.split(",")
    hl = [l for l in args.heldout.split(",") if l]
    langs = tl + hl
    cfg, bench, base, tok, info = base_and_bench()
    print("base acc", {k: round(v, 3) for k, v in info["test_accuracy"].items()}, flush=True)
    xcfg = ExperimentConfig(relations=RELS, train_languages=tl, heldout_languages=hl)
    splits = ["validation", "train"] if args.split == "dev" else [args.split]
    recs = to_edit_records(languages=ALL, relations=RELS, seed=0, splits=splits, n_negatives=args.n_negatives)
    recs.sort(key=lambda r: r["meta"]["split"] != "validation")
    recs = [r for r in recs if all(l in r["inputs"] for l in langs)]
    eng = _predict(base, tok, [r["inputs"]["en"] for r in recs])
    recs = [r for r, p in zip(recs, eng) if p != r["label"]][: args.n_edits]
    # keep only the evaluation languages in records
    for r in recs:
        r["inputs"] = {l: r["inputs"][l] for l in langs}
        r["neighbours"] = [
            {"inputs": {l: n["inputs"][l] for l in langs if l in n["inputs"]}, "label": n["label"]}
            for n in r["neighbours"]
        ]
        r["negatives"] = {l: v for l, v in r.get("negatives", {}).items() if l in tl}
    extra_langs = []
    claims = build_claims(ALL, RELS, 0)
    tables = {}
    records = [EditRecord.from_dict(r) for r in recs]
    print(f"{len(records)} edits from {args.split}", flush=True)
    dev_countries = {r.meta["country"] for r in records} if args.split == "dev" else set()
    pool = [r for r in bench["train"] if r["country"] not in dev_countries]
    step = max(1, len(pool) // 1000)
    mem_rows = pool[::step]
    memory = {
        "en": [r["text"] for r in mem_rows if r["lang"] == "en"][:1000],
        "multi": [r["text"] for r in mem_rows if r["lang"] in tl][:1000],
    }
    memset = set(memory["en"]) | set(memory["multi"])
    if args.split == "test":
        unrelated = [r for r in bench["validation"] if r["lang"] in langs]
    else:  # dev: training-split claims not in the memory, every language (never test/validation countries)
        unrelated = [
            r
            for r in bench["train"]
            if r["lang"] in langs and r["text"] not in memset and r["country"] not in dev_countries
        ]
        unrelated = random.Random(0).sample(unrelated, min(2000, len(unrelated)))
    texts = _eval_texts(records, langs, [r["text"] for r in unrelated])
    loc_labels = [int(r["label"]) for r in unrelated]
    flat = [t for g in texts.values() for t in g if t]
    block, modules = locate_ffn(base)
    bsuf = FFNSuffix(base, block, base.get_submodule(modules["key"]))
    t0 = time.time()
    cache = EvalCache(bsuf, tok, flat)
    reads = {}
    for ch_start, ch in zip(range(0, len(flat), 128), cache.chunks):
        for i, t in enumerate(flat[ch_start : ch_start + 128]):
            reads[t] = ch.hidden[i, 0]
    print(f"eval cache {len(flat)} texts {time.time() - t0:.0f}s", flush=True)
    before = _evaluate(cache.predict(bsuf), texts)
    out = {}
    for variant in args.variants.split(";"):
        opts = json.loads(variant) if variant.startswith("{") else {"name": variant}
        name = opts.pop("name")
        method = opts.pop("method", "mpn")
        cs = opts.pop("cs", False)
        nneg = opts.pop("nneg", None)
        ecfg = EditConfig(**opts.pop("edit", {}))
        languages = ["en"] if method == "tpatcher" else tl
        recs_v = []
        extra = set()
        for r in recs:
            r2 = copy.deepcopy(r)
            if nneg is not None:
                r2["negatives"] = {l: v[:nneg] for l, v in r2["negatives"].items()}
            if method == "tpatcher":
                r2["negatives"] = {l: v for l, v in r2["negatives"].items() if l == "en"}
            if cs:
                alias_langs = cs.split(",")
                if cs not in tables:
                    tables[cs] = alias_table(claims, alias_langs)
                r2, ex = add_code_switched(r2, tables[cs], alias_langs)
                extra.update(ex)
            recs_v.append(r2)
        extra = sorted(extra)
        recs_v = [r for r in recs_v]
        # records lacking a pseudo-language: copy English
        for r in recs_v:
            for e in extra:
                r["inputs"].setdefault(e, r["inputs"]["en"])
                if r["negatives"].get("en"):
                    r["negatives"].setdefault(e, r["negatives"]["en"])
        model = copy.deepcopy(base)
        ed = KeyEditor(
            model,
            tok,
            languages=languages + extra,
            memory=memory["en"] if method == "tpatcher" else memory["multi"],
            method="mpn",
            config=ecfg,
            mpn_config=MPNConfig(sharpness=10.0),
            progress=False,
            **opts,
        )
        t1 = time.time()
        results = ed.edit_stream([EditRecord.from_dict(r) for r in recs_v])
        wall = time.time() - t1
        after = _evaluate(cache.predict(ed.suffix), texts)
        m = _method_metrics(xcfg, records, results, before, after, loc_labels)
        # diagnostics
        keep = __import__("peft_mpn.experiment", fromlist=["neighbour_mask"]).neighbour_mask(records, langs)
        diag = {}
        for lang in langs:
            tr, nb = [], []
            for r, res, km in zip(records, results, keep):
                if res.skipped or r.id not in ed.patches:
                    continue
                k, b = ed.patches[r.id]
                tr.append(float(reads[r.inputs[lang]] @ k.view(-1) + b.view(-1)))
                j = 0
                for n in r.neighbours:
                    for l2 in langs:
                        if l2 == lang and n["inputs"].get(lang) and km[j]:
                            nb.append(float(reads[n["inputs"][lang]] @ k.view(-1) + b.view(-1)))
                        j += 1
            tr, nb = np.array(tr), np.array(nb)
            diag[lang] = {
                "tr_pre": round(float(tr.mean()), 2),
                "tr_fire": round(float((tr > 0).mean()), 3),
                "nb_pre": round(float(nb.mean()), 2),
                "nb_fire": round(float((nb > 0).mean()), 3),
            }
        g = m["GR"]
        row = {
            "name": name,
            "method": method,
            "fixed_train": round(m["GR_fixed_mean_train"], 3),
            "fixed_held": round(m["GR_fixed_mean_heldout"], 3),
            "fixed": {l: round(g[l]["fixed"], 2) if g[l]["fixed"] == g[l]["fixed"] else None for l in langs},
            "SR": m["SR"],
            "ER": round(m["ER"], 3),
            "loc": round(m["locality"]["retain_rate"], 4),
            "loc_norm": round(m["locality"]["normalized"], 4),
            "nbh": round(m["neighbourhood"]["retain_rate"], 4),
            "sec_med": round(m["seconds_per_edit"]["median"], 3),
            "wall": round(wall, 1),
            "diag": diag,
        }
        print(json.dumps(row), flush=True)
        out[name] = {"row": row, "metrics": m}
        del ed, model
    if args.out:
        json.dump(out, open(args.out, "w"), default=str, indent=1)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--split", default="validation")
    p.add_argument("--train", default="en,ru,hi,el")
    p.add_argument("--heldout", default="fr,de,es,bg,tr,vi,sw,ur,th,ar,zh")
    p.add_argument("--n-negatives", type=int, default=20)
    p.add_argument("--n-edits", type=int, default=100)
    p.add_argument("--alias", default="")
    p.add_argument("--variants", default="default")
    p.add_argument("--out", default="")
    run(p.parse_args())
