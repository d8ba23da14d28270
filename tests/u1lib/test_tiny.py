import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from u1lib.model.config import U1Config
from u1lib.model.keys import parameter_shapes
from u1lib.tiny import build_tiny_snapshot, cli
from u1lib.tiny_config import tiny_config_dict
from u1lib.tiny_tokenizer import SPECIAL_TOKENS
from u1lib.tiny_weights import random_weights

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_u1_tiny_a"
SNAPSHOT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return build_tiny_snapshot(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tokenizer(snapshot) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(snapshot, local_files_only=True)


def test_same_seed_gives_byte_identical_files(snapshot, tmp_path):
    again = build_tiny_snapshot(tmp_path / "again", seed=0)
    assert set(file_hashes(snapshot)) == SNAPSHOT_FILES
    assert file_hashes(again) == file_hashes(snapshot)


def test_other_seed_changes_only_the_weights(snapshot, tmp_path):
    other = file_hashes(build_tiny_snapshot(tmp_path / "seed1", seed=1))
    base = file_hashes(snapshot)
    assert other["model.safetensors"] != base["model.safetensors"]
    assert {k: v for k, v in other.items() if k != "model.safetensors"} == {
        k: v for k, v in base.items() if k != "model.safetensors"
    }


def test_weights_cover_every_key_with_its_shape(snapshot):
    cfg = U1Config.from_file(snapshot)
    with safe_open(snapshot / "model.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt", "u1lib.tiny_seed": "0", "u1lib.tiny_weights": "pretrained"}
        stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    assert stored == parameter_shapes(cfg)
    assert dtypes == {"F32"}


def test_config_parses_with_the_tiny_numbers(snapshot):
    cfg = U1Config.from_file(snapshot)
    learned = json.loads((snapshot / "tokenizer.json").read_text())["model"]["vocab"]
    tokenizer_size = len(learned) + len(SPECIAL_TOKENS)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (64, 192, 2)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 16)
    assert (cfg.vision_hidden_size, cfg.patch_size, cfg.token_size, cfg.fm_head_hidden_size) == (32, 4, 8, 4096)
    assert cfg.vocab_size % 64 == 0 and tokenizer_size <= cfg.vocab_size < tokenizer_size + 64


def test_config_has_upstreams_field_set():
    golden = json.loads((GOLDEN / "config.json").read_text())
    ours = tiny_config_dict(vocab_size=1024)
    assert set(ours) == set(golden)
    assert set(ours["llm_config"]) == set(golden["llm_config"])
    assert set(ours["vision_config"]) == set(golden["vision_config"])
    assert ours["vision_config"]["llm_hidden_size"] == 64 and ours["vision_config"]["downsample_ratio"] == 0.5


def test_weight_recipe_reproduces_the_golden_weights():
    """The golden data documents the same recipe; at its seed the tensors agree bit for bit."""
    golden = load_file(GOLDEN / "model.safetensors")
    ours = random_weights(U1Config.from_file(GOLDEN), seed=1001)
    assert ours.keys() == golden.keys()
    mismatched = [key for key in ours if not ours[key].equal(golden[key])]
    assert mismatched == []


def test_tokenizer_round_trips_the_chat_template(tokenizer):
    prompts = json.loads((GOLDEN / "prompts.json").read_text())
    for query in (prompts["cond_query"], prompts["uncond_query"], "a cat\n\n  two spaces, ünïcode 猫 🚀\n"):
        ids = tokenizer(query, add_special_tokens=True)["input_ids"]
        assert tokenizer.decode(ids) == query
    cond_ids = tokenizer(prompts["cond_query"])["input_ids"]
    assert len(cond_ids) < 300  # the system message was learned, not spelled out byte by byte
    assert cond_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS in front


def test_special_tokens_are_single_ids(tokenizer, snapshot):
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    for token, token_id in ids.items():
        assert tokenizer(f"x{token}y", add_special_tokens=False)["input_ids"][1:-1] == [token_id]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert max(ids.values()) < U1Config.from_file(snapshot).vocab_size


