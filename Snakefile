"""SenseNova-U1 LoRA pipeline: snapshot -> pack -> cache -> train (one run per variant) -> sample -> report.

Run:
    snakemake --cores all results/report.html
    snakemake --cores all results/report.html --configfile config/u1-8b.yaml  # another config
The target goes before --configfile, which takes every name after it as a config file.
"""

from snakemake.utils import min_version

min_version("9.0")


# the default config only when none is given: --configfile replaces it instead of merging into it
if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/data.smk"
include: "rules/cache.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/export.smk"
include: "rules/report.smk"
include: "rules/bench.smk"


localrules:
    all,
    clone_upstream,
    snapshot,
    install_modeling,
    demo_dataset,
    write_variants,
    report,


rule all:
    default_target: True
    input:
        all_targets,
