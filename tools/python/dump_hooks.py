"""dump_hooks.py — dump one training step of YOUR PyTorch model under reftrain's tensor names.

`reftrain diff` compares two dumps tensor by tensor in execution order and names the first tensor
where they disagree. This script makes the dump of a PyTorch model with HF-style module names
(Qwen3 / Llama: `model.layers.{i}.self_attn.q_proj`, ...): forward hooks record module outputs, and
after backward it writes the parameters, the recorded activations, `loss` and `grad:<param>` to a
safetensors file, with the execution order stored in the header (__metadata__ "reftrain.order").
It needs only torch and safetensors; copy it next to your code if you like.

In your own code:

    import dump_hooks
    recorder = dump_hooks.attach(model)                  # hooks on the modules it recognises
    logits = model(input_ids).logits                     # your forward, as you normally run it
    loss = dump_hooks.masked_cross_entropy(logits, targets)
    loss.backward()
    recorder.save("mine.safetensors", logits=logits, loss=loss)
    recorder.remove()

or in one call: `dump_hooks.dump_step(model, input_ids, targets, "mine.safetensors")`. For an HF
checkpoint directory there is a command line:

    python dump_hooks.py --hf-model DIR --batch batch.safetensors --out mine.safetensors [--dtype f32]
    reftrain dump --config DIR/config.json --weights DIR/model.safetensors \\
                  --batch batch.safetensors --out ref.safetensors
    reftrain diff ref.safetensors mine.safetensors

Put reftrain's dump first: the diff walks A's order, and reftrain's dump has every name.

Which module output becomes which reftrain name (see ACTIVATION_RULES; docs/model.md lists them all):

    model.embed_tokens                        -> model.embed_tokens.out
    model.layers.{i}.input_layernorm          -> model.layers.{i}.input_layernorm.out
    model.layers.{i}.self_attn.{q,k,v}_proj   -> ...self_attn.{q,k,v}_proj.out  viewed (B, T, H, head_dim)
    model.layers.{i}.self_attn.{q,k}_norm     -> ...self_attn.{q,k}_normed      (Qwen3's QK-norm)
    model.layers.{i}.self_attn.o_proj         -> ...self_attn.o_proj.out
    model.layers.{i}.post_attention_layernorm -> ...post_attention_layernorm.out
    model.layers.{i}.mlp.{gate,up,down}_proj  -> ...mlp.{gate,up,down}_proj.out
    model.layers.{i}                          -> model.layers.{i}.out           (the layer's output)
    model.norm                                -> model.norm.out
    lm_head                                   -> logits

Batch conventions are reftrain's: `targets` are already aligned with `input_ids` (targets[b, t] is
the token predicted at position t, -100 = not supervised), and the loss is the mean cross-entropy
over supervised positions (0 when there are none). Do not pass HF `labels`: HF shifts them itself.

Modules called more than once in one forward (weight sharing, activation checkpointing re-running
the forward) keep their first output, and the script warns. A model whose module or parameter names
differ from HF's can pass `rename=` a function from its name to the HF-style name (or None to skip).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
ORDER_KEY = "reftrain.order"  # the __metadata__ key reftrain diff reads (debug/diff.h)

_LAYER = r"model\.layers\.\d+"
# (module-name pattern, function from the module name to the reftrain activation name, whether the
# output is split into heads of head_dim: (B, T, H*D) -> (B, T, H, D) as reftrain stores it)
ACTIVATION_RULES: List[Tuple[str, Callable[[str], str], bool]] = [
    (r"model\.embed_tokens", lambda m: m + ".out", False),
    (_LAYER + r"\.input_layernorm", lambda m: m + ".out", False),
    (_LAYER + r"\.self_attn\.[qkv]_proj", lambda m: m + ".out", True),
    (_LAYER + r"\.self_attn\.[qk]_norm", lambda m: m[:-len("_norm")] + "_normed", True),
    (_LAYER + r"\.self_attn\.o_proj", lambda m: m + ".out", False),
    (_LAYER + r"\.post_attention_layernorm", lambda m: m + ".out", False),
    (_LAYER + r"\.mlp\.(gate|up|down)_proj", lambda m: m + ".out", False),
    (_LAYER, lambda m: m + ".out", False),
    (r"model\.norm", lambda m: m + ".out", False),
    (r"lm_head", lambda m: "logits", False),
]


def activation_name(module_name: str) -> Optional[Tuple[str, bool]]:
    """The reftrain activation name of an HF-named module's output and whether it splits into heads,
    or None when reftrain has no counterpart."""
    for pattern, to_name, heads in ACTIVATION_RULES:
        if re.fullmatch(pattern, module_name):
            return to_name(module_name), heads
    return None


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """reftrain's loss: mean cross-entropy over positions with target != -100 (targets already
    aligned, no shift), exactly 0 with zero gradients when no position is supervised."""
    vocab = logits.shape[-1]
    per_position = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="none")
    supervised = (targets != IGNORE_INDEX).sum().clamp(min=1).to(per_position.dtype)
    return per_position.sum() / supervised


def save_dump(tensors: Dict[str, torch.Tensor], path: str, producer: str = "dump_hooks.py") -> None:
    """Writes `tensors` (dict order = execution order) to a safetensors file whose __metadata__
    holds that order as a JSON list under "reftrain.order"."""
    from safetensors.torch import save_file

    # clone(): safetensors refuses tensors that share memory (views of one buffer, tied weights).
    data = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    metadata = {"format": "pt", "producer": producer, ORDER_KEY: json.dumps(list(data))}
    save_file(data, path, metadata=metadata)


def _head_dim(model: torch.nn.Module, head_dim: Optional[int]) -> Optional[int]:
    if head_dim is not None:
        return head_dim
    config = getattr(model, "config", None)
    if config is None:
        return None
    value = getattr(config, "head_dim", None)
    if value:
        return int(value)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return int(hidden) // int(heads) if hidden and heads else None


class Recorder:
    """Forward hooks on every module with a reftrain counterpart; outputs kept in firing order."""

    def __init__(self, model: torch.nn.Module, head_dim: Optional[int] = None,
                 rename: Optional[Callable[[str], Optional[str]]] = None):
        self.model = model
        self.rename = rename or (lambda name: name)
        self.head_dim = _head_dim(model, head_dim)
        self.activations: Dict[str, torch.Tensor] = {}
        self.handles = []
        for module_name, module in model.named_modules():
            hf_name = self.rename(module_name) if module_name else None
            found = activation_name(hf_name) if hf_name else None
            if found is None:
                continue
            name, heads = found
            if heads and self.head_dim is None:
                raise ValueError(f"{module_name}: its output splits into heads but head_dim is unknown; "
                                 "pass attach(model, head_dim=...)")
            self.handles.append(module.register_forward_hook(self._hook(name, heads)))

    def _hook(self, name: str, heads: bool):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):  # HF decoder layers return (hidden_states, ...)
                output = output[0]
            if not isinstance(output, torch.Tensor):
                return
            if name in self.activations:
                warnings.warn(f"dump_hooks: {name} was produced twice in one forward; keeping the first")
                return
            value = output.detach()
            if heads and value.shape[-1] != self.head_dim:
                value = value.reshape(*value.shape[:-1], -1, self.head_dim)
            self.activations[name] = value.clone()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def tensors(self, logits: Optional[torch.Tensor] = None,
                loss: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Everything to dump, in reftrain's walk order: parameters, the recorded activations (in
        execution order; `logits` added when no hook saw them), `loss`, then `grad:<param>` in the
        order backward produces them (the reverse of the parameters'). Call after backward."""
        params = []
        for name, p in self.model.named_parameters():  # shared (tied) parameters appear once
            hf_name = self.rename(name)
            if hf_name is not None:
                params.append((hf_name, p))
        out: Dict[str, torch.Tensor] = {name: p.detach() for name, p in params}
        out.update(self.activations)
        if logits is not None and "logits" not in out:
            out["logits"] = logits.detach()
        if loss is not None:
            out["loss"] = loss.detach().reshape(())
        for name, p in reversed(params):
            if p.grad is not None:
                out["grad:" + name] = p.grad.detach()
        return out

    def save(self, path: str, logits: Optional[torch.Tensor] = None,
             loss: Optional[torch.Tensor] = None, producer: str = "dump_hooks.py") -> None:
        save_dump(self.tensors(logits, loss), path, producer=producer)


