"""dump_hooks.py — dump one training step of YOUR PyTorch model, in your names, for `reftrain diff`.

`reftrain diff` compares two dumps tensor by tensor in execution order and names the first tensor
where they disagree, where its error lives (positions, heads, rows) and the likely cause. This script
writes the dump of your model: the parameters, module inputs and outputs, tensors you tap inside
functions, the loss, the parameter gradients and, when you let it watch your optimizer, the clipped
gradients, AdamW's moments and the updated parameters. Names stay yours (`blocks.0.attn.qkv.out`);
a map file (maps/*.json, docs/diffing.md) says how they become reftrain's, and is stored in the dump
so that `reftrain diff` applies it. It needs only torch (1.13 or later) and safetensors; copy it next
to your code if you like.

    import dump_hooks
    recorder = dump_hooks.attach(model, map="maps/nanogpt.json")  # or "nanogpt": a shipped map by name
    logits = model(input_ids)                                     # your forward, as you wrote it
    loss = dump_hooks.masked_cross_entropy(logits, targets)       # reftrain's loss on aligned targets
    loss.backward()
    recorder.save("mine.safetensors", logits=logits, loss=loss)
    recorder.remove()

    reftrain dump --config cfg.json --weights w.safetensors --batch batch.safetensors --out ref.safetensors
    reftrain diff ref.safetensors mine.safetensors

Names recorded (only those the map mentions when there is a map; all of them without one):
    <module>.out     a module's output (the first tensor of a tuple)
    <module>.in      a module's first tensor input (o_proj's input is the attention output)
    <module>.<tap>   dump_hooks.tap("q_rotary", q) called while <module> runs: tensors that are not
                     any module's output (RoPE, attention probabilities, the SwiGLU product)
    <param>, grad:<param>                       parameters and their gradients (before clipping)
    grad.clipped:<param>, adam.m:<param>, adam.v:<param>, updated:<param>
                     with recorder.watch(optimizer): the gradient the step saw, the moments after it
                     and the parameter after it

For an HF checkpoint directory there is a command line (eager attention, the shipped hf map):

    python dump_hooks.py --hf-model DIR --batch batch.safetensors --out mine.safetensors [--dtype f32]

Batch conventions are reftrain's: `targets` are already aligned with `input_ids` (targets[b, t] is
the token predicted at position t, -100 = not supervised), and the loss is the mean cross-entropy over
supervised positions (0 when there are none). Do not pass HF `labels`: HF shifts them itself.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
ORDER_KEY = "reftrain.order"  # the __metadata__ keys reftrain diff reads (debug/diff.h)
MAP_KEY = "reftrain.map"
MAPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "maps")

_active: Optional["Recorder"] = None  # the recorder taps write to, while one is attached


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """reftrain's loss: mean cross-entropy over positions with target != -100 (targets already
    aligned, no shift), exactly 0 with zero gradients when no position is supervised."""
    vocab = logits.shape[-1]
    per_position = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="none")
    supervised = (targets != IGNORE_INDEX).sum().clamp(min=1).to(per_position.dtype)
    return per_position.sum() / supervised


def tap(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Records `tensor` as `<running module>.<name>` when a recorder is attached; returns it unchanged.
    Costs nothing otherwise, so taps may stay in your code."""
    if _active is not None:
        _active._record_tap(name, tensor)
    return tensor


