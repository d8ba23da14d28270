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
        html=report(
            "results/report.html",
            caption="captions/report.rst",
            category="1. Report",
        ),
        # the page's parts as files, for `snakemake --report` (u1lib/report/artifacts.py)
        tables=report(
            directory("results/report_files/tables"),
            patterns=["{table}.tsv"],
            caption="captions/tables.rst",
            category="2. Tables",
            labels={"table": "{table}"},
        ),
        figures=report(
            directory("results/report_files/figures"),
            patterns=["{figure}.png"],
            caption="captions/figures.rst",
            category="3. Figures",
            labels={"figure": "{figure}"},
        ),
        samples=report(
            directory("results/report_files/samples"),
            patterns=["{variant}/{prompt}_seed{seed}.png"],
            caption="captions/samples.rst",
            category="4. Samples",
            subcategory="{variant}",
            labels={"variant": "{variant}", "prompt": "{prompt}", "seed": "{seed}"},
        ),
        previews=report(
            directory("results/report_files/previews"),
            patterns=["{variant}/step-{step}/{prompt}_seed{seed}.png"],
            caption="captions/previews.rst",
            category="5. Previews",
            subcategory="{variant}",
            labels={
                "variant": "{variant}",
                "step": "{step}",
                "prompt": "{prompt}",
                "seed": "{seed}",
            },
        ),
    log:
        "results/logs/report.log",
    conda:
        "../envs/u1.yaml"
    params:
        prompt_set=PROMPT_SET,
        # each train job's benchmark (wall time) and log, as the train rule names them; params, not
        # inputs: a failed job leaves neither, and the report then says so instead of not running
        benchmarks=train_job_files("benchmark"),
        job_logs=train_job_files("log"),
        git_commit=GIT_COMMIT,
        code=CODE_HASH["report"],
    script:
        "../workflow_scripts/report.py"