def attach(model: torch.nn.Module, head_dim: Optional[int] = None,
           rename: Optional[Callable[[str], Optional[str]]] = None) -> Recorder:
    """Registers the forward hooks; run one forward and backward, then `recorder.save(path, ...)`."""
    return Recorder(model, head_dim=head_dim, rename=rename)


def _logits_of(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):  # HF CausalLMOutput
        return output.logits
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]  # e.g. reftrain_mirror.Transformer returns (logits, loss)
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def dump_step(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, path: str,
              head_dim: Optional[int] = None, rename: Optional[Callable[[str], Optional[str]]] = None,
              forward: Optional[Callable[[torch.Tensor], object]] = None) -> Dict[str, torch.Tensor]:
    """One forward + backward of `model` on the batch, written to `path`; returns the dumped tensors.

    `forward(input_ids)` runs the model (default `model(input_ids)`); its result may be the logits,
    an HF output with `.logits`, or a tuple starting with the logits. The loss is reftrain's
    (masked_cross_entropy). Gradients are cleared first.
    """
    model.zero_grad(set_to_none=True)
    recorder = attach(model, head_dim=head_dim, rename=rename)
    try:
        logits = _logits_of((forward or model)(input_ids))
        loss = masked_cross_entropy(logits, targets)
        loss.backward()
        tensors = recorder.tensors(logits, loss)
    finally:
        recorder.remove()
    save_dump(tensors, path)
    return tensors


def main() -> int:
    parser = argparse.ArgumentParser(description="Dump one step of an HF causal LM under reftrain's names.")
    parser.add_argument("--hf-model", required=True, help="directory with config.json and weights")
    parser.add_argument("--batch", required=True, help="safetensors with input_ids and targets, (B, T) int64")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    args = parser.parse_args()

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    dtype = {"f32": torch.float32, "f64": torch.float64}[args.dtype]
    # Eager attention: the math written out, as reftrain computes it (no fused kernel).
    model = AutoModelForCausalLM.from_pretrained(args.hf_model, torch_dtype=dtype, attn_implementation="eager")
    batch = load_file(args.batch)
    tensors = dump_step(model, batch["input_ids"], batch["targets"], args.out,
                        forward=lambda ids: model(input_ids=ids, use_cache=False))
    print(f"loss {tensors['loss'].item():.9g}; wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
