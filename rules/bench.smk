rule bench:
    output:
        result="results/bench/{model}.json",
    log:
        "results/logs/bench/{model}.log",
    benchmark:
        "results/benchmarks/bench/{model}.tsv"
    conda:
        "../envs/u1.yaml"
    resources:
        gpu=GPUS_PER_JOB,
    params:
        settings=BENCH_SETTINGS,
        code=CODE_HASH["bench"],
    script:
        "../workflow_scripts/bench.py"
