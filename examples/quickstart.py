"""Quickstart: add one patch neuron that fixes one prediction, save it, load it, get the same outputs.

Runs offline in seconds on a tiny random BERT classifier; swap in any Hugging Face classifier with --model.

    python examples/quickstart.py
    python examples/quickstart.py --model path/to/a/classifier --output patches/
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

import peft_mpn  # registers the "MPN" PEFT type
from peft_mpn import MPNConfig


def load_base(name: str | None) -> torch.nn.Module:
    if name:
        return AutoModelForSequenceClassification.from_pretrained(name).eval()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a local path or hub id of a sequence classifier (default: tiny random BERT)")
    parser.add_argument("--output", help="where to save the adapter (default: a temporary directory)")
    args = parser.parse_args()

    base = load_base(args.model)
    vocab = base.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    edit = torch.randint(5, vocab, (1, 12), generator=generator)  # the input whose prediction we fix
    others = torch.randint(5, vocab, (64, 12), generator=generator)  # unrelated inputs that must not change

    with torch.no_grad():
        before_edit = base(input_ids=edit).logits.argmax(-1).item()
        before_others = base(input_ids=others).logits.argmax(-1)
    target = torch.tensor([1 - before_edit])
    print(f"before: prediction on the edit input = {before_edit}, we want {target.item()}")

    model = get_peft_model(base, MPNConfig(task_type="SEQ_CLS"))  # last FFN layer, from the BERT preset
    # Transformer-Patcher's initialisation: the key is h/|h|^2 for the edit's FFN input h at [CLS].
    ffn_input = {}
    block = next(iter(model.patch_blocks().values()))
    hook = block["key"].register_forward_hook(lambda module, inputs, output: ffn_input.update(h=inputs[0][0, 0]))
    with torch.no_grad():
        model(input_ids=edit)
    hook.remove()
    h = ffn_input["h"]
    model.add_patch(key=h / h.norm() ** 2, bias=0.0, value=torch.randn(h.shape[0]) * 0.1)

    optimizer = torch.optim.Adam(model.patch_parameters(newest_only=True), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(1, 201):
        steps = step
        with model.capture_activations() as acts:
            logits = model(input_ids=torch.cat([edit, others])).logits
        (pre,) = acts.values()
        # edit loss + keep the neuron on for the edit ([CLS] pre-activation > 0) and off for the others (< -3)
        loss = loss_fn(logits[:1], target) + torch.exp(-pre[0, 0]).mean() + 5 * torch.relu(pre[1:, 0] + 3).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if logits[0].argmax().item() == target.item() and pre[1:, 0].max() < 0:
            break
    model.freeze_patches()

    with torch.no_grad():
        after_edit = model(input_ids=edit).logits.argmax(-1).item()
        after_others = model(input_ids=others).logits.argmax(-1)
        logits = model(input_ids=others).logits
    kept = (after_others == before_others).float().mean().item()
    print(f"after {steps} steps: prediction on the edit input = {after_edit}; unrelated inputs kept: {kept:.0%}")

    output = args.output or tempfile.mkdtemp(prefix="mpn-quickstart-")
    model.save_pretrained(output)
    again = PeftModel.from_pretrained(load_base(args.model), output)
    with torch.no_grad():
        diff = (again(input_ids=others).logits - logits).abs().max().item()
    print(f"saved to {output}; reloaded with PeftModel.from_pretrained, max |logit diff| = {diff:.1e}")
    print(f"patches: {again.num_patches()}, frozen: {again.num_frozen_patches()}, peft-mpn {peft_mpn.__version__}")
    if after_edit != target.item() or diff > 1e-6:
        raise SystemExit("quickstart failed: the edit did not take or the reload differs")


if __name__ == "__main__":
    main()
