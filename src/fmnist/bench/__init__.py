"""`fmnist bench`: figures measured on this machine, kept per machine kind.

Modules, in the order data flows:

    targets   the product's targets (data)
    measure   this machine's record and peaks, FLOPs, engine throughput, ONNX figures
    loadtest  `fmnist serve` under concurrent clients, and the burst scenario
    runs      the benches: child `fmnist train` processes, inference, serving; one path
              (update_section) stores figures under this machine's kind
    summary   per-model rows from per-seed runs, and every verdict on a target, as data (pure)
    store     bench.json's layout and machine kinds (pure)
    render    the benchmarks page and the presets table: formatting only (pure)

The studies of benchmarked runs (their ensemble, their test-time views), the paired
tests and the GPU script are lab tooling in the repository's scripts/, not here: the
installed command measures a user's machine.

Each training run is a separate `fmnist train` process, as a user would run it, so no
run inherits another's warm caches or memory, and each process's peak memory is its
own (``os.wait4`` returns the rusage of exactly that child).

Figures are kept per machine kind (the CPU's instruction set as far as training speed
goes, its cores, or the GPU): a bench on one kind replaces rows of that kind only, so an
AVX2 laptop's numbers never overwrite those of an AVX-512 BF16 server. bench.json holds
them all; the benchmarks page (one section per kind) is regenerated from it every time,
never edited by hand. The bench writes only those two files, never the repository's
README (whose presets table `make readme` fills from bench.json).
"""
