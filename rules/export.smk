rule export:
    input:
        manifest=ancient(rules.snapshot.output.manifest.format(model=MODEL)),
        identity=rules.model_identity.output.identity.format(model=MODEL),
        adapter=export_adapter,
    output:
        report="results/runs/{variant}/export/export.json",
    log:
        "results/logs/export/{variant}.log",
    wildcard_constraints:
        variant=TRAINED_RE,
    conda:
        "../envs/u1.yaml"
    params:
        settings=EXPORT_SETTINGS,
        code=CODE_HASH["export"],
    script:
        "../workflow_scripts/export.py"
