"""Config validation, grid expansion, code hashes and the named functions the rules call.

Rule files hold no logic: every value a rule needs that is not a plain constant comes from here.
"""

from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

# The Snakefile's folder is first on sys.path, so this is the u1lib beside it; the job scripts
# import that same copy (workflow_scripts/job_setup.py), so the code hashed below is the code that runs.
from u1lib import workflow_plan as plan
from u1lib.config_errors import problems_message
from u1lib.grid import BASE, GridError, describe
from u1lib.grid import expand as expand_grid  # Snakemake has its own expand
from u1lib.provenance import git_commit
from u1lib.token_size import model_token_size
from u1lib.workflow_plan import from_workdir, one_of

WORKFLOW_DIR = Path(workflow.basedir)
SCHEMA_PATH = WORKFLOW_DIR / "config" / "schema" / "config.schema.yaml"
PINS_PATH = from_workdir(WORKFLOW_DIR / "config" / "pins" / "neo_unify.yaml")
DEMO_CAPTIONS = from_workdir(WORKFLOW_DIR / "config" / "demo_captions.yaml")
PROMPT_SETS_DIR = from_workdir(WORKFLOW_DIR / "config" / "prompts")
CONFIG_FILES = [str(path) for path in workflow.config_settings.configfiles] or [
    str(WORKFLOW_DIR / "config" / "config.yaml")
]


# ------------------------------------------------------------------ validation


def planned(function, *args, **kwargs):
    """``function``'s value; its ValueError stops the workflow as a WorkflowError naming the config files."""
    try:
        return function(*args, **kwargs)
    except plan.ConfigProblems as err:
        raise WorkflowError(
            problems_message(f"{err.what} ({', '.join(CONFIG_FILES)})", err.problems)
        ) from None
    except GridError as err:
        raise WorkflowError(
            f"invalid config ({', '.join(CONFIG_FILES)}): {err}"
        ) from None
    except ValueError as err:
        raise WorkflowError(str(err)) from None


SCHEMA = yaml.load(
    SCHEMA_PATH.read_text(encoding="utf-8"),
    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),
)
planned(plan.check_config, config, SCHEMA)  # and fills every default
canonical = plan.canonical


# ------------------------------------------------------------------ variants, prompts, model, data

VARIANTS = planned(expand_grid, config["grid"], config)
TRAINED = [variant.name for variant in VARIANTS]
SAMPLED = [BASE, *TRAINED]
VARIANTS_DOC = canonical(describe(VARIANTS))
VARIANT_CONFIG = planned(plan.resolved_configs, config, VARIANTS, SCHEMA)
PROMPT_BY_KEY = {
    plan.prompt_key(c["prompt"]): canonical(c["prompt"])
    for c in VARIANT_CONFIG.values()
}
PROMPT_SET_FILE = planned(
    plan.prompt_set_file, config["sample"]["prompt_set"], PROMPT_SETS_DIR
)
PROMPT_SET = PROMPT_SET_FILE.stem
CODE_HASH = plan.stage_code_hashes()
MODEL_IDENTITY = canonical(planned(plan.model_identity, config["model"], CONFIG_FILES))
planned(plan.check_dataset_source, config["dataset"]["source"])

# the model's token size: packing snaps images to it, sample sizes must be multiples of it
TOKEN_SIZE = model_token_size(
    config["model"], Path(f"results/models/{config['model']['name']}/manifest.json")
)
PACK_SETTINGS = planned(plan.pack_settings, config["dataset"], TOKEN_SIZE)
planned(plan.check_sample_sizes, config, VARIANT_CONFIG, TOKEN_SIZE)


# ------------------------------------------------------------------ plain values


MODEL = config["model"]["name"]
DATASET = config["dataset"]["name"]
GPUS_PER_JOB = config["resources"]["gpus_per_job"]
GPUS_PER_TRAIN_JOB = config["resources"]["gpus_per_train_job"]
DATASET_FINGERPRINT = plan.dataset_fingerprint(config["dataset"]["source"])
CACHE_SETTINGS = canonical(config["cache"])
# torch.compile's caches, shared by every train and sample job: a later job loads what an earlier
# one compiled (u1lib/device.py use_compile_cache)
COMPILE_CACHE = "results/compile_cache"
EXPORT_SETTINGS = canonical(config["export"])
# dataset.val_count 0 holds nothing out: training then measures its validation loss on training images
HELD_OUT = config["dataset"]["val_count"] > 0
BENCH_SETTINGS = canonical(config["bench"])


UPSTREAM = planned(plan.upstream_checkout, PINS_PATH)


GIT_COMMIT = git_commit(WORKFLOW_DIR)  # for the report's provenance


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


def cache_prompt(wildcards) -> dict:
    return PROMPT_BY_KEY[wildcards.prompt_key]


def variant_cache(wildcards) -> str:
    """The cache built with this variant's prompt settings."""
    key = plan.prompt_key(VARIANT_CONFIG[wildcards.variant]["prompt"])
    return rules.cache.output.manifest.format(
        model=MODEL, dataset=DATASET, prompt_key=key
    )


def train_settings(wildcards) -> dict:
    return canonical(VARIANT_CONFIG[wildcards.variant]["train"])


def sample_settings(wildcards) -> dict:
    """The sample section (less prompt_set, which names the output folder instead) plus the
    train section's upstream LoRA, which the sampler bakes into the base exactly as training did.
    """
    resolved = VARIANT_CONFIG[wildcards.variant]
    settings = {k: v for k, v in resolved["sample"].items() if k != "prompt_set"}
    return canonical({**settings, "upstream_lora": resolved["train"]["upstream_lora"]})


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


def train_job_files(kind: str) -> dict[str, str]:
    """Each trained variant's train-job ``benchmark`` or ``log`` file, as the train rule names it."""
    pattern = rules.train.benchmark if kind == "benchmark" else rules.train.log[0]
    return {variant: str(pattern).format(variant=variant) for variant in TRAINED}


def report_inputs(wildcards) -> dict[str, list[str]]:
    return {
        "runs": expand(rules.train.output, variant=TRAINED),
        "exports": expand(rules.export.output.report, variant=TRAINED),
        "samples": expand(
            rules.sample.output.index, variant=SAMPLED, prompt_set=PROMPT_SET
        ),
    }
