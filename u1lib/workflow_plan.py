"""What the workflow derives from its config before any job runs: each variant's resolved config,
the prompt caches they share, the model's identity, the checks of the model and data sources, the
pack settings and each stage's code hash.

Plain functions of plain values, so they are tested without Snakemake. A problem is a ValueError
whose text names the key and says what to do (a :class:`ConfigProblems` when it lists several);
rules/common.smk shows it as Snakemake's WorkflowError, naming the config files. Paths are taken as
the config gives them (relative to the working directory).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
from jsonschema import Draft202012Validator, validators

from u1lib.config_errors import config_problems, problems_message
from u1lib.data.sources import IMAGE_SUFFIXES
from u1lib.grid import BASE, Variant, apply_overrides
from u1lib.modeling import ModelingPins
from u1lib.snapshot import COMMIT_SHA, folder_fingerprint, stat_fingerprint
from u1lib.source_hash import code_hash
from u1lib.token_size import ModelTokenSize, resolve_buckets, sample_size_problems


class ConfigProblems(ValueError):
    """Problems of the config as a whole, one line each; the caller says which files they come from."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(problems_message(what, problems))
        self.what, self.problems = what, problems


def check_config(config: dict, schema: dict) -> None:
    """Refuse a config the schema does not describe, with every problem at once; then fill in every
    default the schema gives for a key the config leaves out (of the objects it holds, and of the
    objects those defaults add)."""
    if problems := config_problems(config, schema):
        raise ConfigProblems("invalid config", problems)
    _DefaultFilling(schema).validate(config)


def _fill_defaults(validator, properties, instance, schema):
    """jsonschema's ``properties`` keyword that first sets each missing property's default."""
    if isinstance(instance, dict):
        for name, subschema in properties.items():
            if "default" in subschema and name not in instance:
                instance[name] = copy.deepcopy(subschema["default"])
    yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


_DefaultFilling = validators.extend(Draft202012Validator, {"properties": _fill_defaults})


def from_workdir(path: Path) -> Path:
    """``path`` relative to the working directory. Snakemake compares the input paths and params of
    each job with those it recorded, so no absolute path of the project may appear in them: moving
    or copying the project (``cp -a``) must rerun nothing."""
    return Path(os.path.relpath(path))


def one_of(names) -> str:
    """A wildcard regex that matches exactly these names."""
    return "|".join(re.escape(name) for name in names)


SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
SOURCE_HINT = "give demo, a folder of <id>.<jpg|jpeg|png|webp> + <id>.txt, or a .parquet file"

# Entry modules of each stage (relative to the u1lib package); the hash also covers every u1lib
# module they import, directly or not, because Snakemake cannot see inside a package
# (u1lib/source_hash.py). The snapshot has no entry here; model_identity defines it.
STAGE_CODE = {
    "install_modeling": ["modeling.py"],
    "demo_dataset": ["data/demo.py"],
    "pack": ["data/pack.py"],
    "cache": ["cache.py", "gpu_slots.py"],
    "train": ["train/launch.py", "gpu_slots.py"],
    "sample": ["sample.py", "gpu_slots.py"],
    "export": ["lora/export.py"],
    "report": ["report/__init__.py", "provenance.py"],
    "bench": ["bench/__init__.py", "gpu_slots.py"],
}
# The snapshot check that stages reading the weights run (u1lib/snapshot.py) refuses files that
# changed and never changes a result: an edit to it reruns no stage.
NOT_RESULT_CODE = ["snapshot.py"]


# The tiny model's pretraining code only rebuilds the packaged weights file, whose sha256 tiny.py
# records: the model depends on that file, not on the code that once made it.
TINY_BUILD_TOOLS = ["tiny_pretrain.py"]


def stage_code_hashes() -> dict[str, str]:
    return {stage: code_hash(entries, exclude=NOT_RESULT_CODE) for stage, entries in STAGE_CODE.items()}


