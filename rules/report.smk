rule write_variants:
    output:
        variants="results/variants.json",
    log:
        "results/logs/write_variants.log",
    conda:
        "../envs/u1.yaml"
    params:
        variants=VARIANTS_DOC,
    script:
        "../workflow_scripts/write_variants.py"


rule report:
    input:
        unpack(report_inputs),
        variants=rules.write_variants.output.variants,
        manifest=ancient(rules.snapshot.output.manifest.format(model=MODEL)),
        identity=rules.model_identity.output.identity.format(model=MODEL),
    output:
        html="results/report.html",
    log:
        "results/logs/report.log",
    conda:
        "../envs/u1.yaml"
    params:
        run_dirs=run_dirs,
        prompt_set=PROMPT_SET,
        # the train jobs' wall times and logs, linked from the report; missing ones become notes
        benchmarks="results/benchmarks/train",
        logs="results/logs/train",
        git_commit=GIT_COMMIT,
        code=CODE_HASH["report"],
    script:
        "../workflow_scripts/report.py"
