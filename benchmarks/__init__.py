"""Speed claims, measured: `python -m kdutils bench NAME` prints ratios measured in one run.

Each module's `run()` times the fast path (cached frozen outputs, a sweep on
Ray) against the plain one on the same data and seed, and checks that both
give the same numbers. They live beside the `kdutils` package, as `tests/` do:
they are about the library, not part of it, and are not installed with it.
"""

#: name -> (module, function, what it measures)
BENCHMARKS = {
    "synthworld": ("benchmarks.synthworld", "run", "SynthWorld images/s at 32x32 on one core"),
    "tlkd": ("benchmarks.tlkd", "run", "study 4: cached-feature head training vs the plain loop"),
    "matching": ("benchmarks.matching", "run", "study 2: cached teacher logits vs the live teacher"),
    "selfdistill": ("benchmarks.selfdistill", "run",
                    "study 1: head training on cached frozen features vs live"),
    "kassl": ("benchmarks.kassl", "run", "study 3: cached teacher view bank vs the live teacher"),
    "ssl_libs": ("benchmarks.ssl_libs", "run",
                 "study 3's SSL pieces: kornia and lightly against the hand-written ones (time, equality)"),
    "sweep": ("benchmarks.sweep", "run", "a 4-job Ray sweep on 2 workers vs the same jobs one after another"),
}
