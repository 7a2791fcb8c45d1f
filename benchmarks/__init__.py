"""Benchmarks of the platform against the machine's own peak, run by experiments/benchmark.py.

An entry-point layer of its own: it measures the core, Ray Train and the Serve app, so it may import
all of them, and nothing in the platform imports it. One job a module:

    suites.py      which phases a CPU run and a GPU run measure, in which order
    settings.py    how much each phase measures (the full, quick and cuda presets)
    phases.py      running a named phase under a time limit, recording its failure
    in_process.py  training, inference, int8 agreement and ONNX parity, without Ray
    ray_phases.py  Ray Train on a local Ray, then serving.py (HTTP to the Serve app) and scoring.py (Ray Data)
    main_job.py    the main job as `make run` runs it
    numerics.py    bf16 against fp32 on the tiny hybrid
    runners.py     naive and platform loops that return images per second
    timing.py      clocks, percentiles, interleaving, time limits
    http_load.py   sequential and concurrent HTTP clients
    machine.py     the machine's description and its matmul peak
    workspace.py   the benchmark's config and random checkpoint
    targets.py     FLOP per image, JSON keys and targets
    summary.py     raw figures to ratios, shares and MFU (pure)
    tables.py      the Markdown tables (pure)
    report.py      the outputs: failed phases, the JSON file, the document's block
"""
