"""What the benchmark scripts in scripts/ share: ready-to-run train programs, timers, FLOP counts and peaks.

- `setups`: the benchmark model's configs, `Setup` (step functions, data, initialised seeds) and the one
  adapter to the trainer's private program builders;
- `timing`: medians of wall times, measured side by side; cold compiles;
- `flops`: model FLOPs of a train step (the MFU convention) and the measured matmul peak;
- `peaks`: the device's published peak, or for a CPU one derived from /proc/cpuinfo; the machine's description;
- `compile_time`, `probe_cost`: compile time against depth, probe overhead against the bare step;
- `trace_kernels`: kernel time by HLO op kind from a profiler trace (no JAX import);
- `torch_peer`: the PyTorch reference (scripts/torch_*.py) driven from another process, interleaved with JAX;
- `end_to_end`: whole sweeps and their PyTorch counterpart timed as subprocesses;
- `flags`: command-line values checked with one-line errors.

Importing this package imports nothing heavy; each module imports what it needs.
"""
