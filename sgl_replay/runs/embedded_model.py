"""The model sgl-replay writes itself: a tiny GPT-2 config (weights are
dummy, seeded), a word-level tokenizer written beside it without a download,
both in a private cache directory of this user's; and the config a replay
uses for a trace's recorded model."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from sgl_replay.runs.errors import EngineError

# A GPT-2-architecture model small enough for a laptop CPU. GPT-2 has no rotary
# embedding (rotary layers reach for vllm on CPU in sglang 0.5.23). With
# load_format=dummy the weights are seeded, and with token_oracle sampling the
# output tokens are a hash of (rid, position): the same on every device.
EMBEDDED_MODEL_NAME = "tiny-gpt2"
EMBEDDED_MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_positions": 4096,
    "n_ctx": 4096,
    "vocab_size": 1024,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


def write_model_dir(config: dict[str, Any]) -> str:
    """A directory holding only config.json; its name is the content's hash, so
    the same config always lands in the same place. It lives in a cache of
    this user's own (0700, ownership checked): the engine loads what is there."""
    blob = json.dumps(config, sort_keys=True, indent=1)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    path = _private_dir(cache_root()) / "models" / f"{EMBEDDED_MODEL_NAME}-{digest}"
    if not (path / "config.json").exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # an exclusive new file, then a rename: no name another process could plant
        fd, tmp = tempfile.mkstemp(dir=path, prefix="config.json.")
        with os.fdopen(fd, "w") as f:
            f.write(blob)
        os.replace(tmp, path / "config.json")
    for name, text in _tokenizer_files(config).items():
        if not (path / name).exists():
            fd, tmp = tempfile.mkstemp(dir=path, prefix=f"{name}.")
            with os.fdopen(fd, "w") as f:
                f.write(text())
            os.replace(tmp, path / name)
    return str(path)


def _tokenizer_files(config: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer for the embedded model (tokenizer.json and
    tokenizer_config.json beside config.json), written without a download,
    so that a plain server of it takes text and sglang's bench_serving can
    drive it: one word per token id ("<unk>" 0, "<s>" 1, "</s>" 2, then "t3"
    ...), split on whitespace, decoded joined by spaces. Every id decodes to
    text that encodes back to it; nothing is added around a prompt."""
    vocab_size = int(config.get("vocab_size", EMBEDDED_MODEL_CONFIG["vocab_size"]))
    specials = ["<unk>", "<s>", "</s>"]

    def tokenizer_json() -> str:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        vocab = {word: i for i, word in enumerate(specials)}
        vocab.update({f"t{i}": i for i in range(len(specials), vocab_size)})
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        tokenizer.add_special_tokens(specials)
        return tokenizer.to_str()

    def tokenizer_config() -> str:
        return json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                           "eos_token": "</s>", "unk_token": "<unk>",
                           "model_max_length": int(config.get("n_positions", 4096)),
                           "clean_up_tokenization_spaces": False}, indent=1)

    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": tokenizer_config}


def embedded_config_for(model) -> dict[str, Any]:
    """config.json of the embedded model for replaying a trace whose header
    has `model` (sgl_replay.trace.format.Model): the recorded config when the
    trace ran on the embedded model; for a capture of another model, the
    embedded architecture with the recorded vocabulary size (every recorded
    token id valid), context length (every position valid) and EOS ids (the
    recorded EOS finishes happen again)."""
    if model.config is not None:
        return dict(model.config)
    config = dict(EMBEDDED_MODEL_CONFIG)
    if model.vocab_size:
        config["vocab_size"] = int(model.vocab_size)
    if model.context_length:
        config["n_positions"] = config["n_ctx"] = int(model.context_length)
    eos = getattr(model, "eos_token_ids", None)
    if eos:
        config["eos_token_id"] = int(eos[0]) if len(eos) == 1 else [int(i) for i in eos]
    return config


def cache_root() -> Path:
    return Path(os.environ.get("SGLREPLAY_CACHE") or Path(tempfile.gettempdir()) / f"sgl-replay-{os.getuid()}")


def _private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; refused unless it is a directory of
    this user's that nobody else can write to."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise EngineError(f"{path} is not a private directory of this user (owner, mode or a link); "
                          f"remove it or set SGLREPLAY_CACHE")
    return path
