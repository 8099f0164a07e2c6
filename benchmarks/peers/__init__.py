"""Go peers kubetune is benchmarked beside (benchmarks/operator_peer.py): how to run them out of
cluster on the simulated cluster, and the pure helpers that turn watch timings and apiserver
metrics into the comparison tables."""
