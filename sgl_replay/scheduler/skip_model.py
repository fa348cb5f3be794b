"""Skipping the model's math in a replay (`check --skip-model`).

In the engines sgl-replay starts, every output token comes from the token
oracle (the hash oracle of a recording, or a capture's recorded tokens), so
the numbers the model computes reach nothing the scheduler reads: which
requests run, with how many tokens, the pools and the radix cache are the
scheduler's own. On a CPU the model is nearly all of a replay's time (an
H200 capture's 128k-token vocabulary in bf16: the lm_head alone is a third
of it, torch-native attention most of the rest), so a replay may skip it:
the embedded GPT-2's forward returns placeholder logits of the shape the
sampler expects and writes no KV cache. Everything around it runs as
always: batch building, KV allocation, the forward batch, the sampler, the
result processing. What it gives up: a batch the scheduler built wrongly can
no longer crash a kernel. A batch that asks for logprobs or hidden states
runs the model (their values reach the output).

Registered (AROUND) in every engine sgl-replay starts; inert unless a replay
asks for it for its own duration (`skipped`). Under CUDA graphs a decode step
replays the graph captured at start-up, so only eager steps skip.
"""

from __future__ import annotations

# The embedded model's forward (a replay always runs the embedded GPT-2).
TARGET = "sglang.srt.models.gpt2.GPT2LMHeadModel.forward"

_skip = False
_logits = None  # one placeholder buffer, sliced per batch (its contents are never read)


def around_forward(original, self, input_ids, positions, forward_batch, *args, **kwargs):
    if not _skip:  # every forward of every engine sgl-replay starts passes here
        return original(self, input_ids, positions, forward_batch, *args, **kwargs)
    hidden = forward_batch.capture_hidden_mode
    if forward_batch.return_logprob or (hidden is not None and hidden.need_capture()):
        return original(self, input_ids, positions, forward_batch, *args, **kwargs)
    global _logits
    import torch
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    rows, vocab = forward_batch.batch_size, self.config.vocab_size
    if _logits is None or _logits.shape[0] < rows or _logits.shape[1] != vocab or _logits.device != input_ids.device:
        _logits = torch.zeros(max(rows, 256), vocab, dtype=torch.float32, device=input_ids.device)
    return LogitsProcessorOutput(next_token_logits=_logits[:rows])


class skipped:
    """`with skipped(on):` the model's forward is skipped while inside, when `on`."""

    def __init__(self, on: bool) -> None:
        self.on = bool(on)

    def __enter__(self) -> None:
        global _skip
        _skip = self.on

    def __exit__(self, *exc) -> None:
        global _skip
        _skip = False
