"""The logit lens: read every block's hidden state as a next-token distribution, and measure how
far each block's distribution still is from the model's final one.

Block l's distribution is p_l = softmax(head(final_norm(h_l))), h_l the output of block l, through
the model's own final norm and output head (what the last block's output goes through).
``lens_modules`` finds them generically:

- the head: ``model.get_output_embeddings()`` (``lm_head`` of transformers' causal LMs);
- the final norm: the first module among ``norm`` (Llama, Mistral, Qwen, Gemma), ``final_layernorm``
  (Phi), ``final_layer_norm`` (GPT-NeoX), ``ln_f`` (GPT-2, GPT-J, Bloom, Falcon) and ``norm_f``
  (Mamba) found on ``model.base_model``, then on ``model.base_model.decoder`` (OPT).

Hidden states come from ``output_hidden_states=True``: the embeddings, then each block's output.
transformers hands the last entry over already normalized, so the last block's raw output is taken
from the final norm's input (a forward hook) instead; every block then goes through the same lens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SelectionError

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
_LENS_ELEMENTS = 2**23  # tokens x vocabulary per chunk: float64 distributions of 64 MiB each


def lens_modules(model: nn.Module, label: str = "salf") -> tuple[nn.Module, nn.Module]:
    """(output head, final norm) of ``model``; SelectionError naming the model class when either is missing."""
    kind = type(model).__name__
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        raise SelectionError(f"{label}: {kind} has no output head (get_output_embeddings() gives none): give the "
                             f"causal LM (e.g. LlamaForCausalLM), not a base model or a plain module")
    base = getattr(model, "base_model", None)
    for owner in (base, getattr(base, "decoder", None)):
        for attr in FINAL_NORM_NAMES if isinstance(owner, nn.Module) else ():
            norm = getattr(owner, attr, None)
            if isinstance(norm, nn.Module):
                return head, norm
    raise SelectionError(f"{label}: {kind} has no final norm on its base model (looked for base_model."
                         f"{{{', '.join(FINAL_NORM_NAMES)}}} and base_model.decoder.*): the logit lens needs the norm "
                         f"the last block's output goes through before the head")


@dataclass
class LensProfile:
    """Per block l (0 = the first), over every real token of the calibration batches, in nats."""

    transition: list[float]  # mean of JS(p_l, p_final): the semantic distance still left after block l
    deviation: list[float]  # population std over tokens of that same JS(p_l, p_final)
    change: list[float]  # mean of JS(p_{l-1}, p_l): how far block l moves the distribution (p_{-1}: the embeddings')
    tokens: int


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between the rows of two log-probability matrices."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2)

    def kl_to_m(log_a: torch.Tensor) -> torch.Tensor:
        a = log_a.exp()
        return torch.where(a > 0, a * (log_a - log_m), 0).sum(-1)  # 0 log 0 = 0

    return (0.5 * (kl_to_m(log_p) + kl_to_m(log_q))).clamp_min(0)


def lens_profile(model: nn.Module, batches: Sequence, head: nn.Module, norm: nn.Module,
                 label: str = "salf") -> LensProfile:
    """Run ``batches`` (dicts with ``input_ids`` and optionally ``attention_mask``; ``labels`` is
    dropped) under no_grad in eval mode, and measure every block's distance to the final distribution.
    Padding (attention_mask 0) is left out. The model's mode is restored."""
    captured: list[torch.Tensor] = []

    def capture_norm_input(module, args, kwargs, output):
        captured.append(args[0] if args else next(iter(kwargs.values())))

    to_final, steps = [], []  # per batch: [blocks, tokens] float64 on the CPU
    training = model.training
    handle = norm.register_forward_hook(capture_norm_input, with_kwargs=True)
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs, keep = _model_inputs(model, batch, label)
                captured.clear()
                hidden = getattr(model(**inputs, output_hidden_states=True), "hidden_states", None)
                if not hidden or len(hidden) < 2 or len(captured) != 1 or captured[0].shape != hidden[-1].shape:
                    raise SelectionError(f"{label}: {type(model).__name__} did not return one hidden state per block "
                                         f"with output_hidden_states=True, each going through its final norm once: "
                                         f"the logit lens needs a transformers causal LM")
                states = [_real_tokens(h, keep) for h in (*hidden[:-1], captured[0])]
                a, b = _distances(states, head, norm)
                to_final.append(a)
                steps.append(b)
    finally:
        handle.remove()
        model.train(training)
    js_final, js_step = torch.cat(to_final, 1), torch.cat(steps, 1)
    if js_final.shape[1] == 0:
        raise SelectionError(f"{label}: the calibration batches hold no real token (every attention_mask is 0)")
    return LensProfile(js_final.mean(1).tolist(), js_final.std(1, correction=0).tolist(), js_step.mean(1).tolist(),
                       js_final.shape[1])


def _distances(states: list[torch.Tensor], head: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """For states [embeddings, block 0, ..., block L-1] ([tokens, hidden] each): per block and token,
    JS to the last block's distribution and JS to the previous state's; [L, tokens] float64 each."""
    device = next(head.parameters(), states[-1]).device

    def log_probs(h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(head(norm(h.to(device))).double(), dim=-1)

    blocks, tokens = len(states) - 1, states[0].shape[0]
    vocabulary = head(norm(states[-1][:1].to(device))).shape[-1] if tokens else 1
    chunk = max(1, _LENS_ELEMENTS // vocabulary)
    js_final = torch.empty(blocks, tokens, dtype=torch.float64)
    js_step = torch.empty(blocks, tokens, dtype=torch.float64)
    for start in range(0, tokens, chunk):
        rows = slice(start, start + chunk)
        final = log_probs(states[-1][rows])
        previous = log_probs(states[0][rows])
        for block in range(blocks):
            last = block == blocks - 1
            current = final if last else log_probs(states[block + 1][rows])
            js_final[block, rows] = 0.0 if last else js_divergence(current, final).cpu()  # 0 by definition, not rounding
            js_step[block, rows] = js_divergence(previous, current).cpu()
            previous = current
    return js_final, js_step


def _real_tokens(h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """[batch, sequence, hidden] -> [real tokens, hidden]."""
    flat = h.reshape(-1, h.shape[-1])
    return flat if keep is None else flat[keep.to(flat.device)]


def _model_inputs(model: nn.Module, batch, label: str) -> tuple[dict, torch.Tensor | None]:
    """(keyword inputs on the model's device, flat mask of the real tokens or None for all)."""
    if not isinstance(batch, Mapping) or not isinstance(batch.get("input_ids"), torch.Tensor):
        raise SelectionError(f"{label}: a calibration batch must be a dict with an 'input_ids' tensor (and optionally "
                             f"'attention_mask'), got {type(batch).__name__}")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = next((embeddings if embeddings is not None else model).parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
    mask = inputs.get("attention_mask")
    if mask is not None and mask.shape != inputs["input_ids"].shape:
        raise SelectionError(f"{label}: attention_mask of shape {tuple(mask.shape)} does not match input_ids of shape "
                             f"{tuple(inputs['input_ids'].shape)}")
    keep = None if mask is None else mask.reshape(-1).to(torch.bool)
    return inputs, keep
