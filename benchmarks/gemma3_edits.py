"""Counterfactual capital edits on the real Gemma 3 270M (offline, the ``llm`` extra): MPN against T-Patcher.

Five counterfactual capitals are edited one after the other in one editor (France -> Rome, Germany -> Madrid, United
Kingdom -> Vienna, Russia -> Athens, Italy -> Lisbon), with ``Country: {c}\\nCapital:`` prompts in 8 languages and
each target in that language's spelling (world-countries; for Japanese, CLDR and the packaged names of
``peft_mpn.data.counterfactual``). The memory holds the same form, with answers, for 13 other countries, plus
unrelated sentences; each edit joins it after it is made. Prints JSON:
seconds and steps per edit, greedy outputs before and after per language, the new capital's share in each language
(exact spelling, any language's spelling, old answer kept), and locality on neighbours and unrelated prompts.

    python benchmarks/gemma3_edits.py --method mpn --out mpn_fast.json
    python benchmarks/gemma3_edits.py --method tpatcher --out tp_fast.json
    python benchmarks/gemma3_edits.py --method mpn --fast 0 --n 1 --max-steps 30 --out mpn_full_1.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common  # noqa: E402
import torch  # noqa: E402

from peft_mpn import CausalLMEditor, EditConfig  # noqa: E402
from peft_mpn.data.counterfactual import (  # noqa: E402
    answer_text,
    counterfactual_countries,
    load_generation_templates,
)
from peft_mpn.data.countries import country_name  # noqa: E402
from peft_mpn.models import load_causal_lm  # noqa: E402


LANGS = ("en", "fr", "de", "es", "ru", "ar", "zh", "ja")
#: ``Country: {country}\nCapital:`` and its translations (the packaged prompts of the counterfactual benchmark).
TEMPLATES = {lang: load_generation_templates()["prompts"]["capital"][lang] for lang in LANGS}
EDITS = [("FR", "IT"), ("DE", "ES"), ("GB", "AT"), ("RU", "GR"), ("IT", "PT")]
MEMORY_COUNTRIES = ["CA", "AU", "BR", "IN", "AR", "PL", "SE", "NL", "KE", "VN", "IR", "PE", "CU"]
NEIGHBOUR_COUNTRIES = ["JP", "ES", "CN", "MX", "TR", "NO", "TH", "EG", "KR", "GR"]
MEMORY_SENTENCES = [
    *("The weather is lovely today, so we are going for a walk.", "Il fait beau aujourd'hui."),
    *("Der Hund schläft auf dem Sofa.", "Me gusta leer libros por la noche.", "Я люблю читать книги."),
    *("أحب قراءة الكتب في المساء.", "我喜欢在晚上看书。", "私は夜に本を読むのが好きです。"),
]
UNRELATED = [
    *("The largest planet in the solar system is", "Water boils at a temperature of", "The author of Hamlet is"),
    *("La plus grande planète du système solaire est", "Der längste Fluss der Welt ist der"),
    *("El océano más grande del mundo es el", "Самая высокая гора в мире —", "أكبر محيط في العالم هو"),
    *("世界上最高的山是", "日本で一番高い山は"),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="mpn", choices=["mpn", "tpatcher"], help="mpn trains on en and fr")
    parser.add_argument("--fast", default="1", choices=["0", "1"], help="1: the fast path; 0: the full model")
    parser.add_argument("--n", type=int, default=len(EDITS), help="how many of the five edits")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON report here")
    return parser.parse_args(argv)


def first_line(text: str) -> str:
    return text.split("\n")[0].strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    # Capitals: world-countries; in Japanese, CLDR exemplar cities and the packaged names (not every country has one,
    # so Japanese is looked up apart; the memory does not use it).
    countries = {c.iso2: c for c in counterfactual_countries([lang for lang in LANGS if lang != "ja"], ["capital"])}
    japanese = {c.iso2: c for c in counterfactual_countries(["en", "ja"], ["capital"])}

    def capital(iso: str, lang: str) -> str:
        return (japanese if lang == "ja" else countries)[iso].facts["capital"].values[lang]

    def answer(text: str, lang: str) -> str:
        return answer_text(text, lang)

    records = [
        {
            "id": f"{iso}->{new}",
            "prompt": {lang: TEMPLATES[lang].format(country=country_name(iso, lang)) for lang in LANGS},
            "target": {lang: answer(capital(new, lang), lang) for lang in LANGS},
        }
        for iso, new in EDITS[: args.n]
    ]
    memory = [
        TEMPLATES[lang].format(country=country_name(iso, lang)) + answer(capital(iso, lang), lang)
        for iso in MEMORY_COUNTRIES
        for lang in LANGS
        if lang != "ja"
    ] + MEMORY_SENTENCES
    neighbours = [
        TEMPLATES[lang].format(country=country_name(iso, lang))
        for iso in NEIGHBOUR_COUNTRIES
        for lang in ("en", "fr", "de", "ru", "zh")
    ]

    start = time.perf_counter()
    model, tokenizer = load_causal_lm(dtype=args.dtype)
    load_seconds = time.perf_counter() - start
    languages = ["en", "fr"] if args.method == "mpn" else ["en"]
    editor = CausalLMEditor(
        model,
        tokenizer,
        languages,
        memory,
        method=args.method,
        config=EditConfig(max_steps=args.max_steps),
        fast=args.fast == "1",
        progress=False,
    )
    before = editor.evaluate(records, base=True, rephrases=False)
    kept_before = {
        "neighbours": editor.generate(neighbours, 1, base=True),
        "unrelated": editor.generate(UNRELATED, 1, base=True),
    }
    results = []
    for record in records:
        start = time.perf_counter()
        result = editor.edit(record)
        seconds = time.perf_counter() - start
        editor.add_to_memory([record["prompt"][lang] + record["target"][lang] for lang in editor.languages])
        results.append(
            {"id": record["id"], "success": result.success, "steps": result.steps, "seconds": round(seconds, 2)}
        )
        print(results[-1], file=sys.stderr, flush=True)
    after = editor.evaluate(records, rephrases=False)
    kept_after = {"neighbours": editor.generate(neighbours, 1), "unrelated": editor.generate(UNRELATED, 1)}

    new_capital = {}
    for lang in LANGS:
        exact = spelled = unchanged = 0
        for record, b, a in zip(records, before, after):
            out, old = first_line(a["prompts"][lang]["output"]), first_line(b["prompts"][lang]["output"])
            exact += out == record["target"][lang].strip()
            spelled += out in {t.strip() for t in record["target"].values()}
            unchanged += out == old
        new_capital[lang] = {"exact": exact, "any_spelling": spelled, "unchanged": unchanged, "of": len(records)}
    return {
        "method": args.method,
        "fast": editor.fast,
        "dtype": args.dtype,
        "load_seconds": round(load_seconds, 2),
        "results": results,
        "median_seconds_per_edit": statistics.median(r["seconds"] for r in results),
        "new_capital": new_capital,
        "next_token_kept": {
            k: sum(x == y for x, y in zip(kept_before[k], kept_after[k])) / len(kept_before[k]) for k in kept_before
        },
        "token_agreement": editor.locality(UNRELATED + neighbours, max_new_tokens=4),
        "examples": {
            r["id"]: {
                lang: {"before": b["prompts"][lang]["output"], "after": a["prompts"][lang]["output"]} for lang in LANGS
            }
            for r, b, a in zip(records, before, after)
        },
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    _common.emit_json(run(args), args.out)


if __name__ == "__main__":
    main()
