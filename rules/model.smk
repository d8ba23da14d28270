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
        model=SNAPSHOT_SETTINGS,
        code=CODE_HASH["snapshot"],
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
        manifest=rules.snapshot.output.manifest,
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