def load_map(spec: Union[str, dict, None]) -> Optional[dict]:
    """A map as one dict with "extends" resolved: a path, the name of a shipped map ("hf", "nanogpt",
    "meta-llama", "torchtitan-llama"), or a dict already loaded."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return spec
    path = spec
    if not os.path.exists(path) and os.path.exists(os.path.join(MAPS_DIR, spec + ".json")):
        path = os.path.join(MAPS_DIR, spec + ".json")
    with open(path) as f:
        data = json.load(f)
    tensors = list(data.get("tensors", []))
    if "extends" in data:
        parent = load_map(os.path.join(os.path.dirname(path), data["extends"]))
        tensors = parent["tensors"] + tensors
    return {"source": os.path.relpath(path) if not os.path.isabs(spec) else path, "tensors": tensors}


def _pattern(text: str) -> "re.Pattern[str]":
    return re.compile(re.escape(text).replace(re.escape("{i}"), r"(\d+)"))


def save_dump(tensors: Dict[str, torch.Tensor], path: str, producer: str = "dump_hooks.py",
              map: Optional[dict] = None) -> None:
    """Writes `tensors` (dict order = execution order) to a safetensors file whose __metadata__ holds
    that order under "reftrain.order" and, when given, the map under "reftrain.map"."""
    from safetensors.torch import save_file

    # clone(): safetensors refuses tensors that share memory (views of one buffer, tied weights).
    data = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    metadata = {"format": "pt", "producer": producer, ORDER_KEY: json.dumps(list(data))}
    if map is not None:
        metadata[MAP_KEY] = json.dumps(map)
    save_file(data, path, metadata=metadata)


class Recorder:
    """Hooks on every module (inputs and outputs), taps, gradient hooks on every parameter and,
    when watched, the optimizer step. Tensors are kept in the order they were produced."""

    def __init__(self, model: torch.nn.Module, map: Union[str, dict, None] = None):
        global _active
        self.model = model
        self.map = load_map(map)
        patterns = [] if self.map is None else [
            p for entry in self.map["tensors"]
            for p in (entry["theirs"] if isinstance(entry["theirs"], list) else [entry["theirs"]])]
        self._wanted = [_pattern(p) for p in patterns]
        self.activations: Dict[str, torch.Tensor] = {}
        self.optimizer_state: Dict[str, Dict[str, torch.Tensor]] = {}
        self._grads: Dict[str, torch.Tensor] = {}
        self._snapshot: Dict[str, torch.Tensor] = {}  # parameters as they were before a watched step
        self._stack: List[str] = []
        self.handles = []
        self.params = list(model.named_parameters())  # shared (tied) parameters appear once
        self._name_of = {id(p): name for name, p in self.params}
        for module_name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(module_name)))
            self.handles.append(module.register_forward_hook(self._post_hook(module_name)))
        for name, p in self.params:
            if p.requires_grad:
                self.handles.append(p.register_hook(self._grad_hook(name)))
        _active = self

    def _wants(self, name: str) -> bool:
        return self.map is None or any(p.fullmatch(name) for p in self._wanted)

    def _keep(self, name: str, value) -> None:
        if not isinstance(value, torch.Tensor) or not self._wants(name):
            return
        if name in self.activations:
            warnings.warn(f"dump_hooks: {name} was produced twice in one forward; keeping the first")
            return
        self.activations[name] = value.detach().clone()

    def _pre_hook(self, module_name: str):
        def hook(module, inputs):
            self._stack.append(module_name)
            if module_name and inputs and isinstance(inputs[0], torch.Tensor):
                self._keep(module_name + ".in", inputs[0])
        return hook

    def _post_hook(self, module_name: str):
        def hook(module, inputs, output):
            if self._stack and self._stack[-1] == module_name:
                self._stack.pop()
            if isinstance(output, (tuple, list)) and output:  # HF decoder layers return (hidden_states, ...)
                output = output[0]
            if module_name:
                self._keep(module_name + ".out", output)
        return hook

    def _record_tap(self, name: str, tensor: torch.Tensor) -> None:
        running = self._stack[-1] if self._stack else ""
        self._keep(f"{running}.{name}" if running else name, tensor)

    def _grad_hook(self, name: str):
        def hook(grad):  # a parameter used twice (tied weights) gets two partial gradients: summed
            self._grads[name] = self._grads[name] + grad.detach() if name in self._grads else grad.detach().clone()
        return hook

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Records the optimizer's next step: the gradients it sees (after your clipping), its
        moments (AdamW's exp_avg, exp_avg_sq) and the parameters after it. Call before step()."""
        original = optimizer.step

        def step(*args, **kwargs):
            self.snapshot_parameters()
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) in self._name_of and p.grad is not None:
                        self.optimizer_state.setdefault("grad.clipped:", {})[self._name_of[id(p)]] = p.grad.detach().clone()
            result = original(*args, **kwargs)
            for group in optimizer.param_groups:
                for p in group["params"]:
                    name = self._name_of.get(id(p))
                    if name is None:
                        continue
                    state = optimizer.state.get(p, {})
                    for key, prefix in (("exp_avg", "adam.m:"), ("exp_avg_sq", "adam.v:")):
                        if key in state:
                            self.optimizer_state.setdefault(prefix, {})[name] = state[key].detach().clone()
                    self.optimizer_state.setdefault("updated:", {})[name] = p.detach().clone()
            optimizer.step = original
            return result

        optimizer.step = step

    def remove(self) -> None:
        global _active
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if _active is self:
            _active = None

    def tensors(self, logits: Optional[torch.Tensor] = None,
                loss: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Everything to dump, in reftrain's walk order: parameters (as they were before a watched
        step), activations in execution order, `logits`, `loss`, the gradients in the order backward
        produces them (the reverse of the parameters'), then the optimizer's tensors. Call after
        backward (and after the watched step)."""
        out: Dict[str, torch.Tensor] = {}
        for name, p in self.params:
            out[name] = self._snapshot.get(name, p.detach())
        out.update(self.activations)
        if logits is not None and "logits" not in out:
            out["logits"] = logits.detach()
        if loss is not None:
            out["loss"] = loss.detach().reshape(())
        for name, p in reversed(self.params):
            grad = self._grads.get(name)
            if grad is None:
                if p.requires_grad:
                    warnings.warn(f"dump_hooks: {name} received no gradient; dumping zeros for it")
                    grad = torch.zeros_like(p)
                else:
                    continue
            out["grad:" + name] = grad
        for prefix in ("grad.clipped:", "adam.m:", "adam.v:", "updated:"):
            for name, value in self.optimizer_state.get(prefix, {}).items():
                out[prefix + name] = value
        return out

    def snapshot_parameters(self) -> None:
        """Keeps a copy of the parameters, so that a dump after a watched step holds them as they were
        before it (the watched step calls this)."""
        self._snapshot = {name: p.detach().clone() for name, p in self.params}

    def save(self, path: str, logits: Optional[torch.Tensor] = None,
             loss: Optional[torch.Tensor] = None, producer: str = "dump_hooks.py") -> None:
        save_dump(self.tensors(logits, loss), path, producer=producer, map=self.map)


def attach(model: torch.nn.Module, map: Union[str, dict, None] = None) -> Recorder:
    """Registers the hooks; run one forward and backward, then `recorder.save(path, ...)`.
    `map`: a map file, a shipped map's name, or None to record every module input and output."""
    return Recorder(model, map=map)


def _logits_of(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):  # HF CausalLMOutput
        return output.logits
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]  # e.g. reftrain_mirror.Transformer returns (logits, loss)
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def dump_step(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, path: str,
              map: Union[str, dict, None] = None, forward: Optional[Callable[[torch.Tensor], object]] = None,
              optimizer: Optional[torch.optim.Optimizer] = None,
              before_step: Optional[Callable[[], None]] = None) -> Dict[str, torch.Tensor]:
    """One forward + backward of `model` on the batch (and, with `optimizer`, `before_step()` — your
    clipping — then one optimizer step), written to `path`; returns the dumped tensors.

    `forward(input_ids)` runs the model (default `model(input_ids)`); its result may be the logits,
    an HF output with `.logits`, or a tuple starting with the logits. The loss is reftrain's
    (masked_cross_entropy). Gradients are cleared first.
    """
    model.zero_grad(set_to_none=True)
    recorder = attach(model, map=map)
    try:
        logits = _logits_of((forward or model)(input_ids))
        loss = masked_cross_entropy(logits, targets)
        loss.backward()
        if optimizer is not None:
            recorder.watch(optimizer)
            if before_step is not None:
                before_step()
            optimizer.step()
        tensors = recorder.tensors(logits, loss)
    finally:
        recorder.remove()
    save_dump(tensors, path, map=recorder.map)
    return tensors


def main() -> int:
    parser = argparse.ArgumentParser(description="Dump one step of an HF causal LM for reftrain diff.")
    parser.add_argument("--hf-model", required=True, help="directory with config.json and weights")
    parser.add_argument("--batch", required=True, help="safetensors with input_ids and targets, (B, T) int64")
    parser.add_argument("--out", required=True, help="output .safetensors")
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    parser.add_argument("--map", default="hf", help="tensor-name map (default: the shipped hf map)")
    args = parser.parse_args()

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    dtype = {"f32": torch.float32, "f64": torch.float64}[args.dtype]
    # Eager attention: the math written out, as reftrain computes it (no fused kernel).
    model = AutoModelForCausalLM.from_pretrained(args.hf_model, torch_dtype=dtype, attn_implementation="eager")
    batch = load_file(args.batch)
    tensors = dump_step(model, batch["input_ids"], batch["targets"], args.out, map=args.map,
                        forward=lambda ids: model(input_ids=ids, use_cache=False))
    print(f"loss {tensors['loss'].item():.9g}; wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
