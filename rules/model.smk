# Stages that read the model take the manifest as ancient() input, for its path and the order of
# jobs only, and identity.json as a plain input: they rerun when the model's identity changes, not
# because the snapshot rule reran (a rerun finds the verified snapshot and writes the same manifest).
# identity.json is written by its own rule, never downstream of the snapshot: Snakemake does not
# check the params of jobs downstream of a job that must run, so the identity has to reach them
# through a plain input of a job that itself reruns (config/README.md, "What a change reruns").


localrules:
    model_identity,


rule model_identity:
    output:
        identity="results/models/{model}/identity.json",
    log:
        "results/logs/model_identity/{model}.log",
    conda:
        "../envs/u1.yaml"
    params:
        identity=MODEL_IDENTITY,
    script:
        "../workflow_scripts/model_identity.py"


rule snapshot:
    output:
        manifest="results/models/{model}/manifest.json",
    log:
        "results/logs/snapshot/{model}.log",
    benchmark:
        "results/benchmarks/snapshot/{model}.tsv"
    conda:
        "../envs/u1.yaml"
    params:
        identity=MODEL_IDENTITY,
    script:
        "../workflow_scripts/snapshot.py"


rule clone_upstream:
    output:
        checkout=directory(UPSTREAM["dir"]),
    log:
        "results/logs/clone_upstream.log",
    conda:
        "../envs/u1.yaml"
    params:
        url=UPSTREAM["url"],
        commit=UPSTREAM["commit"],
    shell:
        "(git clone --quiet --no-checkout {params.url:q} {output.checkout:q}"
        " && git -C {output.checkout:q} checkout --quiet --detach {params.commit:q}) > {log:q} 2>&1"


rule install_modeling:
    input:
        manifest=ancient(rules.snapshot.output.manifest),
        identity=rules.model_identity.output.identity,
        pins=PINS_PATH,
        source=modeling_source,
    output:
        report="results/models/{model}/modeling.json",
    log:
        "results/logs/install_modeling/{model}.log",
    conda:
        "../envs/u1.yaml"
    params:
        code=CODE_HASH["install_modeling"],
    script:
        "../workflow_scripts/install_modeling.py"
