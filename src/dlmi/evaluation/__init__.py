"""Layer 4: the paper's evaluation protocol. Targets (Algorithm 2), result rows, the benchmark
grid, reports and plots, gradient diagnostics. Imports the layers below; cli/ sits on top."""
