"""Inputs the scheduler pulls, as sgl-replay's own named records, and the HTTP
call that makes sglang's tokenizer manager send the same object again.

Runs in the scheduler process. Dispatch is on the class name, so a trace made
under one sglang version stays meaningful under another: nothing here depends
on the positional msgspec layout of sglang's io_struct.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from msgspec import UNSET

from sgl_replay.trace.format import (GENERATE_EXTRAS, AbortInput, ContinueInput, FlushInput, GenerateInput, Input,
                                     OtherInput, PauseInput, pack_ids, unpack_ids)

# SamplingParams attributes a caller can set through /generate, as
# (attribute, name in the API). normalize() moves `stop` to `stop_strs`.
_SAMPLING_API = (
    ("max_new_tokens", "max_new_tokens"), ("stop_strs", "stop"),
    ("stop_token_ids", "stop_token_ids"), ("stop_regex_strs", "stop_regex"),
    ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
    ("min_p", "min_p"), ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"), ("repetition_penalty", "repetition_penalty"),
    ("min_new_tokens", "min_new_tokens"), ("n", "n"), ("beam_width", "beam_width"),
    ("json_schema", "json_schema"), ("regex", "regex"), ("ebnf", "ebnf"),
    ("structural_tag", "structural_tag"), ("ignore_eos", "ignore_eos"),
    ("skip_special_tokens", "skip_special_tokens"),
    ("spaces_between_special_tokens", "spaces_between_special_tokens"),
    ("no_stop_trim", "no_stop_trim"), ("stream_interval", "stream_interval"),
    ("logit_bias", "logit_bias"), ("sampling_seed", "sampling_seed"),
    ("custom_params", "custom_params"),
)
_sampling_defaults: Optional[dict] = None


def _plain(value: Any) -> Any:
    """msgpack-able copy: sets and tuples become sorted/ordered lists."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _sampling(params) -> dict:
    global _sampling_defaults
    if _sampling_defaults is None:
        from sglang.srt.sampling.sampling_params import SamplingParams

        default = SamplingParams()
        _sampling_defaults = {attr: getattr(default, attr) for attr, _ in _SAMPLING_API}
    out = {}
    for attr, name in _SAMPLING_API:
        value = getattr(params, attr, None)
        if value != _sampling_defaults[attr] and not (value == [] and _sampling_defaults[attr] is None):
            out[name] = _plain(value)
    return out


def _generate(obj) -> GenerateInput:
    item = GenerateInput(rid=obj.rid, input_ids=pack_ids(obj.input_ids) if obj.input_ids is not None else None,
                         sampling=_sampling(obj.sampling_params), stream=bool(obj.stream))
    if obj.priority is not None:
        item.priority = obj.priority
    if obj.return_logprob:
        item.return_logprob = True
        item.logprob_start_len = obj.logprob_start_len
        item.top_logprobs_num = obj.top_logprobs_num
    for name in ("extra_key", "cache_salt", "routed_dp_rank"):
        value = getattr(obj, name, None)
        if value is not None:
            setattr(item, name, value)
    return item


_FROM_PULLED: dict[str, Callable[[Any], list[Input]]] = {
    "TokenizedGenerateReqInput": lambda o: [_generate(o)],
    "BatchTokenizedGenerateReqInput": lambda o: [_generate(x) for x in o.batch],
    "AbortReq": lambda o: [AbortInput(rid=o.rid, all=bool(o.abort_all))],
    "PauseGenerationReqInput": lambda o: [PauseInput(mode=o.mode)],
    "ContinueGenerationReqInput": lambda o: [ContinueInput(torch_empty_cache=bool(o.torch_empty_cache))],
    "FlushCacheReqInput": lambda o: [FlushInput()],
}


def from_pulled(obj: Any) -> list[Input]:
    """The named records for one object the scheduler pulled."""
    convert = _FROM_PULLED.get(type(obj).__name__)
    if convert is None:
        return [OtherInput(name=type(obj).__name__)]
    return convert(obj)


def to_http(item: Input) -> tuple[str, Optional[dict], Callable[[Any], bool]]:
    """(path, json body, predicate that recognizes the pulled object) for the
    HTTP call that makes the tokenizer manager send `item` to the scheduler."""
    match item:
        case GenerateInput(rid=rid, input_ids=bytes() as ids):
            body = {"input_ids": unpack_ids(ids), "sampling_params": item.sampling, "rid": rid,
                    "stream": item.stream}
            for name in GENERATE_EXTRAS:
                value = getattr(item, name)
                if value is not UNSET:
                    body[name] = value
            return "/generate", body, lambda o: getattr(o, "rid", None) == rid
        case AbortInput(rid=rid, all=every):
            return ("/abort_request", {"rid": rid, "abort_all": every},
                    lambda o: type(o).__name__ == "AbortReq" and o.rid == rid and o.abort_all == every)
        case PauseInput():
            return ("/pause_generation", {"mode": item.mode},
                    lambda o: type(o).__name__ == "PauseGenerationReqInput")
        case ContinueInput():
            return ("/continue_generation", {"torch_empty_cache": item.torch_empty_cache},
                    lambda o: type(o).__name__ == "ContinueGenerationReqInput")
        case FlushInput():
            return "/flush_cache", None, lambda o: type(o).__name__ == "FlushCacheReqInput"
    raise ValueError(f"input {str(item)[:80]} cannot be replayed")