def canonical(value):
    """Dicts with sorted keys, so a params value does not change when config keys are reordered."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def resolved_configs(config: dict, variants: list[Variant], schema: dict) -> dict[str, dict]:
    """Variant name -> the config with its knobs applied (the base model keeps the config as is);
    every variant whose knobs break the schema is named in one error."""
    resolved, problems = {BASE: config}, []
    for variant in variants:
        resolved[variant.name] = apply_overrides(config, variant.knobs)
        problems += [f"variant {variant.name}: {p}" for p in config_problems(resolved[variant.name], schema)]
    if problems:
        raise ConfigProblems("invalid grid", problems)
    return resolved


def prompt_key(prompt: dict) -> str:
    """Short readable name of the prompt settings: a new trigger or template means a new cache."""
    digest = hashlib.sha256(json.dumps(canonical(prompt)).encode()).hexdigest()[:8]
    return f"{prompt['template']}-{digest}"


def prompt_set_file(value: str, prompt_sets_dir: Path) -> Path:
    """``prompt_sets_dir``/<value>.yaml, or the YAML file at path ``value``; its name names the folder."""
    is_path = value.endswith((".yaml", ".yml"))
    path = Path(value) if is_path else prompt_sets_dir / f"{value}.yaml"
    if not path.is_file():
        raise ValueError(f"sample.prompt_set {value!r}: no file {path}")
    if not re.fullmatch(SAFE_NAME, path.stem):
        raise ValueError(f"sample.prompt_set {value!r}: {path.stem!r} is not a safe folder name")
    return path


def model_identity(model: dict, config_files: list[str]) -> dict:
    """What makes the model what it is, per source; the snapshot and every stage reading the model
    rerun exactly when it changes. tiny: the variant, the seed, the weights kind and the tiny builder's code (tiny.py
    and what it imports). hub: repo and revision, which pin the files (no u1lib code decides them). A
    folder: its path and the names, sizes and mtimes of its files (read there, never copied or written).
    """
    source = model["source"]
    if source == "tiny":
        return {
            "source": source,
            "tiny_variant": model["tiny_variant"],
            "tiny_seed": model["tiny_seed"],
            "tiny_weights": model["tiny_weights"],
            "builder": code_hash(["tiny.py"], exclude=TINY_BUILD_TOOLS),
        }
    if source == "hub":
        check_revision(model["repo_id"], model["revision"], config_files)
        return {"source": source, "repo_id": model["repo_id"], "revision": model["revision"]}
    if not Path(source).is_dir():
        raise ValueError(
            f"model.source {source!r}: no such folder (relative to the working directory "
            f"{os.getcwd()}); give tiny, hub, or a folder holding a downloaded model"
        )
    if model["modeling_source"] != "none":
        raise ValueError(
            f"model.modeling_source {model['modeling_source']!r}: model.source {source!r} is a "
            "folder of yours, which the workflow only reads, so no upstream modeling files are "
            "installed into it; set model.modeling_source: none (the native engine needs none)"
        )
    return {"source": source, "files": folder_fingerprint(source)}


def check_revision(repo_id: str, revision, config_files: list[str]) -> None:
    """A hub model is pinned by a full commit sha; anything else stops here, saying where to find one."""
    if isinstance(revision, str) and COMMIT_SHA.match(revision):
        return
    given = "null" if revision is None else repr(revision)
    raise ValueError(
        f"model.revision {given}: {repo_id} is downloaded at one commit, named by its full 40-hex sha "
        "(a branch or tag can move, so the snapshot would not be reproducible). Find the sha on "
        f"https://huggingface.co/{repo_id}/commits/main (the model page's 'Files and versions' tab, "
        "then 'History') and set model.revision to it, e.g. in a file given last: --configfile "
        f"{' '.join(config_files)} my-revision.yaml, holding 'model: {{revision: <sha>}}'"
    )


def check_dataset_source(value: str) -> None:
    """A missing or empty dataset.source is an error: otherwise the outputs of an earlier run would
    stand as if they came from it (Snakemake does not look at inputs of jobs it need not run).
    """
    if value == "demo":
        return
    path = Path(value)
    where = f"dataset.source {value!r}"
    if not path.exists():
        raise ValueError(
            f"{where}: no such file or folder (relative to the working directory {os.getcwd()}); {SOURCE_HINT}"
        )
    if path.is_dir():
        if not any(_is_image(entry) for entry in os.scandir(path)):
            raise ValueError(f"{where}: the folder holds no images; {SOURCE_HINT}")
        return
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: not a readable parquet file ({err}); {SOURCE_HINT}") from None
    if rows == 0:
        raise ValueError(f"{where}: the parquet file has no rows; {SOURCE_HINT}")


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES


def dataset_fingerprint(source: str) -> str | None:
    """Names, sizes and mtimes of a source folder's files: Snakemake sees a folder's mtime only,
    which does not change when a caption is edited in place. None for demo and parquet sources.
    """
    if source == "demo" or not Path(source).is_dir():
        return None
    return stat_fingerprint(source, sorted(entry.name for entry in os.scandir(source) if entry.is_file()))


def pack_settings(dataset: dict, token: ModelTokenSize) -> dict:
    """The pack job's params: the buckets with ``token_size: auto`` resolved, and the split keys."""
    try:
        buckets = resolve_buckets(dataset["buckets"], token)
    except ValueError as err:
        raise ConfigProblems("invalid config", [str(err)]) from None
    return canonical({"buckets": buckets, **{key: dataset[key] for key in ("val_count", "split_seed", "strict")}})


def check_sample_sizes(config: dict, variant_configs: dict[str, dict], token: ModelTokenSize) -> None:
    """Every variant's sample size must fit the model (a hub model not downloaded yet: the sampler checks)."""
    if not token.known:
        return
    # the shared size once, and a variant's own size only where its grid changes it
    samples = {"": config["sample"]}
    for name, resolved in variant_configs.items():
        own = {k: resolved["sample"][k] for k in ("width", "height") if resolved["sample"][k] != config["sample"][k]}
        if own:
            samples[f"variant {name}: "] = own
    problems = sample_size_problems(samples, token=token.known, origin=token.origin)
    if problems:
        raise ConfigProblems("invalid config", problems)


def upstream_checkout(pins_path: Path) -> dict:
    """Where git puts upstream's code, and the URL and commit pinned in ``pins_path``."""
    pins = ModelingPins.from_file(pins_path)
    if pins.repo is None:
        raise ValueError(f"{pins_path}: needs 'repo: owner/name' to clone upstream")
    return {
        "dir": f"results/upstream/{pins.repo.split('/')[-1]}",
        "url": f"https://github.com/{pins.repo}.git",
        "commit": pins.commit,
    }
