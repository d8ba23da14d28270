"""Config validation, grid expansion, code hashes and the named functions the rules call.

Rule files hold no logic: every value a rule needs that is not a plain constant comes from here.
"""

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The Snakefile's folder is first on sys.path, so this is the u1lib beside it; the job scripts
# import that same copy (workflow_scripts/job_setup.py), so the code hashed below is the code that runs.
from u1lib.config_errors import config_problems, problems_message
from u1lib.data.sources import IMAGE_SUFFIXES
from u1lib.grid import BASE, GridError, apply_overrides, describe
from u1lib.grid import expand as expand_grid  # Snakemake has its own expand
from u1lib.provenance import git_commit
from u1lib.modeling import ModelingPins
from u1lib.snapshot import COMMIT_SHA, SnapshotError, folder_fingerprint
from u1lib.source_hash import code_hash
from u1lib.token_size import (
    downloaded_token_size,
    resolve_buckets,
    sample_size_problems,
    static_token_size,
)

WORKFLOW_DIR = Path(workflow.basedir)


def from_workdir(path: Path) -> Path:
    """``path`` relative to the working directory. Snakemake compares the input paths and params of
    each job with those it recorded, so no absolute path of the project may appear in them: moving
    or copying the project (``cp -a``) must rerun nothing."""
    return Path(os.path.relpath(path))


SCHEMA_PATH = WORKFLOW_DIR / "config" / "schema" / "config.schema.yaml"
PINS_PATH = from_workdir(WORKFLOW_DIR / "config" / "pins" / "neo_unify.yaml")
DEMO_CAPTIONS = from_workdir(WORKFLOW_DIR / "config" / "demo_captions.yaml")
PROMPT_SETS_DIR = from_workdir(WORKFLOW_DIR / "config" / "prompts")
CONFIG_FILES = [str(path) for path in workflow.config_settings.configfiles] or [
    str(WORKFLOW_DIR / "config" / "config.yaml")
]
SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


# ------------------------------------------------------------------ validation


def raise_problems(what: str, problems: list[str]) -> None:
    if problems:
        raise WorkflowError(problems_message(what, problems))


SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
raise_problems(
    f"invalid config ({', '.join(CONFIG_FILES)})", config_problems(config, SCHEMA)
)
validate(config, str(SCHEMA_PATH))  # fills every default


