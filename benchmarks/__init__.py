"""microfaas benchmarks: `python -m benchmarks [--quick] [--json PATH]`."""
