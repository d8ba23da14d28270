"""What a sampling run is given, checked before any model loads: the ``sample:`` settings and the
prompt set (whose ids name the PNG files)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from u1lib.model.sampling import CFG_NORMS, SAMPLER_T_EPS
from u1lib.names import check_name
from u1lib.typed_config import from_section

THINK_BUDGET = 1024  # upstream's think-mode default


@dataclass(frozen=True)
class SampleSettings:
    seeds: tuple[int, ...] = (0,)
    steps: int = 50
    cfg_scale: float = 4.0
    timestep_shift: float = 3.0
    cfg_norm: str = "none"
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    t_eps: float = SAMPLER_T_EPS
    width: int = 1024
    height: int = 1024
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    # {"path", "skip"}: an upstream LoRA baked into the base for every variant; path null: none
    upstream_lora: dict = field(default_factory=lambda: {"path": None, "skip": []})
    compile: bool = False  # torch.compile each layer (CUDA; pays off over many images)
    fp8: bool = False  # frozen dense generation-layer matmuls in FP8 e4m3 (model/fp8.py; CUDA cc >= 8.9)
    think: dict = field(default_factory=dict)  # {"enabled", "max_tokens"}: a thought decoded before each prompt

    def __post_init__(self):
        problems = []
        if self.cfg_norm not in CFG_NORMS:
            problems.append(f"sample.cfg_norm {self.cfg_norm!r} is not one of {', '.join(CFG_NORMS)}")
        if self.steps < 1 or self.batch_size < 1:
            problems.append("sample.steps and sample.batch_size must be positive")
        if not self.seeds:
            problems.append("sample.seeds must list at least one seed")
        think = self.think
        if set(think) - {"enabled", "max_tokens"}:
            problems.append(f"sample.think: unknown key(s) {sorted(set(think) - {'enabled', 'max_tokens'})}")
        if not isinstance(think.get("enabled", False), bool):
            problems.append(f"sample.think.enabled: {think['enabled']!r} is not true or false")
        budget = think.get("max_tokens", THINK_BUDGET)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            problems.append(f"sample.think.max_tokens: {budget!r} is not a non-negative integer")
        if problems:
            raise ValueError("invalid sampling settings:\n  " + "\n  ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict) -> "SampleSettings":
        return from_section(cls, raw, "sample")

    @property
    def think_budget(self) -> int | None:
        """Tokens a thought may take, or None when think mode is off."""
        return self.think.get("max_tokens", THINK_BUDGET) if self.think.get("enabled") else None


def load_prompts(path: Path) -> list[dict]:
    """A prompt set: YAML list of {id, prompt} or a mapping id -> prompt (optionally under `prompts:`).

    Ids name the PNG files, so each must pass :func:`check_name` and no two may differ only in
    letter case (one file on macOS and Windows). An empty set is refused: it would sample nothing.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if isinstance(raw, dict) and "prompts" in raw:
        raw = raw["prompts"]
    if isinstance(raw, dict):
        raw = [{"id": k, "prompt": v} for k, v in raw.items()]
    if not raw:
        raise ValueError(f"{path}: no prompts; list at least one (format: config/prompts/demo.yaml)")
    if not isinstance(raw, list) or not all(isinstance(p, dict) and {"id", "prompt"} <= p.keys() for p in raw):
        raise ValueError(f"{path}: a prompt set is a list of {{id, prompt}} entries or a mapping id -> prompt")
    prompts, seen = [], {}
    for entry in raw:
        prompt_id = check_name("" if entry["id"] is None else str(entry["id"]), "prompt id", str(path))
        if entry["prompt"] is None:
            raise ValueError(f"{path}: prompt id {prompt_id!r} has no prompt text")
        same_file = unicodedata.normalize("NFC", prompt_id).casefold()
        if same_file in seen:
            raise ValueError(
                f"{path}: prompt id {prompt_id!r} repeats {seen[same_file]!r} (ids name PNG files and "
                "must differ by more than letter case): rename one"
            )
        seen[same_file] = prompt_id
        prompts.append({"id": prompt_id, "prompt": str(entry["prompt"])})
    return prompts