def canonical(value):
    """Dicts with sorted keys, so a params value does not change when config keys are reordered."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


# ------------------------------------------------------------------ variants

try:
    VARIANTS = expand_grid(config["grid"], config)
except GridError as err:
    raise WorkflowError(f"invalid config ({', '.join(CONFIG_FILES)}): {err}") from None
TRAINED = [variant.name for variant in VARIANTS]
SAMPLED = [BASE, *TRAINED]
VARIANTS_DOC = canonical(describe(VARIANTS))


def resolved_configs() -> dict[str, dict]:
    """Variant name -> the config with its knobs applied (the base model keeps the config as is)."""
    resolved, problems = {BASE: config}, []
    for variant in VARIANTS:
        resolved[variant.name] = apply_overrides(config, variant.knobs)
        problems += [
            f"variant {variant.name}: {p}"
            for p in config_problems(resolved[variant.name], SCHEMA)
        ]
    raise_problems(f"invalid grid ({', '.join(CONFIG_FILES)})", problems)
    return resolved


VARIANT_CONFIG = resolved_configs()


def prompt_key(prompt: dict) -> str:
    """Short readable name of the prompt settings: a new trigger or template means a new cache."""
    digest = hashlib.sha256(json.dumps(canonical(prompt)).encode()).hexdigest()[:8]
    return f"{prompt['template']}-{digest}"


PROMPT_BY_KEY = {
    prompt_key(c["prompt"]): canonical(c["prompt"]) for c in VARIANT_CONFIG.values()
}


# ------------------------------------------------------------------ prompt set


def prompt_set_file(value: str) -> Path:
    """config/prompts/<value>.yaml, or the YAML file at path ``value``; its name names the folder."""
    is_path = value.endswith((".yaml", ".yml"))
    path = Path(value) if is_path else PROMPT_SETS_DIR / f"{value}.yaml"
    if not path.is_file():
        raise WorkflowError(f"sample.prompt_set {value!r}: no file {path}")
    if not re.fullmatch(SAFE_NAME, path.stem):
        raise WorkflowError(
            f"sample.prompt_set {value!r}: {path.stem!r} is not a safe folder name"
        )
    return path


PROMPT_SET_FILE = prompt_set_file(config["sample"]["prompt_set"])
PROMPT_SET = PROMPT_SET_FILE.stem


# ------------------------------------------------------------------ code hashes

# Entry modules of each stage (relative to the u1lib package); the hash also covers every u1lib
# module they import, directly or not, because Snakemake cannot see inside a package
# (u1lib/source_hash.py). The snapshot has no entry here; the model identity below defines it.
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
CODE_HASH = {
    stage: code_hash(entries, exclude=NOT_RESULT_CODE)
    for stage, entries in STAGE_CODE.items()
}


# ------------------------------------------------------------------ model and data sources

SOURCE_HINT = (
    "give demo, a folder of <id>.<jpg|jpeg|png|webp> + <id>.txt, or a .parquet file"
)


def model_identity(model: dict) -> dict:
    """What makes the model what it is, per source; the snapshot and every stage reading the model
    rerun exactly when it changes. tiny: the variant, the seed and the tiny builder's code (tiny.py
    and what it imports). hub: repo and revision, which pin the files (no u1lib code decides them). A
    folder: its path and the names, sizes and mtimes of its files (read there, never copied or written).
    """
    source = model["source"]
    if source == "tiny":
        return {
            "source": source,
            "tiny_variant": model["tiny_variant"],
            "tiny_seed": model["tiny_seed"],
            "builder": code_hash(["tiny.py"]),
        }
    if source == "hub":
        check_revision(model["repo_id"], model["revision"])
        return {
            "source": source,
            "repo_id": model["repo_id"],
            "revision": model["revision"],
        }
    if not Path(source).is_dir():
        raise WorkflowError(
            f"model.source {source!r}: no such folder (relative to the working directory "
            f"{os.getcwd()}); give tiny, hub, or a folder holding a downloaded model"
        )
    if model["modeling_source"] != "none":
        raise WorkflowError(
            f"model.modeling_source {model['modeling_source']!r}: model.source {source!r} is a "
            "folder of yours, which the workflow only reads, so no upstream modeling files are "
            "installed into it; set model.modeling_source: none (the native engine needs none)"
        )
    return {"source": source, "files": folder_fingerprint(source)}


def check_revision(repo_id: str, revision) -> None:
    """A hub model is pinned by a full commit sha; anything else stops here, saying where to find one."""
    if isinstance(revision, str) and COMMIT_SHA.match(revision):
        return
    given = "null" if revision is None else repr(revision)
    raise WorkflowError(
        f"model.revision {given}: {repo_id} is downloaded at one commit, named by its full 40-hex sha "
        "(a branch or tag can move, so the snapshot would not be reproducible). Find the sha on "
        f"https://huggingface.co/{repo_id}/commits/main (the model page's 'Files and versions' tab, "
        "then 'History') and set model.revision to it, e.g. in a file given last: --configfile "
        f"{' '.join(CONFIG_FILES)} my-revision.yaml, holding 'model: {{revision: <sha>}}'"
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
        raise WorkflowError(
            f"{where}: no such file or folder (relative to the working directory "
            f"{os.getcwd()}); {SOURCE_HINT}"
        )
    if path.is_dir():
        if not any(
            entry.is_file()
            and not entry.name.startswith(".")
            and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
            for entry in os.scandir(path)
        ):
            raise WorkflowError(f"{where}: the folder holds no images; {SOURCE_HINT}")
        return
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as err:
        raise WorkflowError(
            f"{where}: not a readable parquet file ({err}); {SOURCE_HINT}"
        ) from None
    if rows == 0:
        raise WorkflowError(f"{where}: the parquet file has no rows; {SOURCE_HINT}")


MODEL_IDENTITY = canonical(model_identity(config["model"]))
check_dataset_source(config["dataset"]["source"])


# ------------------------------------------------------------------ the model's token size

STATIC_TOKEN_SIZE, TOKEN_SIZE_FROM = static_token_size(config["model"])
KNOWN_TOKEN_SIZE = STATIC_TOKEN_SIZE or (
    downloaded_token_size(
        config["model"], Path(f"results/models/{config['model']['name']}/manifest.json")
    )
    if config["model"]["source"] == "hub"
    else None
)


def pack_buckets(buckets: dict) -> dict:
    try:
        return resolve_buckets(
            buckets,
            static=STATIC_TOKEN_SIZE,
            known=KNOWN_TOKEN_SIZE,
            origin=TOKEN_SIZE_FROM,
        )
    except ValueError as err:
        raise WorkflowError(
            f"invalid config ({', '.join(CONFIG_FILES)}):\n  {err}"
        ) from None


def check_sample_sizes() -> None:
    """Every variant's sample size must fit the model (a hub model not downloaded yet: the sampler checks)."""
    if not KNOWN_TOKEN_SIZE:
        return
    # the shared size once, and a variant's own size only where its grid changes it
    samples = {"": config["sample"]}
    for name, resolved in VARIANT_CONFIG.items():
        own = {
            k: resolved["sample"][k]
            for k in ("width", "height")
            if resolved["sample"][k] != config["sample"][k]
        }
        if own:
            samples[f"variant {name}: "] = own
    problems = sample_size_problems(
        samples, token=KNOWN_TOKEN_SIZE, origin=TOKEN_SIZE_FROM
    )
    raise_problems(f"invalid config ({', '.join(CONFIG_FILES)})", problems)


