"""OpenELM configuration: the frozen `ElmConfig`, the released layer-wise scaling, and the presets.

The scaling is CoreNet's `GPTConfig.__post_init__` (identical in HF `OpenELMConfig`), reproduced
exactly so that per-layer head counts and FFN widths equal the released checkpoints'.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from elmbench.errors import CheckpointError, ConfigError, UnknownNameError

HF_VOCAB_SIZE = 32000
CORENET_VOCAB_SIZE = 32128


def make_divisible(v: float, divisor: int) -> int:
    """MobileNet's helper as in CoreNet's `math_utils`: round to a multiple, never below 90%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def layerwise_scaling(
    num_layers: int,
    model_dim: int,
    head_dim: int,
    num_gqa_groups: int,
    qkv_multipliers: tuple[float, float],
    ffn_multipliers: tuple[float, float],
    ffn_dim_divisor: int = 256,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per-layer (query heads, KV heads, FFN widths) from the released formula (reference §1.2)."""
    alphas = [round(float(v), 2) for v in np.linspace(*qkv_multipliers, num=num_layers)]
    betas = [round(float(v), 2) for v in np.linspace(*ffn_multipliers, num=num_layers)]
    q_dims = [int(make_divisible(model_dim * a, divisor=head_dim * num_gqa_groups)) for a in alphas]
    n_q = tuple(q // head_dim for q in q_dims)
    n_kv = tuple(q // num_gqa_groups for q in n_q)
    ffn = tuple(_ffn_dim(b, model_dim, ffn_dim_divisor) for b in betas)
    return n_q, n_kv, ffn


def _ffn_dim(multiplier: float, model_dim: int, divisor: int) -> int:
    return int(make_divisible(multiplier * model_dim, divisor=divisor))


@dataclass(frozen=True)
class ElmConfig:
    """One OpenELM architecture, with its per-layer lists expanded."""

    name: str
    num_layers: int
    model_dim: int
    head_dim: int
    num_query_heads: tuple[int, ...]
    num_kv_heads: tuple[int, ...]
    ffn_dims: tuple[int, ...]
    num_gqa_groups: int = 4
    qkv_multipliers: tuple[float, float] = (0.5, 1.0)
    ffn_multipliers: tuple[float, ...] = (0.5, 4.0)
    vocab_size: int = HF_VOCAB_SIZE
    max_context_length: int = 2048
    rope_freq_constant: int = 10000
    rope_max_length: int = 4096
    norm_eps: float = 1e-6
    ffn_dim_divisor: int = 256
    bos_token_id: int = 1
    eos_token_id: int = 2
    instruct: bool = False
    official_name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for key in ("num_query_heads", "num_kv_heads", "ffn_dims"):
            if len(getattr(self, key)) != self.num_layers:
                raise ConfigError(
                    f"config '{self.name}': {key} has {len(getattr(self, key))} entries, "
                    f"expected one per layer ({self.num_layers})"
                )
        for i, (q, kv) in enumerate(zip(self.num_query_heads, self.num_kv_heads, strict=True)):
            if kv <= 0 or q % kv:
                raise ConfigError(
                    f"config '{self.name}': layer {i} has {q} query heads and {kv} KV heads; "
                    "query heads must be a positive multiple of KV heads"
                )

    @classmethod
    def from_scaling(
        cls,
        name: str,
        num_layers: int,
        model_dim: int,
        head_dim: int,
        **kwargs: Any,
    ) -> ElmConfig:
        """Build a config whose per-layer lists come from the layer-wise scaling formula."""
        groups = kwargs.get("num_gqa_groups", 4)
        qkv = kwargs.get("qkv_multipliers", (0.5, 1.0))
        ffn = kwargs.get("ffn_multipliers", (0.5, 4.0))
        divisor = kwargs.get("ffn_dim_divisor", 256)
        n_q, n_kv, ffn_dims = layerwise_scaling(
            num_layers, model_dim, head_dim, groups, qkv, ffn, divisor
        )
        # Keep the per-layer betas, as the released config.json files do.
        kwargs["ffn_multipliers"] = tuple(
            round(float(v), 2) for v in np.linspace(float(ffn[0]), float(ffn[-1]), num=num_layers)
        )
        return cls(
            name=name,
            num_layers=num_layers,
            model_dim=model_dim,
            head_dim=head_dim,
            num_query_heads=n_q,
            num_kv_heads=n_kv,
            ffn_dims=ffn_dims,
            **kwargs,
        )

    # Derived figures -------------------------------------------------------------------------

    @property
    def num_norms(self) -> int:
        """RMSNorm modules run per forward pass: attn, q, k and ffn norms per layer, plus final."""
        return 4 * self.num_layers + 1

    def layer_params(self, i: int) -> int:
        """Parameters of transformer layer i."""
        d, h = self.model_dim, self.head_dim
        n_q, n_kv, f = self.num_query_heads[i], self.num_kv_heads[i], self.ffn_dims[i]
        qkv = (n_q + 2 * n_kv) * h * d
        out = d * n_q * h
        ffn = 2 * f * d + f * d
        norms = 2 * d + 2 * h
        return qkv + out + ffn + norms

    @property
    def num_params(self) -> int:
        """All parameters, with the output head tied to the token embedding."""
        body = sum(self.layer_params(i) for i in range(self.num_layers))
        return self.vocab_size * self.model_dim + body + self.model_dim

    def kv_cache_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Bytes of K and V cached per token over all layers (bf16 by default)."""
        return sum(2 * kv * self.head_dim * bytes_per_element for kv in self.num_kv_heads)

    def with_vocab(self, vocab_size: int) -> ElmConfig:
        """The same architecture with another vocabulary size (CoreNet 32128 vs HF 32000)."""
        return replace(self, vocab_size=vocab_size)

    # HF config.json --------------------------------------------------------------------------

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict that transformers (remote code) and mlx-lm read."""
        ffn_mults = [round(f / self.model_dim, 4) for f in self.ffn_dims]
        if len(self.ffn_multipliers) == self.num_layers:
            ffn_mults = list(self.ffn_multipliers)
        return {
            "architectures": ["OpenELMForCausalLM"],
            "model_type": "openelm",
            "elmbench_name": self.name,
            "num_transformer_layers": self.num_layers,
            "model_dim": self.model_dim,
            "head_dim": self.head_dim,
            "num_gqa_groups": self.num_gqa_groups,
            "num_query_heads": list(self.num_query_heads),
            "num_kv_heads": list(self.num_kv_heads),
            "qkv_multipliers": list(self.qkv_multipliers),
            "ffn_multipliers": ffn_mults,
            "ffn_dim_divisor": self.ffn_dim_divisor,
            "ffn_with_glu": True,
            "activation_fn_name": "swish",
            "normalization_layer_name": "rms_norm",
            "normalize_qk_projections": True,
            "share_input_output_layers": True,
            "rms_norm_eps": self.norm_eps,
            "rope_freq_constant": self.rope_freq_constant,
            "rope_max_length": self.rope_max_length,
            "max_context_length": self.max_context_length,
            "vocab_size": self.vocab_size,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any], name: str | None = None) -> ElmConfig:
        """Read an HF OpenELM `config.json` (a path or a parsed dict), using its per-layer lists."""
        path = "<dict>"
        if not isinstance(source, dict):
            path = str(source)
            try:
                data = json.loads(Path(source).read_text())
            except FileNotFoundError:
                raise CheckpointError(path, "config.json not found") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(path, f"not valid JSON ({exc})") from None
            except OSError as exc:  # a folder in its place, no permission, ...
                raise CheckpointError(path, f"cannot read config.json ({exc.strerror})") from None
        else:
            data = source
        if not isinstance(data, dict):
            raise CheckpointError(
                path, "not a config", expected="a JSON object", found=type(data).__name__
            )
        return _config_from_hf_dict(data, path, name)

    def summary(self) -> dict[str, Any]:
        """A flat dict for records and tables."""
        out = asdict(self)
        out["num_params"] = self.num_params
        out["num_norms"] = self.num_norms
        return out


def _config_from_hf_dict(data: dict[str, Any], path: str, name: str | None) -> ElmConfig:
    def need(key: str) -> Any:
        if key not in data:
            raise CheckpointError(path, "missing config entry", key=key)
        return data[key]

    if data.get("model_type", "openelm") != "openelm":
        raise CheckpointError(
            path,
            "not an OpenELM config",
            key="model_type",
            expected="openelm",
            found=data.get("model_type"),
        )
    layers, d, h = need("num_transformer_layers"), need("model_dim"), need("head_dim")
    _check_types(data, path)
    groups = data.get("num_gqa_groups", 4)
    divisor = data.get("ffn_dim_divisor", 256)
    qkv = data.get("qkv_multipliers", (0.5, 1.0))
    qkv = (qkv, qkv) if _is_number(qkv) else tuple(qkv)  # one number: the same in every layer
    ffn_mult = data.get("ffn_multipliers", (0.5, 4.0))
    if isinstance(ffn_mult, (int, float)):
        ffn_mult = [ffn_mult] * layers
    ffn_mult = tuple(ffn_mult)
    n_q_s, n_kv_s, _ = layerwise_scaling(
        layers, d, h, groups, qkv if len(qkv) == 2 else (0.5, 1.0), (0.5, 4.0), divisor
    )
    n_q = tuple(data.get("num_query_heads") or n_q_s)
    n_kv = tuple(data.get("num_kv_heads") or n_kv_s)
    if len(ffn_mult) == layers:
        ffn = tuple(_ffn_dim(m, d, divisor) for m in ffn_mult)
    elif len(ffn_mult) == 2:
        ffn = layerwise_scaling(layers, d, h, groups, (0.5, 1.0), ffn_mult, divisor)[2]
    else:
        raise CheckpointError(
            path,
            "ffn_multipliers must have 2 entries or one per layer",
            key="ffn_multipliers",
            expected=f"2 or {layers}",
            found=len(ffn_mult),
        )
    for key, value in (("num_query_heads", n_q), ("num_kv_heads", n_kv)):
        if len(value) != layers:
            raise CheckpointError(
                path,
                "per-layer list has the wrong length",
                key=key,
                expected=layers,
                found=len(value),
            )
    if not data.get("share_input_output_layers", True):
        raise CheckpointError(
            path,
            "untied output heads are not supported",
            key="share_input_output_layers",
            expected=True,
            found=False,
        )
    try:
        return ElmConfig(
            name=name or data.get("elmbench_name") or Path(path).parent.name or "checkpoint",
            num_layers=layers,
            model_dim=d,
            head_dim=h,
            num_query_heads=n_q,
            num_kv_heads=n_kv,
            ffn_dims=ffn,
            num_gqa_groups=groups,
            qkv_multipliers=qkv,
            ffn_multipliers=ffn_mult,
            vocab_size=data.get("vocab_size", HF_VOCAB_SIZE),
            max_context_length=data.get("max_context_length", 2048),
            rope_freq_constant=data.get("rope_freq_constant", 10000),
            rope_max_length=data.get("rope_max_length", 4096),
            norm_eps=data.get("rms_norm_eps", data.get("norm_eps", 1e-6)),
            ffn_dim_divisor=divisor,
            bos_token_id=_or(data.get("bos_token_id"), 1),
            eos_token_id=_or(data.get("eos_token_id"), 2),
        )
    except ConfigError as exc:
        raise CheckpointError(path, str(exc)) from None


_POSITIVE_INTS = (
    "num_transformer_layers",
    "model_dim",
    "head_dim",
    "num_gqa_groups",
    "ffn_dim_divisor",
    "vocab_size",
    "max_context_length",
    "rope_max_length",
)
_POSITIVE_NUMBERS = ("rope_freq_constant", "rms_norm_eps", "norm_eps")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _or(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _check_types(data: dict[str, Any], path: str) -> None:
    """Reject a wrongly typed entry by key and value before any arithmetic trips over it."""

    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            found = json.dumps(data[key])
            found = found if len(found) <= 60 else found[:57] + "..."
            raise CheckpointError(path, "wrong type", key=key, expected=expected, found=found)

    for key in _POSITIVE_INTS:
        if key in data:
            check(key, _is_int(data[key]) and data[key] > 0, "a positive integer")
    for key in _POSITIVE_NUMBERS:
        if key in data:
            check(key, _is_number(data[key]) and data[key] > 0, "a positive number")
    for key in ("bos_token_id", "eos_token_id"):
        if data.get(key) is not None:
            check(key, _is_int(data[key]), "an integer or null")
    for key in ("num_query_heads", "num_kv_heads"):
        if data.get(key) is not None:
            value = data[key]
            ok = isinstance(value, (list, tuple)) and all(_is_int(v) and v > 0 for v in value)
            check(key, ok, "a list of positive integers")
    for key in ("qkv_multipliers", "ffn_multipliers"):
        if key in data:
            value = data[key]
            ok = _is_number(value) or (
                isinstance(value, (list, tuple))
                and bool(value)
                and all(_is_number(v) for v in value)
            )
            check(key, ok, "a number or a list of numbers")


# Presets -------------------------------------------------------------------------------------

_SIZES: dict[str, tuple[str, int, int, int]] = {
    # key: (official name, layers, model_dim, head_dim), from CoreNet `gpt_configs`.
    "270m": ("OpenELM-270M", 16, 1280, 64),
    "450m": ("OpenELM-450M", 20, 1536, 64),
    "1_1b": ("OpenELM-1_1B", 28, 2048, 64),
    "3b": ("OpenELM-3B", 36, 3072, 128),
}


def _tiny() -> ElmConfig:
    # Same architecture at toy size: per-layer heads and FFN widths differ, GQA 2:1, qk-norm, tied.
    return ElmConfig(
        name="tiny",
        num_layers=3,
        model_dim=64,
        head_dim=16,
        num_query_heads=(2, 4, 4),
        num_kv_heads=(1, 2, 1),
        ffn_dims=(64, 128, 192),
        num_gqa_groups=2,
        ffn_multipliers=(1.0, 2.0, 3.0),
        ffn_dim_divisor=16,
        vocab_size=512,
        max_context_length=256,
        rope_max_length=512,
        official_name="tiny (test model)",
    )


def _build_presets() -> dict[str, ElmConfig]:
    presets: dict[str, ElmConfig] = {}
    for key, (official, layers, d, h) in _SIZES.items():
        for suffix, instruct in (("", False), ("-instruct", True)):
            presets[key + suffix] = ElmConfig.from_scaling(
                key + suffix,
                layers,
                d,
                h,
                instruct=instruct,
                official_name=official + ("-Instruct" if instruct else ""),
            )
    presets["tiny"] = _tiny()
    return presets


PRESETS: dict[str, ElmConfig] = _build_presets()


def _aliases() -> dict[str, str]:
    aliases = {}
    for key, cfg in PRESETS.items():
        aliases[key.lower()] = key
        aliases[cfg.official_name.lower()] = key
        if key != "tiny":
            aliases[f"apple/{cfg.official_name}".lower()] = key
    return aliases


_ALIASES = _aliases()


def preset_names() -> list[str]:
    """The preset keys users type, in size order."""
    return list(PRESETS)


def get_config(name: str, also: Iterable[str] = ()) -> ElmConfig:
    """The preset for a user-typed name (`1_1b`, `OpenELM-1_1B`, `apple/OpenELM-1_1B-Instruct`).

    `also`: other names the caller accepts (comparison models), listed in the error beside the
    presets."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise UnknownNameError("model", name, [*PRESETS, *also], _ALIASES)
    return PRESETS[key]


# Names, not shape: twins differ only here. The multipliers are left out because the per-layer
# lists they produce (query heads, KV heads, FFN widths) are compared instead, and a config.json
# may hold them as two-entry ranges or expanded per layer.
_NOT_ARCHITECTURE = ("name", "official_name", "instruct", "qkv_multipliers", "ffn_multipliers")


def architecture(cfg: ElmConfig) -> dict[str, Any]:
    """The fields that shape the model's computation: every field but its names."""
    fields = asdict(cfg)
    for key in _NOT_ARCHITECTURE:
        fields.pop(key)
    return fields


def architecture_difference(cfg: ElmConfig, other: ElmConfig) -> str:
    """The first architectural field where `cfg` differs from `other` ('' when none does)."""
    mine, theirs = architecture(cfg), architecture(other)
    for key, value in mine.items():
        if value != theirs[key]:
            return f"{key} {_short(value)}, not {_short(theirs[key])}"
    return ""


def _short(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def matching_presets(cfg: ElmConfig) -> list[ElmConfig]:
    """The presets with the architecture of `cfg`: none, one, or a base model and its twin."""
    wanted = architecture(cfg)
    return [preset for preset in PRESETS.values() if architecture(preset) == wanted]