def test_bpe_training_is_deterministic_across_processes():
    script = (
        "import hashlib; from u1lib.tiny_tokenizer import train_tokenizer; "
        "print(hashlib.sha256(train_tokenizer().to_str().encode()).hexdigest())"
    )
    root = str(Path(__file__).resolve().parents[2])
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": root},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1 and len(outputs.pop().strip()) == 64


def test_cli_writes_the_seed(tmp_path):
    assert cli("tiny", ["--out", str(tmp_path / "snap"), "--seed", "7"]) == 0
    with safe_open(tmp_path / "snap" / "model.safetensors", "pt") as handle:
        assert handle.metadata()["u1lib.tiny_seed"] == "7"


GOLDEN_U15 = GOLDEN.parent / "golden_u15_tiny_a"


def test_u15_variant_has_the_pixel_head_and_u15s_field_set(snapshot, tmp_path):
    u15 = build_tiny_snapshot(tmp_path / "u15", seed=0, variant="u15")
    cfg = U1Config.from_file(u15)
    assert cfg.use_pixel_head and cfg.noise_scale_max_value == 16.0 and cfg.token_size == 32
    with safe_open(u15 / "model.safetensors", "pt") as handle:
        stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    assert stored == parameter_shapes(cfg) and "fm_modules.fm_head.conv2.weight" in stored
    golden = json.loads((GOLDEN_U15 / "config.json").read_text())
    ours = tiny_config_dict(vocab_size=1024, variant="u15")
    assert set(ours) == set(golden) and set(ours["llm_config"]) == set(golden["llm_config"])
    assert set(ours["vision_config"]) == set(golden["vision_config"])
    same = {k: v for k, v in file_hashes(u15).items() if k != "config.json" and k != "model.safetensors"}
    assert same == {k: v for k, v in file_hashes(snapshot).items() if k in same}  # one tokenizer for all variants


def test_unknown_variant_is_named(tmp_path):
    with pytest.raises(ValueError, match="variant 'u2' is not one of u1, u15"):
        build_tiny_snapshot(tmp_path / "x", variant="u2")
    assert not (tmp_path / "x").exists()


def test_a_model_folder_given_by_mistake_keeps_its_files_and_an_earlier_build_is_replaced(snapshot, tmp_path):
    from u1lib.io import ForeignFilesError
    from u1lib.io import save_safetensors as save

    real = tmp_path / "real"  # a downloaded single-file model bears the tiny build's names
    real.mkdir()
    (real / "config.json").write_text('{"real": true}')
    save(real / "model.safetensors", {"w": torch.ones(2)}, {"format": "pt"})
    with pytest.raises(ForeignFilesError, match=r"real holds files `u1lib tiny` did not write \(model.safetensors\)"):
        build_tiny_snapshot(real)
    assert (real / "config.json").read_text() == '{"real": true}' and len(list(real.iterdir())) == 2
    (real / "README.md").write_text("mine")
    (real / "model.safetensors").unlink()
    with pytest.raises(ForeignFilesError, match=r"\(README.md\)"):
        build_tiny_snapshot(real)
    again = tmp_path / "again"
    build_tiny_snapshot(again, seed=1)
    build_tiny_snapshot(again, seed=0)  # an earlier tiny build is rebuilt in place
    assert file_hashes(again) == file_hashes(snapshot)


def test_a_random_full_size_snapshot_refuses_a_real_model_folder_and_rebuilds_its_own(snapshot, tmp_path):
    from u1lib.bench.random_snapshot import write_random_snapshot
    from u1lib.io import ForeignFilesError

    real = tmp_path / "real"
    real.mkdir()
    for name in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"):
        (real / name).write_text("real")
    with pytest.raises(ForeignFilesError, match=r"\(model-00001-of-00002.safetensors\)"):
        write_random_snapshot(real, snapshot / "config.json")
    assert all((real / name).read_text() == "real" for name in os.listdir(real))
    out = tmp_path / "random"
    for _ in range(2):  # the second run replaces the first
        write_random_snapshot(out, snapshot / "config.json", shard_gib=1e-4)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and sorted(p.name for p in out.glob("model-*")) == shards
        assert set(index["weight_map"]) == set(parameter_shapes(U1Config.from_file(snapshot)))