check_sample_sizes()


# ------------------------------------------------------------------ plain values


MODEL = config["model"]["name"]
DATASET = config["dataset"]["name"]
GPUS_PER_JOB = config["resources"]["gpus_per_job"]
GPUS_PER_TRAIN_JOB = config["resources"]["gpus_per_train_job"]
PACK_SETTINGS = canonical(
    {
        "buckets": pack_buckets(config["dataset"]["buckets"]),
        **{
            key: config["dataset"][key] for key in ("val_count", "split_seed", "strict")
        },
    }
)
CACHE_SETTINGS = canonical(config["cache"])
EXPORT_SETTINGS = canonical(config["export"])
# dataset.val_count 0 holds nothing out: training then measures its validation loss on training images
HELD_OUT = config["dataset"]["val_count"] > 0
BENCH_SETTINGS = canonical(config["bench"])


def upstream_checkout() -> dict:
    """Where git puts upstream's code, and the URL and commit pinned in config/pins/neo_unify.yaml."""
    try:
        pins = ModelingPins.from_file(PINS_PATH)
    except SnapshotError as err:
        raise WorkflowError(str(err)) from None
    if pins.repo is None:
        raise WorkflowError(f"{PINS_PATH}: needs 'repo: owner/name' to clone upstream")
    return {
        "dir": f"results/upstream/{pins.repo.split('/')[-1]}",
        "url": f"https://github.com/{pins.repo}.git",
        "commit": pins.commit,
    }


UPSTREAM = upstream_checkout()


GIT_COMMIT = git_commit(WORKFLOW_DIR)  # for the report's provenance


def one_of(names) -> str:
    """A wildcard regex that matches exactly these names."""
    return "|".join(re.escape(name) for name in names)


# the train rule must not match the base model's run folder
TRAINED_RE = one_of(TRAINED)


wildcard_constraints:
    model=one_of([MODEL]),
    dataset=one_of([DATASET]),
    variant=one_of(SAMPLED),
    prompt_key=one_of(PROMPT_BY_KEY),
    prompt_set=one_of([PROMPT_SET]),


# ------------------------------------------------------------------ input and params functions


