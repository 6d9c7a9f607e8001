"""Language-neutral ANPX conformance vectors and their runner (standard library only).

``python -m conformance`` runs the vectors against anpx_core in-process;
``python -m conformance --impl "CMD"`` runs them against any adapter command.
"""
