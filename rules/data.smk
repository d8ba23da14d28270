rule demo_dataset:
    input:
        captions=DEMO_CAPTIONS,
    output:
        folder=directory("results/data/{dataset}/raw"),
    log:
        "results/logs/demo_dataset/{dataset}.log",
    conda:
        "../envs/u1.yaml"
    params:
        code=CODE_HASH["demo_dataset"],
    script:
        "../workflow_scripts/demo_dataset.py"


rule pack:
    input:
        source=dataset_source,
        model=pack_model,
    output:
        train="results/data/{dataset}/train.parquet",
        val="results/data/{dataset}/val.parquet",
        stats="results/data/{dataset}/stats.json",
    log:
        "results/logs/pack/{dataset}.log",
    benchmark:
        "results/benchmarks/pack/{dataset}.tsv"
    conda:
        "../envs/u1.yaml"
    params:
        settings=PACK_SETTINGS,
        fingerprint=DATASET_FINGERPRINT,
        code=CODE_HASH["pack"],
    script:
        "../workflow_scripts/pack.py"