def all_targets(wildcards) -> list[str]:
    return [
        rules.report.output.html,
        rules.install_modeling.output.report.format(model=MODEL),
    ]


def modeling_source(wildcards) -> str | list:
    """Upstream modeling code to verify: none (no input), the pinned clone, or a checkout."""
    source = config["model"]["modeling_source"]
    if source == "none":
        return []
    return UPSTREAM["dir"] if source == "git" else source


def dataset_source(wildcards) -> str:
    """The demo folder this workflow writes, or the user's folder / parquet file."""
    source = config["dataset"]["source"]
    if source == "demo":
        return rules.demo_dataset.output.folder.format(dataset=wildcards.dataset)
    return source


def pack_model(wildcards) -> str | list:
    """The model's manifest when the pack job must read the token size from the snapshot (token_size
    auto with a hub model: its config.json arrives with the download); ancient(), for the order of
    jobs only, so a new revision of the same repo repacks nothing. No input otherwise.
    """
    if PACK_SETTINGS["buckets"]["token_size"] != "auto":
        return []
    return ancient(rules.snapshot.output.manifest.format(model=MODEL))


def dataset_fingerprint(wildcards) -> str | None:
    """Names, sizes and mtimes of a source folder's files: Snakemake sees a folder's mtime only,
    which does not change when a caption is edited in place. None for demo and parquet sources.
    """
    source = Path(config["dataset"]["source"])
    if config["dataset"]["source"] == "demo" or not source.is_dir():
        return None
    digest = hashlib.sha256()
    for entry in sorted(os.scandir(source), key=lambda entry: entry.name):
        if entry.is_file():
            stat = entry.stat()
            digest.update(
                f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:16]


def cache_prompt(wildcards) -> dict:
    return PROMPT_BY_KEY[wildcards.prompt_key]


def variant_cache(wildcards) -> str:
    """The cache built with this variant's prompt settings."""
    key = prompt_key(VARIANT_CONFIG[wildcards.variant]["prompt"])
    return rules.cache.output.manifest.format(
        model=MODEL, dataset=DATASET, prompt_key=key
    )


def upstream_lora(train: dict) -> dict | None:
    """The engine's form of train.upstream_lora: None when no path is given."""
    return train["upstream_lora"] if train["upstream_lora"]["path"] else None


def train_settings(wildcards) -> dict:
    train = VARIANT_CONFIG[wildcards.variant]["train"]
    return canonical({**train, "upstream_lora": upstream_lora(train)})


def sample_settings(wildcards) -> dict:
    """The sample section (less prompt_set, which names the output folder instead) plus the
    train section's upstream LoRA, which the sampler bakes into the base exactly as training did.
    """
    resolved = VARIANT_CONFIG[wildcards.variant]
    settings = {k: v for k, v in resolved["sample"].items() if k != "prompt_set"}
    return canonical({**settings, "upstream_lora": upstream_lora(resolved["train"])})


def variant_prompt(wildcards) -> dict:
    return canonical(VARIANT_CONFIG[wildcards.variant]["prompt"])


def sample_adapter(wildcards) -> str | list:
    """The trained adapter; none (no input) for the base model."""
    if wildcards.variant == BASE:
        return []
    return rules.train.output.adapter.format(variant=wildcards.variant)


def export_adapter(wildcards) -> str:
    """The adapter to export (config export.adapter): the final one or the best-validation one."""
    output = "adapter" if config["export"]["adapter"] == "final" else "adapter_best"
    return getattr(rules.train.output, output).format(variant=wildcards.variant)


def report_inputs(wildcards) -> dict[str, list[str]]:
    return {
        "runs": expand(rules.train.output, variant=TRAINED),
        "exports": expand(rules.export.output.report, variant=TRAINED),
        "samples": expand(
            rules.sample.output.index, variant=SAMPLED, prompt_set=PROMPT_SET
        ),
    }


def run_dirs(wildcards) -> dict[str, str]:
    return {
        name: str(Path(rules.train.output.adapter.format(variant=name)).parent)
        for name in SAMPLED
    }
